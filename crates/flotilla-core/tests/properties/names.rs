//! Identifier and naming properties, each against an independent reference written here: ids
//! generated for any time from 1970 to 2200, deployment-name validation, and target group names.

use std::collections::BTreeMap;

use flotilla_core::ids::MAX_NAME_LEN;
use flotilla_core::names::{TARGET_GROUP_NAME_MAX, target_group_name};
use flotilla_core::{DeploymentId, DeploymentName, Timestamp};
use proptest::prelude::*;

/// 2200-01-01T00:00:00Z in milliseconds.
const YEAR_2200_MS: u64 = 7_258_118_400_000;

/// The documented rules for a deployment name, written independently of `DeploymentName::new`:
/// 1 to 32 characters; lowercase ASCII letters, digits and hyphens; starts with a letter; does not
/// end with a hyphen; no two hyphens in a row.
fn is_valid_name(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    !chars.is_empty()
        && chars.len() <= 32
        && chars
            .iter()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
        && chars[0].is_ascii_lowercase()
        && chars[chars.len() - 1] != '-'
        && chars.windows(2).all(|w| w != ['-', '-'])
}

/// What AWS accepts as a target group name: 1 to 32 ASCII letters, digits and hyphens, not
/// beginning or ending with a hyphen.
fn is_valid_target_group_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= TARGET_GROUP_NAME_MAX
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn days_in_month(year: u32, month: u32) -> u32 {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Whether `YYYYMMDD-HHMMSS` names a real UTC second from 1970 on.
fn is_real_second(s: &str) -> bool {
    let num = |a: usize, b: usize| s[a..b].parse::<u32>().unwrap_or(u32::MAX);
    let (year, month, day) = (num(0, 4), num(4, 6), num(6, 8));
    let (hour, minute, second) = (num(9, 11), num(11, 13), num(13, 15));
    year >= 1970
        && (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month)
        && hour < 24
        && minute < 60
        && second < 60
}

/// Strings a name validator must judge: mostly near-valid, some anything at all.
fn name_candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,34}",
        "[a-z0-9-]{0,34}",
        "[a-zA-Z0-9_. -]{0,34}",
        "\\PC{0,34}",
        ("[a-z]{1,31}", "[A-Z_é/ ]").prop_map(|(a, b)| format!("{a}{b}")),
        // Around the length limit, where an off-by-one would hide.
        (30usize..=34).prop_flat_map(|len| {
            ("[a-z]", prop::collection::vec("[a-z0-9]|-[a-z0-9]", len)).prop_map(
                move |(first, rest)| {
                    let s = first + &rest.concat();
                    s.chars().take(len).collect()
                },
            )
        }),
    ]
}

/// Valid deployment names of every length from 1 to 32.
fn valid_name() -> impl Strategy<Value = DeploymentName> {
    "[a-z](-?[a-z0-9]){0,31}"
        .prop_filter_map("over the length limit", |s| DeploymentName::new(&s).ok())
}

fn id() -> impl Strategy<Value = DeploymentId> {
    (0u64..YEAR_2200_MS, any::<u64>())
        .prop_map(|(ms, e)| DeploymentId::generate(Timestamp::from_millis(ms), e))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Generated ids are valid, carry their creation second, and sort by time.
    #[test]
    fn generated_ids_validate_round_trip_and_sort(
        a in 0u64..YEAR_2200_MS,
        b in 0u64..YEAR_2200_MS,
        ea in any::<u64>(),
        eb in any::<u64>(),
    ) {
        let (ta, tb) = (Timestamp::from_millis(a), Timestamp::from_millis(b));
        let (ia, ib) = (DeploymentId::generate(ta, ea), DeploymentId::generate(tb, eb));
        for (id, t) in [(&ia, ta), (&ib, tb)] {
            prop_assert_eq!(&DeploymentId::new(id.as_str()), &Ok(id.clone()));
            prop_assert_eq!(id.created_at(), Timestamp::from_secs(t.as_secs()));
            prop_assert_eq!(id.as_str().len(), 20);
        }
        if ta.as_secs() < tb.as_secs() {
            prop_assert!(ia < ib && ia.as_str() < ib.as_str(), "{} !< {}", ia, ib);
        }
        // The suffix spells the entropy in base 36, so two deploys in the same second differ
        // whenever their entropy differs modulo 36^4.
        let suffix = &ia.as_str()[16..];
        prop_assert_eq!(u64::from_str_radix(suffix, 36).ok(), Some(ea % 36u64.pow(4)));
        if ta.as_secs() == tb.as_secs() && ea % 36u64.pow(4) != eb % 36u64.pow(4) {
            prop_assert_ne!(ia, ib, "same second, different suffix");
        }
    }

    /// An id-shaped string is accepted exactly when it names a real second from 1970 on, and
    /// then it reads back as that second.
    #[test]
    fn id_validation_matches_the_calendar(
        s in "(19[6-9][0-9]|2[0-9]{3})(0[0-9]|1[0-3])([0-2][0-9]|3[0-2])-([01][0-9]|2[0-5])[0-6][0-9][0-6][0-9]-[a-z0-9]{4}",
    ) {
        let got = DeploymentId::new(&s);
        prop_assert_eq!(got.is_ok(), is_real_second(&s[..15]), "{} {:?}", s, got);
        if let Ok(id) = got {
            let again = DeploymentId::generate(id.created_at(), 0);
            prop_assert_eq!(&again.as_str()[..15], &s[..15]);
        }
    }

    /// Any string at all: accepted exactly when it matches the documented rules.
    #[test]
    fn deployment_names_follow_the_documented_rules(s in name_candidate()) {
        let got = DeploymentName::new(&s);
        prop_assert_eq!(got.is_ok(), is_valid_name(&s), "{:?} {:?}", s, got);
        if let Ok(name) = got {
            prop_assert_eq!(name.as_str(), s.as_str());
            prop_assert!(name.as_str().len() <= MAX_NAME_LEN);
        }
    }

    /// Target group names are valid for AWS and stable for every valid name and id.
    #[test]
    fn target_group_names_are_valid(name in valid_name(), id in id()) {
        let tg = target_group_name(&name, &id);
        prop_assert!(is_valid_target_group_name(&tg), "{:?} from {} {}", tg, name, id);
        prop_assert!(tg.ends_with(&format!("-{id}")), "{}", tg);
        prop_assert_eq!(&tg, &target_group_name(&name, &id));
    }

    /// Distinct (name, id) pairs in a sample get distinct target groups. The sample mixes
    /// random names with names that share long prefixes and with names spelled like the name
    /// part of another target group, where collisions would hide.
    #[test]
    fn target_group_names_are_injective(
        names in prop::collection::vec(valid_name(), 1..12),
        ids in prop::collection::vec(id(), 1..4),
        shared in "[a-z][a-z0-9]{5,10}",
        tails in prop::collection::vec("[a-z0-9]{1,8}", 0..6),
    ) {
        let mut names = names;
        names.extend(tails.iter().filter_map(|t| DeploymentName::new(&format!("{shared}-{t}")).ok()));
        let extra: Vec<DeploymentName> = names
            .iter()
            .filter_map(|n| {
                let tg = target_group_name(n, &ids[0]);
                let head = &tg[..tg.len() - ids[0].as_str().len() - 1];
                DeploymentName::new(head).ok()
            })
            .collect();
        names.extend(extra);
        let mut seen: BTreeMap<String, (DeploymentName, DeploymentId)> = BTreeMap::new();
        for name in &names {
            for id in &ids {
                let tg = target_group_name(name, id);
                if let Some((n, i)) = seen.get(&tg) {
                    prop_assert!(
                        n == name && i == id,
                        "{} and {} with {} both get target group {}", n, name, id, tg
                    );
                }
                seen.insert(tg, (name.clone(), id.clone()));
            }
        }
    }
}
