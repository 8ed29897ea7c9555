//! How a request pinned to a retired version is answered: the *stale signals*.
//!
//! A retired version's affinity (header or query parameter) never reaches an instance. What the
//! page sees instead is configurable, so that a framework with its own reload logic can be given
//! the signal it already understands:
//! - `status`: the HTTP status of the stale answer, `410` (the default) or `409`; its body is
//!   always the `version_retired` JSON the browser client recognises;
//! - `header`: an optional extra `name: value` header on stale HTTP answers (for example Pulse's
//!   `x-pulse-stale-affinity: 1`);
//! - `socket_reroute`: an optional query parameter `name=value` that marks WebSocket upgrades
//!   which should go to the current version instead of being refused, so that the framework
//!   notices the new version and reloads itself.
//!
//! A stale WebSocket upgrade without that marker is accepted and closed at once with
//! [`STALE_CLOSE_CODE`] and [`STALE_CLOSE_REASON`], because a browser hides the status of a
//! refused upgrade from scripts (they see only close code 1006).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The WebSocket close code of a stale upgrade: in the range 4000–4999 that RFC 6455 leaves to
/// applications, and reading as "410".
pub const STALE_CLOSE_CODE: u16 = 4410;

/// The close reason sent with [`STALE_CLOSE_CODE`] (the `error` of the stale JSON body).
pub const STALE_CLOSE_REASON: &str = "version_retired";

/// The stale status unless configured otherwise.
pub const DEFAULT_STALE_STATUS: u16 = 410;

/// The statuses a stale answer may have.
pub const STALE_STATUSES: [u16; 2] = [409, 410];

/// What is wrong with a stale-signal setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaleError {
    /// The status is neither 409 nor 410.
    #[error("the stale status must be 409 or 410, not {0}")]
    Status(u16),
    /// The header is not `name: value` with a valid name and a visible-ASCII value.
    #[error(
        "the stale header must be `name: value`, a header name of letters, digits and \
         !#$%&'*+-.^_`|~ then a value of visible ASCII characters and spaces, not {0:?}"
    )]
    Header(String),
    /// The query pair is not `name=value` of URL-safe characters.
    #[error(
        "the stale socket query must be `name=value` (or `name` alone), of letters, digits and \
         -._~, not {0:?}"
    )]
    Query(String),
}

/// An extra header on stale HTTP answers, `name: value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleHeader {
    /// The header name, in lower case.
    pub name: String,
    /// The header value, trimmed.
    pub value: String,
}

impl StaleHeader {
    /// Parses `name: value`.
    pub fn parse(text: &str) -> Result<Self, StaleError> {
        let bad = || StaleError::Header(text.to_owned());
        let (name, value) = text.split_once(':').ok_or_else(bad)?;
        let (name, value) = (name.trim(), value.trim());
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(bad());
        }
        if value.is_empty() || !value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
            return Err(bad());
        }
        Ok(StaleHeader {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for StaleHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.value)
    }
}

/// A query parameter, `name=value`, that a socket URL must carry (the value compared raw, without
/// percent-decoding; `name` alone means an empty value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryPair {
    /// The parameter name.
    pub name: String,
    /// The value it must have.
    pub value: String,
}

impl QueryPair {
    /// Parses `name=value` (or `name`).
    pub fn parse(text: &str) -> Result<Self, StaleError> {
        let (name, value) = text.split_once('=').unwrap_or((text, ""));
        let safe = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
        if name.is_empty() || name.len() > 128 || value.len() > 128 {
            return Err(StaleError::Query(text.to_owned()));
        }
        if !name.chars().all(safe) || !value.chars().all(safe) {
            return Err(StaleError::Query(text.to_owned()));
        }
        Ok(QueryPair {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }

    /// Whether the raw query string `query` carries this pair (its first `name` parameter has
    /// this value).
    pub fn matches(&self, query: &str) -> bool {
        query
            .split('&')
            .find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == self.name).then_some(value)
            })
            .is_some_and(|value| value == self.value)
    }
}

impl fmt::Display for QueryPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}={}", self.name, self.value)
        }
    }
}

/// How requests pinned to a retired version are answered (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleSignals {
    /// The HTTP status of stale answers: 409 or 410.
    pub status: u16,
    /// An extra header on stale HTTP answers.
    pub header: Option<StaleHeader>,
    /// The query parameter marking WebSocket upgrades to send to the current version instead.
    pub socket_reroute: Option<QueryPair>,
}

impl Default for StaleSignals {
    fn default() -> Self {
        StaleSignals {
            status: DEFAULT_STALE_STATUS,
            header: None,
            socket_reroute: None,
        }
    }
}

impl StaleSignals {
    /// Checks `status` (409 or 410).
    pub fn check_status(status: u16) -> Result<u16, StaleError> {
        if STALE_STATUSES.contains(&status) {
            Ok(status)
        } else {
            Err(StaleError::Status(status))
        }
    }

    /// The `message` of the stale JSON body for this status.
    pub fn message(&self) -> &'static str {
        retired_message(self.status)
    }
}

/// The `message` of the stale JSON body answered with `status`.
pub fn retired_message(status: u16) -> &'static str {
    match status {
        409 => "409 Conflict: this version is no longer available",
        _ => crate::routing::RETIRED_MESSAGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_table() {
        fn check(text: &str, want: Option<(&str, &str)>) {
            let got = StaleHeader::parse(text).ok();
            let got = got.as_ref().map(|h| (h.name.as_str(), h.value.as_str()));
            assert_eq!(got, want, "{text:?}");
        }
        check(
            "x-pulse-stale-affinity: 1",
            Some(("x-pulse-stale-affinity", "1")),
        );
        check("X-Stale:yes please", Some(("x-stale", "yes please")));
        check("x-stale", None);
        check(": 1", None);
        check("x stale: 1", None);
        check("x-stale: ", None);
        check("x-stale: a\u{7f}", None);
        check("x-stale: é", None);
    }

    #[test]
    fn query_table() {
        fn check(text: &str, want: Option<(&str, &str)>) {
            let got = QueryPair::parse(text).ok();
            let got = got.as_ref().map(|q| (q.name.as_str(), q.value.as_str()));
            assert_eq!(got, want, "{text:?}");
        }
        check(
            "pulse_reload_on_stale_affinity=1",
            Some(("pulse_reload_on_stale_affinity", "1")),
        );
        check("reload", Some(("reload", "")));
        check("=1", None);
        check("a=b=c", None);
        check("a b=1", None);
        check("a=%20", None);
    }

    #[test]
    fn query_pair_matches_the_first_parameter_of_its_name() {
        let pair = QueryPair::parse("reload=1").expect("valid");
        assert!(pair.matches("a=2&reload=1"));
        assert!(pair.matches("reload=1&reload=0"));
        assert!(!pair.matches("reload=0&reload=1"));
        assert!(!pair.matches("reload=10"));
        assert!(!pair.matches("xreload=1"));
        assert!(!pair.matches(""));
        let bare = QueryPair::parse("reload").expect("valid");
        assert!(bare.matches("reload"));
        assert!(bare.matches("reload="));
        assert!(!bare.matches("reload=1"));
        assert_eq!(pair.to_string(), "reload=1");
        assert_eq!(bare.to_string(), "reload");
    }

    #[test]
    fn statuses_and_messages() {
        assert_eq!(StaleSignals::check_status(409), Ok(409));
        assert_eq!(StaleSignals::check_status(410), Ok(410));
        assert_eq!(
            StaleSignals::check_status(404),
            Err(StaleError::Status(404))
        );
        assert!(retired_message(409).starts_with("409 "));
        assert!(retired_message(410).starts_with("410 "));
        assert_eq!(StaleSignals::default().status, 410);
    }
}
