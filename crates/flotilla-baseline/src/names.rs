//! The names of the baseline's resources, derived from the deployment name alone.
//!
//! Deterministic names let the deployer IAM policy be written before the stack exists and let every
//! command find the baseline's pieces without a lookup. Each function states the AWS limit it meets;
//! the tests check the longest deployment name against each.

use flotilla_core::DeploymentName;
use flotilla_core::ids::{DeploymentId, ID_LEN};
use flotilla_core::names as core_names;

/// The longest Application Load Balancer name AWS accepts.
pub const LOAD_BALANCER_NAME_MAX: usize = 32;

/// The CloudFormation stack: `flotilla-<name>` (the core owns this name).
pub fn stack_name(name: &DeploymentName) -> String {
    core_names::stack_name(name)
}

/// The ECS cluster: `flotilla-<name>` (limit 255).
pub fn cluster_name(name: &DeploymentName) -> String {
    format!("flotilla-{name}")
}

/// The ECR repository: `flotilla/<name>` (limit 256, lowercase).
pub fn repository_name(name: &DeploymentName) -> String {
    format!("flotilla/{name}")
}

/// The application log group: `/flotilla/<name>/app` (limit 512).
pub fn log_group_name(name: &DeploymentName) -> String {
    format!("/flotilla/{name}/app")
}

/// The reaper Lambda function: `flotilla-<name>-reaper` (limit 64).
pub fn reaper_function_name(name: &DeploymentName) -> String {
    format!("flotilla-{name}-reaper")
}

/// The web ACL in front of the load balancer: `flotilla-<name>` (limit 128; letters, digits, `-`
/// and `_`), also the prefix of its CloudWatch metric names.
pub fn web_acl_name(name: &DeploymentName) -> String {
    format!("flotilla-{name}")
}

/// The reaper's log group, created by the stack so that it has a retention and goes with it.
pub fn reaper_log_group_name(name: &DeploymentName) -> String {
    format!("/aws/lambda/{}", reaper_function_name(name))
}

/// The EventBridge rule that schedules the reaper: `flotilla-<name>-reaper` (limit 64).
pub fn reaper_schedule_name(name: &DeploymentName) -> String {
    format!("flotilla-{name}-reaper")
}

/// The CloudWatch dashboard: `flotilla-<name>` (limit 255).
pub fn dashboard_name(name: &DeploymentName) -> String {
    format!("flotilla-{name}")
}

/// The name of one of the baseline's alarms: `flotilla-<name>-<what>`.
pub fn alarm_name(name: &DeploymentName, what: &str) -> String {
    format!("flotilla-{name}-{what}")
}

/// The SNS topic for alarm notifications: `flotilla-<name>-alarms` (limit 256).
pub fn alarm_topic_name(name: &DeploymentName) -> String {
    format!("flotilla-{name}-alarms")
}

/// The IAM path of the two roles ECS tasks use (execution and task role): `/flotilla/<name>/ecs/`.
///
/// Roles keep generated names (so the stack needs only `CAPABILITY_IAM`); the path is what lets a
/// policy name them in advance, e.g. `iam:PassRole` on `role/flotilla/<name>/ecs/*`.
pub fn task_role_path(name: &DeploymentName) -> String {
    format!("/flotilla/{name}/ecs/")
}

/// The IAM path of the reaper's role: `/flotilla/<name>/reaper/`.
pub fn reaper_role_path(name: &DeploymentName) -> String {
    format!("/flotilla/{name}/reaper/")
}

/// The prefix of the artefact bucket's name: `flotilla-<name>-`.
///
/// The template appends the first eight hex digits of the stack's UUID, so the name is globally
/// unique, at most 50 characters (limit 63), and matched by [`artefact_bucket_pattern`].
pub fn artefact_bucket_prefix(name: &DeploymentName) -> String {
    format!("flotilla-{name}-")
}

/// The drain board's key in the artefact bucket: one object holding every version's state,
/// which the agents read instead of one SSM parameter each (`flotilla_aws::drain_board`).
pub fn drain_board_key(name: &DeploymentName) -> String {
    format!("drain/{name}.json")
}

/// An IAM wildcard matching exactly this deployment's artefact bucket name.
///
/// Eight `?` stand for the eight hex digits; another deployment name's bucket cannot match,
/// because its part after `flotilla-<name>-` would not be exactly eight characters long.
pub fn artefact_bucket_pattern(name: &DeploymentName) -> String {
    format!("{}????????", artefact_bucket_prefix(name))
}

/// The Application Load Balancer: `flotilla-<name>` when that fits in 32 characters, otherwise
/// `fl-<first 23 characters of name>-<hash5>` so long names sharing a prefix still differ.
pub fn load_balancer_name(name: &DeploymentName) -> String {
    let plain = format!("flotilla-{name}");
    if plain.len() <= LOAD_BALANCER_NAME_MAX {
        return plain;
    }
    // 3 ("fl-") + 23 + 1 + 5 = 32.
    let head: String = name.as_str().chars().take(23).collect();
    let head = head.trim_end_matches('-');
    format!("fl-{head}-{}", core_names::short_hash(name.as_str()))
}

/// An IAM wildcard matching the names of this deployment's per-version target groups.
///
/// The core derives target group names as a deployment-specific prefix followed by the 20-character
/// deployment id (`YYYYMMDD-HHMMSS-xxxx`); the wildcard keeps that prefix and matches the id by
/// shape, so it cannot match another deployment's target groups.
pub fn target_group_name_pattern(name: &DeploymentName) -> String {
    let sample = DeploymentId::new("20000101-000000-0000").expect("a well-formed sample id");
    let full = core_names::target_group_name(name, &sample);
    let prefix = full
        .strip_suffix(sample.as_str())
        .expect("core target group names end with the deployment id");
    debug_assert_eq!(sample.as_str().len(), ID_LEN);
    format!("{prefix}????????-??????-????")
}

/// The SSM path (without leading slash, as in parameter ARNs) owning everything of a deployment
/// name: `apps/<name>`.
pub fn parameter_arn_path(name: &DeploymentName) -> String {
    core_names::deployment_parameter_prefix(name)
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

/// The ECS task definition family the AWS provider registers (the core owns this name).
pub fn task_family(name: &DeploymentName) -> String {
    core_names::task_family(name)
}

/// Whether `text` matches the IAM wildcard `pattern` (`*` any run, `?` one character).
pub fn iam_wildcard_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Classic two-pointer glob match with backtracking to the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DeploymentName {
        DeploymentName::new(s).expect("valid name")
    }

    fn longest() -> DeploymentName {
        name(&format!("a{}", "b".repeat(31)))
    }

    #[test]
    fn every_name_fits_its_limit_for_the_longest_deployment_name() {
        let n = longest();
        let check = |what: &str, value: String, max: usize| {
            assert!(
                value.len() <= max,
                "{what} `{value}` is {} > {max}",
                value.len()
            );
        };
        check("cluster", cluster_name(&n), 255);
        check("repository", repository_name(&n), 256);
        check("log group", log_group_name(&n), 512);
        check("function", reaper_function_name(&n), 64);
        check("schedule", reaper_schedule_name(&n), 64);
        check("dashboard", dashboard_name(&n), 255);
        check("alarm", alarm_name(&n, "no-running-tasks"), 255);
        check("topic", alarm_topic_name(&n), 256);
        check(
            "bucket",
            format!("{}12345678", artefact_bucket_prefix(&n)),
            63,
        );
        check(
            "load balancer",
            load_balancer_name(&n),
            LOAD_BALANCER_NAME_MAX,
        );
        check("role path", task_role_path(&n), 512);
    }

    #[test]
    fn load_balancer_names() {
        let check = |n: &str, want: &str| assert_eq!(load_balancer_name(&name(n)), want, "{n}");
        check("prod", "flotilla-prod");
        // 23 characters is the longest name kept whole: 9 + 23 = 32.
        check(
            "abcdefghijklmnopqrstuvw",
            "flotilla-abcdefghijklmnopqrstuvw",
        );
        let long = load_balancer_name(&name("abcdefghijklmnopqrstuvwx"));
        assert_eq!(long.len(), 32, "{long}");
        assert!(long.starts_with("fl-abcdefghijklmnopqrstuvw-"), "{long}");
        // A hyphen at the cut is dropped so the name never holds two in a row.
        let cut = load_balancer_name(&name("abcdefghijklmnopqrstuv-wxyz"));
        assert!(!cut.contains("--"), "{cut}");
        let a = load_balancer_name(&name("production-eu-west-1-blue"));
        let b = load_balancer_name(&name("production-eu-west-1-green"));
        assert_ne!(a, b);
        for n in [a, b, long, cut] {
            assert!(
                n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{n}"
            );
            assert!(!n.starts_with('-') && !n.ends_with('-') && !n.starts_with("internal-"));
        }
    }

    #[test]
    fn target_group_pattern_matches_core_names_and_nothing_else() {
        let ids = ["20261125-190633-k3x9", "19991231-235959-zzzz"];
        for n in ["a", "prod", "abcdefghijk", "abcdefghijkl", &"z".repeat(32)] {
            let pattern = target_group_name_pattern(&name(n));
            for id in ids {
                let id = DeploymentId::new(id).expect("valid id");
                let tg = core_names::target_group_name(&name(n), &id);
                assert!(iam_wildcard_matches(&pattern, &tg), "{pattern} vs {tg}");
            }
        }
        // A deployment whose name extends another's must not match the shorter one's pattern.
        let id = DeploymentId::new("20261125-190633-k3x9").expect("valid id");
        let other = core_names::target_group_name(&name("a-b"), &id);
        assert!(!iam_wildcard_matches(
            &target_group_name_pattern(&name("a")),
            &other
        ));
    }

    #[test]
    fn bucket_pattern_separates_names() {
        let p = artefact_bucket_pattern(&name("a"));
        assert!(iam_wildcard_matches(&p, "flotilla-a-0123abcd"));
        assert!(!iam_wildcard_matches(&p, "flotilla-a-b-0123abcd"));
        assert!(!iam_wildcard_matches(&p, "flotilla-a-0123abc"));
    }

    #[test]
    fn wildcards() {
        let check = |p: &str, t: &str, want: bool| {
            assert_eq!(iam_wildcard_matches(p, t), want, "{p} vs {t}");
        };
        check("*", "", true);
        check("a*c", "abbbc", true);
        check("a*c", "abbb", false);
        check("a?c", "abc", true);
        check("a?c", "abbc", false);
        check("role/x/*", "role/x/y/z", true);
        check("", "a", false);
    }

    #[test]
    fn parameter_paths_follow_the_core() {
        assert_eq!(parameter_arn_path(&name("prod")), "apps/prod");
        assert_eq!(stack_name(&name("prod")), "flotilla-prod");
    }
}
