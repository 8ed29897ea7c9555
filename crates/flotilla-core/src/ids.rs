//! Validated identifiers: the deployment name (a stable environment slug such as `prod`), the
//! per-deploy id, and the id of one running instance of a version.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::{Timestamp, UtcDateTime};

/// The longest deployment name accepted.
///
/// Every external name is derived from it; the tightest limit downstream is the 32-character
/// target group name, which [`crate::names::target_group_name`] meets by shortening long names.
pub const MAX_NAME_LEN: usize = 32;

/// Why a deployment name, deployment id or instance id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The value was empty.
    #[error("{what} is empty")]
    Empty {
        /// Which kind of identifier.
        what: &'static str,
    },
    /// The value was longer than allowed.
    #[error("{what} `{value}` is {len} characters long; the limit is {max}")]
    TooLong {
        /// Which kind of identifier.
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character outside the allowed set.
    #[error("{what} `{value}` contains {ch:?} at position {position}; {allowed}")]
    BadChar {
        /// Which kind of identifier.
        what: &'static str,
        /// The rejected value.
        value: String,
        /// The offending character.
        ch: char,
        /// Its zero-based character position.
        position: usize,
        /// What is allowed, in words.
        allowed: &'static str,
    },
    /// A structural rule was broken.
    #[error("{what} `{value}` {problem}")]
    Malformed {
        /// Which kind of identifier.
        what: &'static str,
        /// The rejected value.
        value: String,
        /// What is wrong, in words.
        problem: &'static str,
    },
}

/// Checks the rules every identifier shares: not empty, at most `max` characters, and every
/// character accepted by `allowed` (described in words by `allowed_words`).
fn check_shape(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
    allowed_words: &'static str,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    let len = value.chars().count();
    if len > max {
        return Err(IdError::TooLong {
            what,
            value: value.to_owned(),
            len,
            max,
        });
    }
    match value.chars().enumerate().find(|(_, ch)| !allowed(*ch)) {
        Some((position, ch)) => Err(IdError::BadChar {
            what,
            value: value.to_owned(),
            ch,
            position,
            allowed: allowed_words,
        }),
        None => Ok(()),
    }
}

/// The stable name of an environment, e.g. `prod` or `shop-staging`.
///
/// Lowercase letters, digits and single hyphens; starts with a letter, ends with a letter or digit,
/// at most [`MAX_NAME_LEN`] characters. These rules make it valid inside every AWS name flotilla
/// derives from it (ECS services, target groups, SSM paths, CloudFormation stacks, ECR repositories).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeploymentName(String);

impl DeploymentName {
    /// Validates `value` as a deployment name.
    pub fn new(value: &str) -> Result<Self, IdError> {
        const WHAT: &str = "deployment name";
        check_shape(
            WHAT,
            value,
            MAX_NAME_LEN,
            |ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-',
            "use lowercase letters, digits and hyphens",
        )?;
        let malformed = |problem| {
            Err(IdError::Malformed {
                what: WHAT,
                value: value.to_owned(),
                problem,
            })
        };
        if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
            return malformed("must start with a lowercase letter");
        }
        if value.ends_with('-') {
            return malformed("must not end with a hyphen");
        }
        if value.contains("--") {
            return malformed("must not contain two hyphens in a row");
        }
        Ok(DeploymentName(value.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The length of every deployment id: `YYYYMMDD-HHMMSS-xxxx`.
pub const ID_LEN: usize = 20;

/// The number of random characters at the end of a deployment id.
pub const ID_SUFFIX_LEN: usize = 4;

const SUFFIX_ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// The id of one deploy of one deployment name, e.g. `20261125-190633-k3x9`.
///
/// The UTC creation time to the second followed by a short random suffix, so ids sort by creation
/// time as strings and two deploys in the same second still differ. Lowercase, so it matches the
/// ALB's case-insensitive header comparison exactly.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeploymentId(String);

impl DeploymentId {
    /// Makes the id of a deploy started at `now`, with its suffix taken from `entropy`.
    ///
    /// The caller supplies the randomness so that the core stays deterministic.
    pub fn generate(now: Timestamp, entropy: u64) -> Self {
        let t = now.utc();
        let mut suffix = [0u8; ID_SUFFIX_LEN];
        let mut rest = entropy;
        for slot in suffix.iter_mut().rev() {
            *slot = SUFFIX_ALPHABET[(rest % 36) as usize];
            rest /= 36;
        }
        let suffix = std::str::from_utf8(&suffix).expect("the alphabet is ASCII");
        DeploymentId(format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}-{suffix}",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        ))
    }

    /// Validates `value` as a deployment id.
    pub fn new(value: &str) -> Result<Self, IdError> {
        const WHAT: &str = "deployment id";
        const SHAPE: &str =
            "must look like 20261125-190633-k3x9 (UTC date-time and a 4-character suffix)";
        check_shape(
            WHAT,
            value,
            ID_LEN,
            |ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-',
            "ids use lowercase letters, digits and hyphens",
        )?;
        let malformed = |problem| {
            Err(IdError::Malformed {
                what: WHAT,
                value: value.to_owned(),
                problem,
            })
        };
        let bytes = value.as_bytes();
        let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
        if value.len() != ID_LEN
            || bytes[8] != b'-'
            || bytes[15] != b'-'
            || !digits(0..8)
            || !digits(9..15)
        {
            return malformed(SHAPE);
        }
        let num = |range: std::ops::Range<usize>| -> u32 {
            value[range].parse().expect("checked to be digits")
        };
        let when = UtcDateTime {
            year: num(0..4),
            month: num(4..6) as u8,
            day: num(6..8) as u8,
            hour: num(9..11) as u8,
            minute: num(11..13) as u8,
            second: num(13..15) as u8,
        };
        if Timestamp::from_utc(when).is_none() {
            return malformed("names a date or time that does not exist");
        }
        Ok(DeploymentId(value.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The creation time encoded in the id, to the second.
    pub fn created_at(&self) -> Timestamp {
        let num = |range: std::ops::Range<usize>| -> u32 {
            self.0[range].parse().expect("validated on construction")
        };
        Timestamp::from_utc(UtcDateTime {
            year: num(0..4),
            month: num(4..6) as u8,
            day: num(6..8) as u8,
            hour: num(9..11) as u8,
            minute: num(11..13) as u8,
            second: num(13..15) as u8,
        })
        .expect("validated on construction")
    }
}

/// The longest instance id accepted (an ECS task id is 32 hex characters).
pub const MAX_INSTANCE_LEN: usize = 64;

/// One running instance of a version: an ECS task id on AWS, a process slot such as `i1` on the host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    /// Validates `value` as an instance id: 1 to 64 ASCII letters, digits, `.`, `_` or `-`.
    pub fn new(value: &str) -> Result<Self, IdError> {
        const WHAT: &str = "instance id";
        check_shape(
            WHAT,
            value,
            MAX_INSTANCE_LEN,
            |ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'),
            "use ASCII letters, digits, '.', '_' and '-'",
        )?;
        Ok(InstanceId(value.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_id_impls {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $ty {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::new(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                $ty::new(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id_impls!(DeploymentName);
string_id_impls!(DeploymentId);
string_id_impls!(InstanceId);

// Lets maps keyed by `DeploymentId` be searched with the `&str` a request carries, without
// allocating. `Ord`, `Eq` and `Hash` are derived from the inner `String`, so they agree with `str`.
impl std::borrow::Borrow<str> for DeploymentId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_names() {
        let check = |value: &str, want: Result<(), &str>| {
            let got = DeploymentName::new(value)
                .map(|_| ())
                .map_err(|e| e.to_string());
            match (got, want) {
                (Ok(()), Ok(())) => {}
                (Err(got), Err(want)) => {
                    assert!(got.contains(want), "{value:?}: {got:?} lacks {want:?}")
                }
                (got, want) => panic!("{value:?}: got {got:?}, want {want:?}"),
            }
        };
        check("prod", Ok(()));
        check("a", Ok(()));
        check("shop-staging-2", Ok(()));
        check(&"a".repeat(32), Ok(()));
        check(&"a".repeat(33), Err("33 characters long; the limit is 32"));
        check("", Err("is empty"));
        check("Prod", Err("contains 'P' at position 0"));
        check("my_app", Err("contains '_' at position 2"));
        check("2prod", Err("must start with a lowercase letter"));
        check("-prod", Err("must start with a lowercase letter"));
        check("prod-", Err("must not end with a hyphen"));
        check("pr--od", Err("two hyphens"));
    }

    #[test]
    fn generated_ids_encode_time_and_suffix() {
        let now = Timestamp::from_secs(1_764_097_593);
        let id = DeploymentId::generate(now, 0);
        assert_eq!(id.as_str(), "20251125-190633-0000");
        assert_eq!(
            DeploymentId::generate(now, 35).as_str(),
            "20251125-190633-000z"
        );
        assert_eq!(
            DeploymentId::generate(now, 36u64.pow(4) - 1).as_str(),
            "20251125-190633-zzzz"
        );
        assert_eq!(id.created_at(), now);
        assert_eq!(DeploymentId::new(id.as_str()), Ok(id));
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let earlier = DeploymentId::generate(Timestamp::from_secs(1_764_097_593), u64::MAX);
        let later = DeploymentId::generate(Timestamp::from_secs(1_764_097_594), 0);
        assert!(earlier < later);
        assert!(earlier.as_str() < later.as_str());
    }

    #[test]
    fn rejects_malformed_ids() {
        let bad = |value: &str, want: &str| {
            let err = DeploymentId::new(value).expect_err(value).to_string();
            assert!(err.contains(want), "{value:?}: {err}");
        };
        bad("", "is empty");
        bad(
            "20251125-190633-k3x9a",
            "21 characters long; the limit is 20",
        );
        bad("20251125-190633-K3X9", "contains 'K'");
        bad("20251125_190633-k3x9", "contains '_'");
        bad("2025112-5190633-k3x9", "must look like");
        bad("20251125-190633k3x9", "must look like");
        bad("20250230-190633-k3x9", "does not exist");
        bad("20251125-246033-k3x9", "does not exist");
        assert!(DeploymentId::new("20251125-190633-k3x9").is_ok());
    }

    #[test]
    fn instance_ids() {
        assert!(InstanceId::new("i1").is_ok());
        assert!(InstanceId::new("0123456789abcdef0123456789abcdef").is_ok());
        assert!(InstanceId::new(&"a".repeat(64)).is_ok());
        assert!(InstanceId::new(&"a".repeat(65)).is_err());
        assert!(InstanceId::new("task/1").is_err());
        assert!(InstanceId::new("").is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: DeploymentName = serde_json::from_str("\"prod\"").expect("valid");
        assert_eq!(ok.as_str(), "prod");
        assert!(serde_json::from_str::<DeploymentName>("\"Prod\"").is_err());
        assert!(serde_json::from_str::<DeploymentId>("\"nope\"").is_err());
    }
}
