//! Invariants over every deployment name and id: the template builds, refers only to what it
//! defines, fits the API, and every derived name meets its AWS limit; the IAM wildcards match
//! exactly this deployment's resources.

use flotilla_baseline::names::{self, iam_wildcard_matches};
use flotilla_baseline::{BaselineOptions, NatMode, TlsMode, build, cfn};
use flotilla_core::names as core_names;
use flotilla_core::{DeploymentId, DeploymentName};
use proptest::prelude::*;

/// Valid deployment names: a lowercase letter, then letters, digits and single hyphens, not
/// ending in a hyphen, at most 32 characters.
fn deployment_name() -> impl Strategy<Value = DeploymentName> {
    "[a-z]([a-z0-9]|-[a-z0-9]){0,15}".prop_filter_map("valid names only", |s| {
        (s.len() <= 32)
            .then(|| DeploymentName::new(&s).ok())
            .flatten()
    })
}

fn deployment_id() -> impl Strategy<Value = DeploymentId> {
    (0u64..4_000_000_000_000, any::<u64>()).prop_map(|(ms, entropy)| {
        DeploymentId::generate(flotilla_core::Timestamp::from_millis(ms), entropy)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_name_builds_a_sound_template(name in deployment_name(), per_az in any::<bool>(), tls in any::<bool>()) {
        let mut options = BaselineOptions::new(
            name.clone(),
            if tls {
                TlsMode::Acm { domain: "app.example.com".into(), alternative_names: vec![], hosted_zone_id: None }
            } else {
                TlsMode::HttpOnly
            },
        );
        options.nat = if per_az { NatMode::PerAz } else { NatMode::Single };
        let t = build(&options).expect("valid options");
        prop_assert!(t.dangling_references().is_empty());
        prop_assert!(t.to_compact_string().len() < cfn::TEMPLATE_BODY_MAX_BYTES);

        let lb = names::load_balancer_name(&name);
        prop_assert!(lb.len() <= names::LOAD_BALANCER_NAME_MAX, "{}", lb);
        prop_assert!(!lb.starts_with('-') && !lb.ends_with('-') && !lb.contains("--"), "{}", lb);
        prop_assert!(names::reaper_function_name(&name).len() <= 64);
        prop_assert!(names::artefact_bucket_prefix(&name).len() + 8 <= 63);
    }

    #[test]
    fn wildcards_match_this_deployment_and_no_other(
        a in deployment_name(),
        b in deployment_name(),
        id in deployment_id(),
    ) {
        let tg = core_names::target_group_name(&a, &id);
        prop_assert!(iam_wildcard_matches(&names::target_group_name_pattern(&a), &tg));
        let bucket = format!("{}0123abcd", names::artefact_bucket_prefix(&a));
        prop_assert!(iam_wildcard_matches(&names::artefact_bucket_pattern(&a), &bucket));
        if a != b {
            let other_tg = core_names::target_group_name(&b, &id);
            prop_assert!(!iam_wildcard_matches(&names::target_group_name_pattern(&a), &other_tg),
                "{} matches {}'s target group {}", a, b, other_tg);
            let other_bucket = format!("{}0123abcd", names::artefact_bucket_prefix(&b));
            prop_assert!(!iam_wildcard_matches(&names::artefact_bucket_pattern(&a), &other_bucket));
            prop_assert_ne!(names::load_balancer_name(&a), names::load_balancer_name(&b));
        }
    }
}
