//! The optional web application firewall in front of the load balancer: an AWS WAF web ACL with a
//! per-IP rate limit and AWS's managed common and known-bad-inputs rule groups, associated with
//! the ALB. Off unless [`BaselineOptions::waf`] is set.

use serde_json::{Value, json};

use super::ids;
use crate::cfn::{Resource, Template, get_att, reference};
use crate::names;
use crate::options::BaselineOptions;

/// The AWS managed rule groups the web ACL runs, in priority order after the rate limit: the
/// common rule set (OWASP-style protections) and known bad inputs (Log4j and other exploit
/// patterns).
pub const MANAGED_RULE_GROUPS: [&str; 2] = [
    "AWSManagedRulesCommonRuleSet",
    "AWSManagedRulesKnownBadInputsRuleSet",
];

/// The metric name of a rule (letters, digits, `-` and `_` only).
fn visibility(metric: &str) -> Value {
    json!({
        "SampledRequestsEnabled": true,
        "CloudWatchMetricsEnabled": true,
        "MetricName": metric,
    })
}

pub(super) fn add(t: &mut Template, options: &BaselineOptions) {
    let Some(waf) = &options.waf else {
        return;
    };
    let name = names::web_acl_name(&options.name);
    let mut rules = vec![json!({
        "Name": "rate-limit-per-ip",
        "Priority": 0,
        "Action": { "Block": {} },
        "Statement": {
            "RateBasedStatement": {
                "Limit": waf.rate_limit,
                "AggregateKeyType": "IP",
            },
        },
        "VisibilityConfig": visibility(&format!("{name}-rate-limit")),
    })];
    for (i, group) in MANAGED_RULE_GROUPS.iter().enumerate() {
        rules.push(json!({
            "Name": group,
            "Priority": i + 1,
            // The managed group's own actions (block) apply; `None` overrides nothing.
            "OverrideAction": { "None": {} },
            "Statement": {
                "ManagedRuleGroupStatement": { "VendorName": "AWS", "Name": group },
            },
            "VisibilityConfig": visibility(&format!("{name}-{group}")),
        }));
    }
    t.add(
        ids::WEB_ACL,
        Resource::new(
            "AWS::WAFv2::WebACL",
            json!({
                "Name": name,
                "Description": format!(
                    "flotilla {}: per-IP rate limit and AWS managed rules in front of the load balancer",
                    options.name
                ),
                "Scope": "REGIONAL",
                "DefaultAction": { "Allow": {} },
                "Rules": rules,
                "VisibilityConfig": visibility(&name),
            }),
        ),
    );
    t.add(
        ids::WEB_ACL_ASSOCIATION,
        Resource::new(
            "AWS::WAFv2::WebACLAssociation",
            json!({
                "ResourceArn": reference(ids::LOAD_BALANCER),
                "WebACLArn": get_att(ids::WEB_ACL, "Arn"),
            }),
        ),
    );
}
