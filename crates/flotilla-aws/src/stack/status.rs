//! Pure readings of CloudFormation's answers: what a stack status means for `baseline up` and
//! `down`, whether a change set has nothing to do, which changes destroy something, and what the
//! user should do about a stack stuck in a failed state.

use serde::Serialize;

/// What a stack's status means for flotilla.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No stack (never created, or deleted).
    Missing,
    /// An operation is running; wait for it.
    Busy,
    /// Complete and updatable (created, updated, or an update rolled back cleanly).
    Stable,
    /// The first creation failed and was rolled back: the stack holds nothing and cannot be
    /// updated, only deleted.
    CreateFailed,
    /// An update failed and so did its rollback: `ContinueUpdateRollback` first.
    UpdateRollbackFailed,
    /// A deletion failed part-way: delete again, perhaps retaining what cannot be deleted.
    DeleteFailed,
    /// A change set created the stack but was never executed: it holds nothing.
    Review,
}

/// The phase of a stack in `status` (CloudFormation's `StackStatus` value).
pub fn phase(status: &str) -> Phase {
    match status {
        "CREATE_COMPLETE"
        | "UPDATE_COMPLETE"
        | "UPDATE_ROLLBACK_COMPLETE"
        | "IMPORT_COMPLETE"
        | "IMPORT_ROLLBACK_COMPLETE" => Phase::Stable,
        "DELETE_COMPLETE" => Phase::Missing,
        "ROLLBACK_COMPLETE" | "ROLLBACK_FAILED" | "CREATE_FAILED" => Phase::CreateFailed,
        "UPDATE_ROLLBACK_FAILED" | "IMPORT_ROLLBACK_FAILED" => Phase::UpdateRollbackFailed,
        "DELETE_FAILED" => Phase::DeleteFailed,
        "REVIEW_IN_PROGRESS" => Phase::Review,
        s if s.ends_with("_IN_PROGRESS") => Phase::Busy,
        // UPDATE_FAILED and statuses CloudFormation may add: treat as failed updates, which is
        // what asks the user to look before anything else happens.
        _ => Phase::UpdateRollbackFailed,
    }
}

/// What to do with the cached outputs once the stack's phase is known: a cache that disagrees
/// with the stack is refreshed or discarded, never trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheVerdict {
    /// The stack is complete: compare its outputs with the cache and rewrite the cache if they
    /// differ.
    Compare,
    /// The stack is gone or holds no working baseline (a failed first creation, a deletion
    /// stopped part-way, a change set never executed): remove the cache.
    Discard,
    /// An operation is running, or a failed update waits for its rollback to continue: the
    /// resources may still be there, so keep the cache until the stack settles.
    Keep,
}

/// The [`CacheVerdict`] for a stack in `phase`.
pub fn cache_verdict(phase: Phase) -> CacheVerdict {
    match phase {
        Phase::Stable => CacheVerdict::Compare,
        Phase::Missing | Phase::CreateFailed | Phase::DeleteFailed | Phase::Review => {
            CacheVerdict::Discard
        }
        Phase::Busy | Phase::UpdateRollbackFailed => CacheVerdict::Keep,
    }
}

/// Whether an error answering `CreateChangeSet` or `UpdateStack`, or a failed change set's
/// reason, says only that the template and parameters match the stack.
///
/// CloudFormation creates a `FAILED` change set with "The submitted information didn't contain
/// changes..."; some emulators refuse `CreateChangeSet` itself with "No updates are to be
/// performed.", which is also what `UpdateStack` answers.
pub fn means_no_change(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("didn't contain changes")
        || m.contains("did not contain changes")
        || m.contains("no updates are to be performed")
}

/// One resource change of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceChange {
    /// `Add`, `Modify`, `Remove`, `Import` or `Dynamic`.
    pub action: String,
    /// The template's logical id.
    pub logical_id: String,
    /// The resource type, e.g. `AWS::ElasticLoadBalancingV2::Listener`.
    pub resource_type: String,
    /// For `Modify`: `True`, `False` or `Conditional` (whether the resource is replaced).
    pub replacement: Option<String>,
    /// What changes, e.g. `Properties`, `Tags`.
    pub scope: Vec<String>,
    /// Made only in the second step of a first creation, once the reaper's code is uploaded.
    pub with_reaper_code: bool,
}

impl ResourceChange {
    /// Whether applying it deletes something that exists: a removal, or a replacement (which
    /// creates a new resource and deletes the old one; for a VPC or a load balancer that means
    /// new ids, and every version is cut off from it).
    pub fn destroys(&self) -> bool {
        self.action == "Remove"
            || matches!(self.replacement.as_deref(), Some("True" | "Conditional"))
    }
}

/// The changes of a first creation, read from the template: every resource, in template order,
/// with those that wait for the reaper's code (`Condition: HasReaperCode`) marked.
pub fn creation_changes(template: &serde_json::Value) -> Vec<ResourceChange> {
    let Some(resources) = template.get("Resources").and_then(|r| r.as_object()) else {
        return Vec::new();
    };
    let mut changes: Vec<ResourceChange> = resources
        .iter()
        .map(|(id, r)| ResourceChange {
            action: "Add".to_owned(),
            logical_id: id.clone(),
            resource_type: r
                .get("Type")
                .and_then(|t| t.as_str())
                .unwrap_or("?")
                .to_owned(),
            replacement: None,
            scope: Vec::new(),
            with_reaper_code: r.get("Condition").and_then(|c| c.as_str()) == Some(REAPER_CONDITION),
        })
        .collect();
    // The reaper's resources last, as they are made.
    changes.sort_by_key(|c| c.with_reaper_code);
    changes
}

/// The template condition that holds the reaper's resources back until its code is uploaded.
const REAPER_CONDITION: &str = "HasReaperCode";

/// One resource that failed, from stack events or resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedResource {
    /// The logical id.
    pub logical_id: String,
    /// The resource type.
    pub resource_type: String,
    /// Its status, e.g. `DELETE_FAILED`.
    pub status: String,
    /// CloudFormation's reason.
    pub reason: String,
}

/// What to do about a stack in `phase`, for the command that found it there (`up` or `down`).
/// `stuck` names the resources that failed, when known.
pub fn guidance(phase: Phase, command: &str, stuck: &[FailedResource]) -> String {
    let ids: Vec<&str> = stuck.iter().map(|f| f.logical_id.as_str()).collect();
    let example = ids.first().copied().unwrap_or("LogicalId");
    match phase {
        Phase::CreateFailed => "its first creation failed and was rolled back, so it holds \
             nothing and cannot be updated: fix the cause named above, then run \
             `flotilla baseline down` and `flotilla baseline up`"
            .to_owned(),
        Phase::UpdateRollbackFailed => format!(
            "an update failed and so did its rollback. Fix the cause named above (often a \
             resource changed or deleted outside CloudFormation), then run \
             `flotilla baseline up --continue-rollback` (CloudFormation's ContinueUpdateRollback); \
             if a resource cannot be restored, skip it with `--skip {example}` and repair it by hand"
        ),
        Phase::DeleteFailed if command == "down" => {
            let retain = if ids.is_empty() {
                "--retain LogicalId".to_owned()
            } else {
                format!("--retain {}", ids.join(","))
            };
            format!(
                "fix the cause named above (usually something in use outside the stack: network \
                 interfaces still detaching, objects put in by hand), then run \
                 `flotilla baseline down` again; or keep what cannot be deleted with \
                 `flotilla baseline down {retain}` and delete it yourself afterwards"
            )
        }
        Phase::DeleteFailed => "a deletion failed part-way; finish it with \
             `flotilla baseline down` (see its --retain), then `flotilla baseline up`"
            .to_owned(),
        Phase::Review => "a change set created it but was never executed, so it holds nothing: \
             run `flotilla baseline down`, then `flotilla baseline up`"
            .to_owned(),
        Phase::Busy => "another operation is running on it; wait for it to finish \
             (`flotilla baseline show`), then run the command again"
            .to_owned(),
        Phase::Missing | Phase::Stable => format!("run `flotilla baseline {command}` again"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_is_kept_only_while_its_stack_may_still_hold_the_resources() {
        let table = [
            ("CREATE_COMPLETE", CacheVerdict::Compare),
            ("UPDATE_ROLLBACK_COMPLETE", CacheVerdict::Compare),
            ("DELETE_COMPLETE", CacheVerdict::Discard),
            ("DELETE_FAILED", CacheVerdict::Discard),
            ("ROLLBACK_COMPLETE", CacheVerdict::Discard),
            ("REVIEW_IN_PROGRESS", CacheVerdict::Discard),
            ("DELETE_IN_PROGRESS", CacheVerdict::Keep),
            ("UPDATE_IN_PROGRESS", CacheVerdict::Keep),
            ("UPDATE_ROLLBACK_FAILED", CacheVerdict::Keep),
        ];
        for (status, verdict) in table {
            assert_eq!(cache_verdict(phase(status)), verdict, "{status}");
        }
    }

    #[test]
    fn phases_of_every_status() {
        let table: &[(&str, Phase)] = &[
            ("CREATE_COMPLETE", Phase::Stable),
            ("UPDATE_COMPLETE", Phase::Stable),
            ("UPDATE_ROLLBACK_COMPLETE", Phase::Stable),
            ("IMPORT_COMPLETE", Phase::Stable),
            ("DELETE_COMPLETE", Phase::Missing),
            ("CREATE_IN_PROGRESS", Phase::Busy),
            ("UPDATE_IN_PROGRESS", Phase::Busy),
            ("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", Phase::Busy),
            ("UPDATE_ROLLBACK_IN_PROGRESS", Phase::Busy),
            ("UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS", Phase::Busy),
            ("ROLLBACK_IN_PROGRESS", Phase::Busy),
            ("DELETE_IN_PROGRESS", Phase::Busy),
            ("ROLLBACK_COMPLETE", Phase::CreateFailed),
            ("ROLLBACK_FAILED", Phase::CreateFailed),
            ("CREATE_FAILED", Phase::CreateFailed),
            ("UPDATE_ROLLBACK_FAILED", Phase::UpdateRollbackFailed),
            ("UPDATE_FAILED", Phase::UpdateRollbackFailed),
            ("DELETE_FAILED", Phase::DeleteFailed),
            ("REVIEW_IN_PROGRESS", Phase::Review),
        ];
        for (status, want) in table {
            assert_eq!(phase(status), *want, "{status}");
        }
    }

    #[test]
    fn no_change_messages() {
        let table: &[(&str, bool)] = &[
            (
                "The submitted information didn't contain changes. Submit different information \
                 to create a change set.",
                true,
            ),
            ("No updates are to be performed.", true),
            (
                "Template format error: unresolved resource dependencies",
                false,
            ),
            ("Requires capabilities : [CAPABILITY_IAM]", false),
        ];
        for (message, want) in table {
            assert_eq!(means_no_change(message), *want, "{message}");
        }
    }

    #[test]
    fn destructive_changes() {
        let change = |action: &str, replacement: Option<&str>| ResourceChange {
            action: action.to_owned(),
            logical_id: "X".to_owned(),
            resource_type: "AWS::EC2::VPC".to_owned(),
            replacement: replacement.map(str::to_owned),
            scope: vec![],
            with_reaper_code: false,
        };
        assert!(change("Remove", None).destroys());
        assert!(change("Modify", Some("True")).destroys());
        assert!(change("Modify", Some("Conditional")).destroys());
        assert!(!change("Modify", Some("False")).destroys());
        assert!(!change("Add", None).destroys());
    }

    #[test]
    fn creation_lists_the_reaper_last() {
        let template = serde_json::json!({
            "Resources": {
                "ReaperFunction": { "Type": "AWS::Lambda::Function", "Condition": "HasReaperCode" },
                "Vpc": { "Type": "AWS::EC2::VPC" },
                "Cluster": { "Type": "AWS::ECS::Cluster" },
            }
        });
        let changes = creation_changes(&template);
        let ids: Vec<(&str, bool)> = changes
            .iter()
            .map(|c| (c.logical_id.as_str(), c.with_reaper_code))
            .collect();
        assert_eq!(
            ids,
            [("Cluster", false), ("Vpc", false), ("ReaperFunction", true)]
        );
        assert!(changes.iter().all(|c| c.action == "Add"));
    }

    #[test]
    fn guidance_names_the_way_out() {
        let stuck = vec![FailedResource {
            logical_id: "PrivateSubnetA".to_owned(),
            resource_type: "AWS::EC2::Subnet".to_owned(),
            status: "DELETE_FAILED".to_owned(),
            reason: "has dependencies".to_owned(),
        }];
        let check = |phase: Phase, command: &str, needle: &str| {
            let text = guidance(phase, command, &stuck);
            assert!(text.contains(needle), "{phase:?} {command}: {text}");
        };
        check(Phase::DeleteFailed, "down", "--retain PrivateSubnetA");
        check(Phase::DeleteFailed, "up", "flotilla baseline down");
        check(Phase::UpdateRollbackFailed, "up", "--continue-rollback");
        check(Phase::UpdateRollbackFailed, "up", "--skip PrivateSubnetA");
        check(Phase::CreateFailed, "up", "flotilla baseline down");
        check(Phase::Review, "up", "flotilla baseline down");
        assert!(guidance(Phase::DeleteFailed, "down", &[]).contains("--retain LogicalId"));
    }
}
