//! Every external name flotilla derives from a deployment name and a deployment id.
//!
//! Providers must take names from here and nowhere else, so that a resource made by one command is
//! found by every other (and by the reaper) without a lookup table. Each function documents the
//! limit it must meet; the tests check each at its boundary.

use crate::ids::{DeploymentId, DeploymentName, InstanceId};

/// The default request header carrying a tab's deployment id.
pub const DEFAULT_AFFINITY_HEADER: &str = "X-Flotilla-Deployment";

/// The default query parameter carrying a tab's deployment id (WebSocket and EventSource URLs,
/// where browsers cannot set headers).
pub const DEFAULT_AFFINITY_QUERY: &str = "flotilla_deployment";

/// The longest target group name an ALB accepts.
pub const TARGET_GROUP_NAME_MAX: usize = 32;

/// The longest ECS service name.
pub const SERVICE_NAME_MAX: usize = 255;

/// The longest value an ALB `http-header` or `query-string` condition accepts.
pub const CONDITION_VALUE_MAX: usize = 128;

/// The ECS service (and host version) name: `<name>-<id>`, at most 53 characters.
pub fn service_name(name: &DeploymentName, id: &DeploymentId) -> String {
    format!("{name}-{id}")
}

/// The ALB target group name, at most 32 characters, unique per (name, id).
///
/// `<name>-<id>` for names of up to 10 characters (at most 31 in all). Longer names keep their
/// first six characters and add five characters of a hash of the whole name, so two long names
/// that share a prefix still get different target groups: `<prefix6><hash5>-<id>`, always exactly
/// 32 characters. The two forms never have the same length, so a short name can never spell a long
/// name's target group (an 11-character name kept whole could: `abcdef` plus the hash).
pub fn target_group_name(name: &DeploymentName, id: &DeploymentId) -> String {
    let plain = format!("{name}-{id}");
    if plain.len() < TARGET_GROUP_NAME_MAX {
        return plain;
    }
    let prefix: String = name.as_str().chars().take(6).collect();
    format!("{prefix}{}-{id}", short_hash(name.as_str()))
}

/// The ECS task definition family of a deployment name: `flotilla-<name>`.
pub fn task_family(name: &DeploymentName) -> String {
    format!("flotilla-{name}")
}

/// The CloudFormation stack holding a deployment name's baseline: `flotilla-<name>`.
pub fn stack_name(name: &DeploymentName) -> String {
    format!("flotilla-{name}")
}

/// The SSM path prefix owning everything of one deployment name: `/apps/<name>/`.
pub fn deployment_parameter_prefix(name: &DeploymentName) -> String {
    format!("/apps/{name}/")
}

/// The SSM path prefix owning everything of one version: `/apps/<name>/<id>/`.
pub fn version_parameter_prefix(name: &DeploymentName, id: &DeploymentId) -> String {
    format!("/apps/{name}/{id}/")
}

/// The SSM parameter holding a version's lifecycle state: `/apps/<name>/<id>/state`.
pub fn state_parameter(name: &DeploymentName, id: &DeploymentId) -> String {
    format!("/apps/{name}/{id}/state")
}

/// The SSM path prefix under which a version's instances report readiness.
pub fn tasks_parameter_prefix(name: &DeploymentName, id: &DeploymentId) -> String {
    format!("/apps/{name}/{id}/tasks/")
}

/// The SSM parameter where one instance reports its readiness: `/apps/<name>/<id>/tasks/<task_id>`.
pub fn task_parameter(name: &DeploymentName, id: &DeploymentId, instance: &InstanceId) -> String {
    format!("/apps/{name}/{id}/tasks/{instance}")
}

/// The SSM parameter holding the deploy lock of a deployment name: `/apps/<name>/lock`.
///
/// It cannot collide with a version's prefix: ids never spell `lock`.
pub fn lock_parameter(name: &DeploymentName) -> String {
    format!("/apps/{name}/lock")
}

/// The value a request carries (in the header or the query parameter) to reach version `id`.
pub fn affinity_value(id: &DeploymentId) -> &str {
    id.as_str()
}

/// Five base-36 characters of the 32-bit FNV-1a hash of `s`: stable across releases and platforms,
/// for names that must be shortened but stay distinct (target groups here, load balancers in the
/// baseline).
pub fn short_hash(s: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in s.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let alphabet = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = [0u8; 5];
    let mut rest = hash;
    for slot in out.iter_mut().rev() {
        *slot = alphabet[(rest % 36) as usize];
        rest /= 36;
    }
    String::from_utf8(out.to_vec()).expect("the alphabet is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DeploymentName {
        DeploymentName::new(s).expect("valid name")
    }

    fn id() -> DeploymentId {
        DeploymentId::new("20261125-190633-k3x9").expect("valid id")
    }

    fn is_valid_target_group_name(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= TARGET_GROUP_NAME_MAX
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
            && !s.starts_with("internal-")
    }

    #[test]
    fn target_group_names_at_each_limit() {
        let check = |n: &str, want: &str| {
            let got = target_group_name(&name(n), &id());
            assert_eq!(got, want);
            assert!(is_valid_target_group_name(&got), "{got}");
        };
        check("a", "a-20261125-190633-k3x9");
        // 10 characters is the longest name kept whole: 10 + 1 + 20 = 31; hashed names take 32.
        check("abcdefghij", "abcdefghij-20261125-190633-k3x9");
        for long in ["abcdefghijk", "abcdefghijkl"] {
            let hashed = target_group_name(&name(long), &id());
            assert_eq!(hashed.len(), 32);
            assert!(hashed.starts_with("abcdef") && hashed.ends_with("-20261125-190633-k3x9"));
        }
        let longest = target_group_name(&name(&"z".repeat(32)), &id());
        assert_eq!(longest.len(), 32);
        assert!(is_valid_target_group_name(&longest));
    }

    #[test]
    fn long_names_sharing_a_prefix_get_different_target_groups() {
        let a = target_group_name(&name("production-eu-west"), &id());
        let b = target_group_name(&name("production-us-east"), &id());
        assert_ne!(a, b);
        assert_eq!(
            a,
            target_group_name(&name("production-eu-west"), &id()),
            "stable"
        );
    }

    #[test]
    fn eleven_character_name_cannot_take_a_long_names_target_group() {
        // Found by the property tests: 11-character names used to be kept whole, and the name
        // part of a long name's target group (`<prefix6><hash5>`) is itself a valid 11-character
        // name, so `a-0-0atc4bt` got the target group of `a-0-0a-a-a-a`, and either
        // deployment's reaper would delete the other's.
        let long = target_group_name(&name("a-0-0a-a-a-a"), &id());
        let head = &long[..11];
        assert_eq!(head, "a-0-0atc4bt");
        assert_ne!(target_group_name(&name(head), &id()), long);
    }

    #[test]
    fn service_names_fit_ecs() {
        let longest = service_name(&name(&"z".repeat(32)), &id());
        assert_eq!(longest.len(), 53);
        assert!(longest.len() <= SERVICE_NAME_MAX);
        assert_eq!(
            service_name(&name("prod"), &id()),
            "prod-20261125-190633-k3x9"
        );
    }

    #[test]
    fn ssm_paths() {
        let n = name("prod");
        let task = InstanceId::new("0123456789abcdef0123456789abcdef").expect("valid");
        assert_eq!(
            state_parameter(&n, &id()),
            "/apps/prod/20261125-190633-k3x9/state"
        );
        assert_eq!(
            task_parameter(&n, &id(), &task),
            "/apps/prod/20261125-190633-k3x9/tasks/0123456789abcdef0123456789abcdef"
        );
        assert!(task_parameter(&n, &id(), &task).starts_with(&tasks_parameter_prefix(&n, &id())));
        assert!(state_parameter(&n, &id()).starts_with(&version_parameter_prefix(&n, &id())));
        assert!(version_parameter_prefix(&n, &id()).starts_with(&deployment_parameter_prefix(&n)));
        assert_eq!(lock_parameter(&n), "/apps/prod/lock");
        // SSM names are limited to 1011 characters; the longest path here is far below it.
        let longest = task_parameter(
            &name(&"z".repeat(32)),
            &id(),
            &InstanceId::new(&"t".repeat(64)).expect("valid"),
        );
        assert!(longest.len() < 200);
    }

    #[test]
    fn affinity_values_fit_alb_conditions() {
        assert_eq!(affinity_value(&id()), "20261125-190633-k3x9");
        assert!(affinity_value(&id()).len() <= CONDITION_VALUE_MAX);
        assert!(
            DEFAULT_AFFINITY_HEADER.len() <= 40,
            "ALB header names are at most 40 characters"
        );
    }

    #[test]
    fn stack_and_family() {
        assert_eq!(stack_name(&name("prod")), "flotilla-prod");
        assert_eq!(task_family(&name("prod")), "flotilla-prod");
    }
}
