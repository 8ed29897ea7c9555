//! What the baseline commands decide between the stack's calls, so a command line only turns
//! its arguments into these calls and renders what they return: the stack of a deployment name
//! with its wait, the reaper's code for `baseline up`, whether a plan may be applied without
//! asking, the cached outputs against the live stack for `baseline show`, the refusal of
//! `baseline down` while versions run, and the deployer policy's account and partition.

use std::path::Path;
use std::time::Duration;

use flotilla_baseline::{BaselineOptions, BaselineOutputs, DeployerPolicyOptions};

use super::*;
use crate::settings::AwsSettings;

impl BaselineStack {
    /// The stack of `settings.name` with clients for `settings`, waiting at most `timeout` for
    /// one stack operation (else [`WaitSettings::default`]'s).
    pub async fn for_settings(settings: AwsSettings, timeout: Option<Duration>) -> BaselineStack {
        let clients = StackClients::for_settings(&settings).await;
        let mut wait = WaitSettings::default();
        if let Some(t) = timeout {
            wait.timeout = t;
        }
        BaselineStack::new(clients, settings, wait)
    }

    /// The live stack and the cached outputs for `baseline show` (`offline`: the stack is not
    /// asked), and whether the cache differs from the stack's outputs.
    pub async fn show(&self, offline: bool) -> Result<Shown, StackError> {
        let cached = self.cached()?;
        let live = if offline {
            None
        } else {
            self.describe().await?
        };
        let cache_stale = cache_stale(live.as_ref(), cached.as_ref());
        Ok(Shown {
            live,
            cached,
            cache_stale,
        })
    }
}

/// What `baseline show` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    /// The stack, unless there is none or it was not asked.
    pub live: Option<StackInfo>,
    /// The cached outputs, if any.
    pub cached: Option<BaselineOutputs>,
    /// The cache differs from the live stack's outputs (or is missing beside a live stack).
    pub cache_stale: bool,
}

/// Whether the cache differs from the live stack's outputs. The certificate's validation
/// records are not stack outputs, so the cache's own are kept in the comparison.
fn cache_stale(live: Option<&StackInfo>, cached: Option<&BaselineOutputs>) -> bool {
    match (live, cached) {
        (Some(live), Some(cached)) => BaselineOutputs::from_stack_outputs(live.outputs.clone())
            .map(|mut fresh| {
                fresh.certificate_validation_records =
                    cached.certificate_validation_records.clone();
                &fresh != cached
            })
            .unwrap_or(true),
        (Some(_), None) => true,
        _ => false,
    }
}

/// The reaper's code for `baseline up` and the template around it: the executable chosen
/// (`explicit`, else a static reaper found from `running`, else `running` itself), checked and
/// zipped. Returns how it was chosen, in words, with the desired stack.
pub fn desired_for_up(
    options: &BaselineOptions,
    explicit: Option<&Path>,
    running: &Path,
) -> Result<(String, Desired), StackError> {
    let source = artefact::choose(explicit, running, options.reaper.architecture);
    let artefact = ReaperArtefact::from_binary(source.path())?;
    let note = format!("reaper: {}; {}", source.describe(), artefact.summary());
    Ok((note, Desired::new(options, artefact)?))
}

/// Whether a plan may be applied as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consent {
    /// Apply it: nothing changes, or `--yes` was given.
    Given,
    /// Ask on the terminal first.
    Ask,
    /// Refuse: it replaces or removes resources and there is no terminal to ask on.
    Refused,
}

impl Plan {
    /// Whether this plan may be applied: `yes` is the command line's `--yes`, `interactive`
    /// whether stdin is a terminal. An update that only adds or modifies goes ahead without a
    /// terminal; one that destroys does not.
    pub fn consent(&self, yes: bool, interactive: bool) -> Consent {
        if matches!(self, Plan::NoChange { .. }) || yes {
            Consent::Given
        } else if interactive {
            Consent::Ask
        } else if self.destroys() {
            Consent::Refused
        } else {
            Consent::Given
        }
    }
}

/// The refusal of `baseline down` while versions of `name` still run on the baseline, or
/// `None` when none does.
pub fn refuse_down_while_running(name: &str, running: &[RunningVersion]) -> Option<StackError> {
    if running.is_empty() {
        return None;
    }
    let lines: Vec<String> = running
        .iter()
        .map(|v| {
            let mut parts = Vec::new();
            if let Some(state) = &v.state {
                parts.push(state.clone());
            }
            if let Some(service) = &v.service {
                parts.push(format!("service {service}"));
            }
            format!("  {} ({})", v.id, parts.join(", "))
        })
        .collect();
    Some(StackError::Refused {
        message: format!(
            "{} version(s) of `{}` still run on the baseline:\n{}",
            running.len(),
            name,
            lines.join("\n")
        ),
        hint: "remove them first with `flotilla teardown --all`, or pass --force to remove \
               them and then the stack (`flotilla teardown --all --baseline` does the same)"
            .to_owned(),
    })
}

/// The deployer policy's options for `settings.name` in `region`: with `account_id` (already
/// checked to be one) the partition follows from the region; without, the account and
/// partition are the caller's, from STS, and the region falls back to the SDK's.
pub async fn deployer_policy_options(
    settings: AwsSettings,
    region: Option<String>,
    account_id: Option<&str>,
) -> Result<DeployerPolicyOptions, StackError> {
    let mut options = DeployerPolicyOptions::new(settings.name.clone());
    match account_id {
        Some(id) => {
            options.account_id = Some(id.to_owned());
            options.partition = partition_of(region.as_deref()).to_owned();
            options.region = region;
        }
        None => {
            let clients = StackClients::for_settings(&settings).await;
            let (account, partition) = caller_account(&clients.sts).await?;
            options.account_id = Some(account);
            options.partition = partition;
            options.region = region.or(clients.provider.region.clone());
        }
    }
    Ok(options)
}

/// The partition of a region: `aws-cn` for China, `aws-us-gov` for GovCloud, else `aws`.
fn partition_of(region: Option<&str>) -> &'static str {
    match region {
        Some(r) if r.starts_with("cn-") => "aws-cn",
        Some(r) if r.starts_with("us-gov-") => "aws-us-gov",
        _ => "aws",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_of_regions() {
        assert_eq!(partition_of(Some("eu-west-1")), "aws");
        assert_eq!(partition_of(Some("cn-north-1")), "aws-cn");
        assert_eq!(partition_of(Some("us-gov-west-1")), "aws-us-gov");
        assert_eq!(partition_of(None), "aws");
    }

    #[test]
    fn a_plan_that_destroys_needs_a_terminal_or_yes() {
        let change = |action: &str| ResourceChange {
            action: action.to_owned(),
            logical_id: "Alb".to_owned(),
            resource_type: "AWS::ElasticLoadBalancingV2::LoadBalancer".to_owned(),
            replacement: None,
            scope: Vec::new(),
            with_reaper_code: false,
        };
        let update = |action: &str| Plan::Update {
            stack_id: "s".to_owned(),
            change_set_id: "c".to_owned(),
            changes: vec![change(action)],
            new_reaper_code: false,
        };
        let none = Plan::NoChange {
            stack_id: "s".to_owned(),
        };
        assert_eq!(none.consent(false, false), Consent::Given);
        assert_eq!(update("Remove").consent(true, false), Consent::Given);
        assert_eq!(update("Remove").consent(false, true), Consent::Ask);
        assert_eq!(update("Remove").consent(false, false), Consent::Refused);
        assert_eq!(update("Modify").consent(false, false), Consent::Given);
        assert_eq!(update("Add").consent(false, true), Consent::Ask);
    }

    #[test]
    fn down_is_refused_naming_each_running_version() {
        assert!(refuse_down_while_running("prod", &[]).is_none());
        let running = [RunningVersion {
            id: "20261207-1".to_owned(),
            service: Some("prod-20261207-1 (1 desired, 1 running)".to_owned()),
            state: Some("active".to_owned()),
        }];
        let err = refuse_down_while_running("prod", &running).expect("one runs");
        assert_eq!(
            err.to_string(),
            "1 version(s) of `prod` still run on the baseline:\n  20261207-1 (active, service \
             prod-20261207-1 (1 desired, 1 running))"
        );
        assert_eq!(err.class(), StackErrorClass::Refused);
    }
}
