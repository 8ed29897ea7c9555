//! Routing on an ALB listener: per version, a target group and two listener rules (one matching
//! the affinity header, one the affinity query parameter: an ALB ANDs conditions of different
//! types, and affinity must match either), and the listener's default action as the weighted
//! forward for fresh requests.
//!
//! Rules are recognised by their condition (header or query key and the version id as value) and
//! confirmed as this deployment name's by the target group they forward to (its name is derived
//! from the name and id) or, for retired rules, by their `deployment_name` tag.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, FixedResponseActionConfig, ForwardActionConfig,
    HttpHeaderConditionConfig, ProtocolEnum, QueryStringConditionConfig, QueryStringKeyValuePair,
    Rule, RuleCondition, Tag, TargetGroupAttribute, TargetGroupStickinessConfig, TargetGroupTuple,
    TargetTypeEnum,
};
use flotilla_core::DeploymentId;
use flotilla_core::routing::{RoutingTable, WeightedTarget, validate_default};
use flotilla_core::stale::{STALE_CLOSE_REASON, STALE_STATUSES, retired_message};
use flotilla_engine::ports::{ErrorKind, PortError, Routing};

use crate::ctx::{Ctx, TAG_ID, TAG_NAME, tg_name_of_arn};
use crate::error::{code_of, port_error};

/// The body fresh requests get while no version is deployed: the same text as the baseline
/// template's default action, so the listener says the same before and after the first deploy.
pub use flotilla_baseline::contract::NO_VERSION_MESSAGE;

/// ALB priorities go up to 50000.
const MAX_PRIORITY: u32 = 50_000;

/// Attempts at creating a rule when another writer takes the priority we picked.
const PRIORITY_ATTEMPTS: usize = 20;

/// How often a target group still in use is tried again.
const TG_IN_USE_POLL: std::time::Duration = std::time::Duration::from_secs(3);

/// `DescribeTags` takes at most 20 ARNs.
const TAGS_BATCH: usize = 20;

/// Which of a version's two rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RuleKind {
    Header,
    Query,
}

impl RuleKind {
    const BOTH: [RuleKind; 2] = [RuleKind::Header, RuleKind::Query];

    fn as_str(self) -> &'static str {
        match self {
            RuleKind::Header => "header",
            RuleKind::Query => "query",
        }
    }
}

/// What a rule does.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RuleAction {
    Forward(String),
    Retired,
    Other,
}

/// One affinity rule on the listener.
#[derive(Clone, Debug)]
struct AffinityRule {
    arn: String,
    kind: RuleKind,
    id: DeploymentId,
    action: RuleAction,
}

/// The listener as read in one `DescribeRules` pass.
#[derive(Debug, Default)]
struct ListenerView {
    /// `(target group ARN, weight)` of the default forward; empty when it is not a forward.
    default: Vec<(String, u16)>,
    /// Affinity rules that look like flotilla's (by condition).
    rules: Vec<AffinityRule>,
    /// Every priority in use.
    priorities: BTreeSet<u32>,
    /// Every non-default rule, flotilla's or not (they all count against the ALB's limit).
    rule_count: u32,
}

impl ListenerView {
    fn rules_of(&self, id: &DeploymentId) -> BTreeMap<RuleKind, &AffinityRule> {
        self.rules
            .iter()
            .filter(|r| &r.id == id)
            .map(|r| (r.kind, r))
            .collect()
    }

    fn next_free(&self, base: u32) -> Option<u32> {
        (base..=MAX_PRIORITY).find(|p| !self.priorities.contains(p))
    }
}

/// The [`Routing`] port over ELBv2.
pub struct AlbRouting {
    ctx: Arc<Ctx>,
}

impl AlbRouting {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        AlbRouting { ctx }
    }

    fn listener(&self) -> &str {
        &self.ctx.baseline.listener_arn
    }

    /// Reads every rule of the listener (the default one included) in pages of 100.
    async fn view(&self) -> Result<ListenerView, PortError> {
        let mut view = ListenerView::default();
        let mut marker: Option<String> = None;
        loop {
            let out = self
                .ctx
                .clients
                .elb
                .describe_rules()
                .listener_arn(self.listener())
                .page_size(100)
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| port_error("read listener rules", self.listener(), e))?;
            for rule in out.rules() {
                self.add_rule(&mut view, rule);
            }
            match out.next_marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_owned()),
                _ => break,
            }
        }
        Ok(view)
    }

    fn add_rule(&self, view: &mut ListenerView, rule: &Rule) {
        if rule.is_default() == Some(true) || rule.priority() == Some("default") {
            if let Some(action) = rule.actions().first() {
                view.default = forward_targets(action);
            }
            return;
        }
        view.rule_count += 1;
        if let Some(p) = rule.priority().and_then(|p| p.parse().ok()) {
            view.priorities.insert(p);
        }
        let (Some(arn), [condition]) = (rule.rule_arn(), rule.conditions()) else {
            return;
        };
        let Some((kind, value)) = self.affinity_condition(condition) else {
            return;
        };
        let Ok(id) = DeploymentId::new(&value.to_ascii_lowercase()) else {
            return;
        };
        let action = match rule.actions() {
            [a] if a.r#type() == Some(&ActionTypeEnum::Forward) => {
                match forward_targets(a).as_slice() {
                    [(tg, _)] => RuleAction::Forward(tg.clone()),
                    _ => RuleAction::Other,
                }
            }
            // Either stale status counts, so changing `stale_status` leaves rules retired
            // before the change as they are.
            [a] if a.r#type() == Some(&ActionTypeEnum::FixedResponse)
                && a.fixed_response_config()
                    .and_then(|c| c.status_code())
                    .is_some_and(|s| STALE_STATUSES.iter().any(|t| t.to_string() == s)) =>
            {
                RuleAction::Retired
            }
            _ => RuleAction::Other,
        };
        // A forward to a target group that is not this name's means the rule is someone else's.
        if let RuleAction::Forward(tg) = &action
            && tg_name_of_arn(tg) != Some(self.ctx.target_group_name(&id).as_str())
        {
            return;
        }
        view.rules.push(AffinityRule {
            arn: arn.to_owned(),
            kind,
            id,
            action,
        });
    }

    /// The kind and value of a condition if it is an affinity condition of ours.
    fn affinity_condition(&self, c: &RuleCondition) -> Option<(RuleKind, String)> {
        let r = &self.ctx.routing;
        match c.field()? {
            "http-header" => {
                let cfg = c.http_header_config()?;
                if !cfg
                    .http_header_name()?
                    .eq_ignore_ascii_case(&r.affinity_header)
                {
                    return None;
                }
                match cfg.values() {
                    [v] => Some((RuleKind::Header, v.clone())),
                    _ => None,
                }
            }
            "query-string" => match c.query_string_config()?.values() {
                [kv] if kv.key() == Some(r.affinity_query.as_str()) => {
                    Some((RuleKind::Query, kv.value()?.to_owned()))
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn condition(&self, kind: RuleKind, id: &DeploymentId) -> RuleCondition {
        let r = &self.ctx.routing;
        match kind {
            RuleKind::Header => RuleCondition::builder()
                .field("http-header")
                .http_header_config(
                    HttpHeaderConditionConfig::builder()
                        .http_header_name(&r.affinity_header)
                        .values(id.as_str())
                        .build(),
                )
                .build(),
            RuleKind::Query => RuleCondition::builder()
                .field("query-string")
                .query_string_config(
                    QueryStringConditionConfig::builder()
                        .values(
                            QueryStringKeyValuePair::builder()
                                .key(&r.affinity_query)
                                .value(id.as_str())
                                .build(),
                        )
                        .build(),
                )
                .build(),
        }
    }

    fn tags(&self, id: &DeploymentId) -> Vec<Tag> {
        vec![
            Tag::builder()
                .key(TAG_NAME)
                .value(self.ctx.name.as_str())
                .build(),
            Tag::builder().key(TAG_ID).value(id.as_str()).build(),
        ]
    }

    /// Creates (or finds) the target group of `id` and sets its attributes.
    async fn ensure_target_group(&self, id: &DeploymentId) -> Result<String, PortError> {
        let name = self.ctx.target_group_name(id);
        let r = &self.ctx.routing;
        let created = self
            .ctx
            .clients
            .elb
            .create_target_group()
            .name(&name)
            .protocol(ProtocolEnum::Http)
            .port(i32::from(self.ctx.task.container_port))
            .vpc_id(self.ctx.vpc_id().await?)
            .target_type(TargetTypeEnum::Ip)
            .health_check_protocol(ProtocolEnum::Http)
            .health_check_path(&r.health_path)
            .health_check_interval_seconds(r.health_interval_seconds as i32)
            .health_check_timeout_seconds(r.health_timeout_seconds as i32)
            .healthy_threshold_count(r.healthy_threshold as i32)
            .unhealthy_threshold_count(r.unhealthy_threshold as i32)
            .set_tags(Some(self.tags(id)))
            .send()
            .await;
        let arn = match created {
            Ok(out) => out
                .target_groups()
                .first()
                .and_then(|tg| tg.target_group_arn())
                .map(str::to_owned),
            // AWS answers an identical repeat with the existing group; moto (and AWS, when a
            // setting differs) says the name is taken. Either way the group is there.
            Err(e) if code_of(&e) == Some("DuplicateTargetGroupName") => {
                self.ctx.forget_tg(id);
                self.ctx.find_tg(id).await?
            }
            Err(e) => return Err(port_error("create target group", &name, e)),
        };
        let arn = arn.ok_or_else(|| {
            PortError::new(
                ErrorKind::Transient,
                "create target group",
                &name,
                "the target group was not returned; run the command again",
            )
        })?;
        let attr = |k: &str, v: String| TargetGroupAttribute::builder().key(k).value(v).build();
        self.ctx
            .clients
            .elb
            .modify_target_group_attributes()
            .target_group_arn(&arn)
            .attributes(attr(
                "deregistration_delay.timeout_seconds",
                r.deregistration_delay_seconds.to_string(),
            ))
            .attributes(attr("stickiness.enabled", "true".to_owned()))
            .attributes(attr("stickiness.type", "lb_cookie".to_owned()))
            .attributes(attr(
                "stickiness.lb_cookie.duration_seconds",
                r.stickiness_seconds.to_string(),
            ))
            .send()
            .await
            .map_err(|e| port_error("set target group attributes", &name, e))?;
        self.ctx.remember_tg(id, &arn);
        Ok(arn)
    }

    /// Deletes `id`'s target group `tg`. For a while after its rules and its service are deleted,
    /// ELB may still answer `ResourceInUse`; that is retried every few seconds for up to
    /// `target_group_in_use_wait` (a minute by default) before it is reported.
    async fn delete_target_group(&self, id: &DeploymentId, tg: &str) -> Result<(), PortError> {
        let wait = self.ctx.routing.target_group_in_use_wait;
        let started = std::time::Instant::now();
        loop {
            let err = match self
                .ctx
                .clients
                .elb
                .delete_target_group()
                .target_group_arn(tg)
                .send()
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if code_of(&e) == Some("ResourceInUse") => {
                    let left = wait.saturating_sub(started.elapsed());
                    if !left.is_zero() {
                        tracing::debug!(%id, "target group still in use; trying again");
                        tokio::time::sleep(TG_IN_USE_POLL.min(left)).await;
                        continue;
                    }
                    port_error("delete target group", &self.ctx.target_group_name(id), e)
                }
                Err(e) => port_error("delete target group", &self.ctx.target_group_name(id), e),
            };
            return match err.kind {
                ErrorKind::NotFound => Ok(()),
                ErrorKind::Conflict => Err(PortError {
                    message: format!(
                        "{}; it is still used by a listener rule or action after {}s; remove \
                         whatever else forwards to it and run the command again",
                        err.message,
                        wait.as_secs()
                    ),
                    ..err
                }),
                _ => Err(err),
            };
        }
    }

    /// Fails when creating `needed` more rules would exceed the listener's budget.
    fn check_budget(&self, view: &ListenerView, needed: u32) -> Result<(), PortError> {
        let limit = self.ctx.routing.rule_limit;
        if view.rule_count + needed <= limit {
            return Ok(());
        }
        Err(PortError::new(
            ErrorKind::Invalid,
            "create listener rules",
            self.listener(),
            format!(
                "{} of {limit} listener rules are in use and {needed} more are needed; run `flotilla reap` \
                 to remove versions whose sessions have ended, or `flotilla teardown ID` to remove one now",
                view.rule_count
            ),
        ))
    }

    /// Creates one rule of `id` with `action` at the lowest free priority, moving on when another
    /// writer takes a priority first.
    async fn create_rule(
        &self,
        view: &mut ListenerView,
        kind: RuleKind,
        id: &DeploymentId,
        action: Action,
    ) -> Result<(), PortError> {
        let what = format!("{} rule of {id}", kind.as_str());
        for _ in 0..PRIORITY_ATTEMPTS {
            let priority = view
                .next_free(self.ctx.routing.priority_base)
                .ok_or_else(|| {
                    PortError::new(
                        ErrorKind::Invalid,
                        "create listener rule",
                        &what,
                        "no free rule priority is left on the listener",
                    )
                })?;
            let created = self
                .ctx
                .clients
                .elb
                .create_rule()
                .listener_arn(self.listener())
                .priority(priority as i32)
                .conditions(self.condition(kind, id))
                .actions(action.clone())
                .set_tags(Some(self.tags(id)))
                .send()
                .await;
            view.priorities.insert(priority);
            match created {
                Ok(_) => {
                    view.rule_count += 1;
                    return Ok(());
                }
                Err(e) if code_of(&e) == Some("PriorityInUse") => {
                    tracing::debug!(
                        priority,
                        "rule priority taken concurrently; trying the next"
                    );
                }
                Err(e) => return Err(port_error("create listener rule", &what, e)),
            }
        }
        Err(PortError::new(
            ErrorKind::Conflict,
            "create listener rule",
            &what,
            "every priority tried was taken by a concurrent writer; run the command again",
        ))
    }

    async fn modify_rule(&self, rule: &AffinityRule, action: Action) -> Result<(), PortError> {
        self.ctx
            .clients
            .elb
            .modify_rule()
            .rule_arn(&rule.arn)
            .actions(action)
            .send()
            .await
            .map_err(|e| {
                port_error(
                    "change listener rule",
                    &format!("{} rule of {}", rule.kind.as_str(), rule.id),
                    e,
                )
            })?;
        Ok(())
    }

    fn refuse_if_default(
        &self,
        view: &ListenerView,
        id: &DeploymentId,
        op: &str,
    ) -> Result<(), PortError> {
        let tg = self.ctx.target_group_name(id);
        if view
            .default
            .iter()
            .any(|(arn, _)| tg_name_of_arn(arn) == Some(tg.as_str()))
        {
            return Err(PortError::new(
                ErrorKind::Conflict,
                op,
                id.as_str(),
                "fresh traffic still goes to this version; switch the default away from it first",
            ));
        }
        Ok(())
    }

    /// The ids of retired rules that carry this deployment name's tag.
    async fn owned_by_tag(&self, arns: &[String]) -> Result<BTreeSet<String>, PortError> {
        let mut owned = BTreeSet::new();
        for batch in arns.chunks(TAGS_BATCH) {
            let out = self
                .ctx
                .clients
                .elb
                .describe_tags()
                .set_resource_arns(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| port_error("read rule tags", self.listener(), e))?;
            for d in out.tag_descriptions() {
                let ours = d.tags().iter().any(|t| {
                    t.key() == Some(TAG_NAME) && t.value() == Some(self.ctx.name.as_str())
                });
                if let (true, Some(arn)) = (ours, d.resource_arn()) {
                    owned.insert(arn.to_owned());
                }
            }
        }
        Ok(owned)
    }
}

fn forward_targets(action: &Action) -> Vec<(String, u16)> {
    if action.r#type() != Some(&ActionTypeEnum::Forward) {
        return Vec::new();
    }
    if let Some(cfg) = action.forward_config() {
        let targets: Vec<(String, u16)> = cfg
            .target_groups()
            .iter()
            .filter_map(|t| {
                let weight = t.weight().unwrap_or(1).clamp(0, 999) as u16;
                Some((t.target_group_arn()?.to_owned(), weight))
            })
            .collect();
        if !targets.is_empty() {
            return targets;
        }
    }
    action
        .target_group_arn()
        .map(|arn| vec![(arn.to_owned(), 100)])
        .unwrap_or_default()
}

fn forward(tg_arns: &[(String, u16)]) -> Action {
    let mut cfg = ForwardActionConfig::builder().target_group_stickiness_config(
        // Stickiness across the default's target groups would pin every tab of a browser to
        // one version through a shared cookie; per-tab affinity is the header's job.
        TargetGroupStickinessConfig::builder()
            .enabled(false)
            .build(),
    );
    for (arn, weight) in tg_arns {
        cfg = cfg.target_groups(
            TargetGroupTuple::builder()
                .target_group_arn(arn)
                .weight(i32::from(*weight))
                .build(),
        );
    }
    Action::builder()
        .r#type(ActionTypeEnum::Forward)
        .forward_config(cfg.build())
        .build()
}

fn fixed_response(status: &str, content_type: &str, body: String) -> Action {
    Action::builder()
        .r#type(ActionTypeEnum::FixedResponse)
        .fixed_response_config(
            FixedResponseActionConfig::builder()
                .status_code(status)
                .content_type(content_type)
                .message_body(body)
                .build(),
        )
        .build()
}

/// The default action while no version is deployed: the baseline template's own (status and
/// body from `flotilla_baseline::contract`), so the listener answers the same before the first
/// deploy and after the last teardown.
fn no_version() -> Action {
    fixed_response(
        &flotilla_baseline::contract::NO_VERSION_STATUS.to_string(),
        "text/plain",
        NO_VERSION_MESSAGE.to_owned(),
    )
}

/// The JSON body a retired version's affinity answers with `status` (409 or 410).
pub fn retired_body(id: &DeploymentId, status: u16) -> String {
    serde_json::json!({
        "error": STALE_CLOSE_REASON,
        "retired": id.as_str(),
        "current": null,
        "message": retired_message(status),
    })
    .to_string()
}

/// A retired version's fixed response. An ALB fixed response cannot add headers, so
/// `[app] stale_header` does not apply here.
fn retired(id: &DeploymentId, status: u16) -> Action {
    fixed_response(
        &status.to_string(),
        "application/json",
        retired_body(id, status),
    )
}

#[async_trait]
impl Routing for AlbRouting {
    async fn install_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        let mut view = self.view().await?;
        let existing = self.rules_kinds(&view, id);
        let missing = RuleKind::BOTH
            .iter()
            .filter(|k| !existing.contains_key(k))
            .count() as u32;
        self.check_budget(&view, missing)?;
        let tg = self.ensure_target_group(id).await?;
        for kind in RuleKind::BOTH {
            match existing.get(&kind) {
                Some(rule) if rule.action == RuleAction::Forward(tg.clone()) => {}
                Some(rule) => self.modify_rule(rule, forward(&[(tg.clone(), 1)])).await?,
                None => {
                    self.create_rule(&mut view, kind, id, forward(&[(tg.clone(), 1)]))
                        .await?
                }
            }
        }
        Ok(())
    }

    async fn retire_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        let mut view = self.view().await?;
        self.refuse_if_default(&view, id, "retire affinity")?;
        let existing = self.rules_kinds(&view, id);
        let missing = RuleKind::BOTH
            .iter()
            .filter(|k| !existing.contains_key(k))
            .count() as u32;
        self.check_budget(&view, missing)?;
        let status = self.ctx.routing.stale_status;
        for kind in RuleKind::BOTH {
            match existing.get(&kind) {
                Some(rule) if rule.action == RuleAction::Retired => {}
                Some(rule) => self.modify_rule(rule, retired(id, status)).await?,
                None => {
                    self.create_rule(&mut view, kind, id, retired(id, status))
                        .await?
                }
            }
        }
        Ok(())
    }

    async fn remove_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        let view = self.view().await?;
        self.refuse_if_default(&view, id, "remove affinity")?;
        for rule in view.rules_of(id).values() {
            match self
                .ctx
                .clients
                .elb
                .delete_rule()
                .rule_arn(&rule.arn)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) => {
                    let err = port_error(
                        "delete listener rule",
                        &format!("{} rule of {id}", rule.kind.as_str()),
                        e,
                    );
                    if err.kind != ErrorKind::NotFound {
                        return Err(err);
                    }
                }
            }
        }
        let Some(tg) = self.ctx.find_tg(id).await? else {
            return Ok(());
        };
        self.delete_target_group(id, &tg).await?;
        self.ctx.forget_tg(id);
        Ok(())
    }

    async fn set_default(&self, targets: &[WeightedTarget]) -> Result<(), PortError> {
        let action = if targets.is_empty() {
            no_version()
        } else {
            validate_default(targets, |_| true).map_err(|e| {
                PortError::new(
                    ErrorKind::Invalid,
                    "set default action",
                    self.listener(),
                    e.to_string(),
                )
            })?;
            let mut arns = Vec::with_capacity(targets.len());
            for t in targets {
                let arn = self.ctx.find_tg(&t.id).await?.ok_or_else(|| {
                    PortError::new(
                        ErrorKind::NotFound,
                        "set default action",
                        t.id.as_str(),
                        "the version has no target group; install its affinity first",
                    )
                })?;
                arns.push((arn, t.weight));
            }
            forward(&arns)
        };
        self.ctx
            .clients
            .elb
            .modify_listener()
            .listener_arn(self.listener())
            .default_actions(action)
            .send()
            .await
            .map_err(|e| port_error("set default action", self.listener(), e))?;
        Ok(())
    }

    async fn snapshot(&self) -> Result<RoutingTable, PortError> {
        let view = self.view().await?;
        let retired_arns: Vec<String> = view
            .rules
            .iter()
            .filter(|r| r.action == RuleAction::Retired)
            .map(|r| r.arn.clone())
            .collect();
        let owned_retired = if retired_arns.is_empty() {
            BTreeSet::new()
        } else {
            self.owned_by_tag(&retired_arns).await?
        };
        // A version serves while any of its rules forwards; it is retired when all answer 410.
        let mut serving = BTreeSet::new();
        let mut retired_ids = BTreeSet::new();
        for rule in &view.rules {
            match &rule.action {
                RuleAction::Forward(_) => {
                    serving.insert(rule.id.clone());
                }
                RuleAction::Retired if owned_retired.contains(&rule.arn) => {
                    retired_ids.insert(rule.id.clone());
                }
                _ => {}
            }
        }
        let mut table = RoutingTable::new();
        for id in &retired_ids {
            if !serving.contains(id) {
                // Cannot fail: the default is still empty.
                let _ = table.mark_retired(id.clone());
            }
        }
        for id in serving {
            table.install_affinity(id);
        }
        let default: Vec<WeightedTarget> = view
            .default
            .iter()
            .filter_map(|(arn, weight)| {
                let id = self.ctx.id_of_target_group_name(tg_name_of_arn(arn)?)?;
                Some(WeightedTarget {
                    id,
                    weight: *weight,
                })
            })
            .collect();
        if !default.is_empty() {
            table.set_default(default).map_err(|e| {
                PortError::new(
                    ErrorKind::Conflict,
                    "read routing",
                    self.listener(),
                    format!(
                        "the listener's default action is inconsistent with its rules: {e}; \
                         run `flotilla rollback` or deploy again to set it"
                    ),
                )
            })?;
        }
        Ok(table)
    }
}

impl AlbRouting {
    fn rules_kinds(
        &self,
        view: &ListenerView,
        id: &DeploymentId,
    ) -> BTreeMap<RuleKind, AffinityRule> {
        view.rules_of(id)
            .into_iter()
            .map(|(k, r)| (k, r.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_body_is_the_documented_json() {
        let id = DeploymentId::new("20261125-190633-k3x9").expect("valid");
        let body: serde_json::Value = serde_json::from_str(&retired_body(&id, 410)).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "error": "version_retired",
                "retired": "20261125-190633-k3x9",
                "current": null,
                "message": "410 Gone: this version is no longer available",
            })
        );
        assert!(
            retired_body(&id, 410).len() <= 1024,
            "ALB fixed responses hold 1024 characters"
        );
        let conflict: serde_json::Value =
            serde_json::from_str(&retired_body(&id, 409)).expect("json");
        assert_eq!(
            conflict["message"],
            "409 Conflict: this version is no longer available"
        );
        let action = retired(&id, 409);
        let config = action.fixed_response_config().expect("fixed response");
        assert_eq!(config.status_code(), Some("409"));
    }

    #[test]
    fn priorities_fill_gaps_from_the_base() {
        let view = ListenerView {
            priorities: [1000, 1001, 1003].into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(view.next_free(1000), Some(1002));
        assert_eq!(view.next_free(1), Some(1));
        let full = ListenerView {
            priorities: (1..=MAX_PRIORITY).collect(),
            ..Default::default()
        };
        assert_eq!(full.next_free(1), None);
    }

    #[test]
    fn forward_targets_reads_both_shapes() {
        let weighted = forward(&[("arn:a".to_owned(), 80), ("arn:b".to_owned(), 20)]);
        assert_eq!(
            forward_targets(&weighted),
            vec![("arn:a".to_owned(), 80), ("arn:b".to_owned(), 20)]
        );
        let plain = Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .target_group_arn("arn:c")
            .build();
        assert_eq!(forward_targets(&plain), vec![("arn:c".to_owned(), 100)]);
        let fixed = fixed_response("503", "text/plain", "x".to_owned());
        assert!(forward_targets(&fixed).is_empty());
    }

    #[test]
    fn no_version_answers_like_the_baseline_template() {
        let action = no_version();
        let config = action.fixed_response_config().expect("fixed response");
        assert_eq!(config.status_code(), Some("503"));
        assert_eq!(config.message_body(), Some("no version deployed yet"));
        assert_eq!(
            config.message_body(),
            Some(flotilla_baseline::contract::NO_VERSION_MESSAGE)
        );
    }
}
