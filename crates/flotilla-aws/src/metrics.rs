//! A canary's window on AWS: each version's target group metrics from CloudWatch
//! (`AWS/ApplicationELB`: `RequestCount`, `HTTPCode_Target_5XX_Count`, and `TargetResponseTime`'s
//! p99, by `LoadBalancer` and `TargetGroup`), read with one `GetMetricData` call per judged window.
//!
//! CloudWatch keeps no histogram a window's p99 could be computed from, only statistics per
//! period, so the window is one period: from the window's start rounded down to the minute, the
//! whole window rounded up to a multiple of 60 s (the ALB publishes per minute). CloudWatch then
//! computes the p99 over every request of the window, which no aggregate of per-minute p99s
//! would give. The decisions here ([`query_window`], [`stats_of`]) are pure; [`window`] calls.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricDataResult, MetricStat};
use aws_smithy_types::DateTime;
use flotilla_core::canary::WindowStats;
use flotilla_core::{DeploymentId, Timestamp};
use flotilla_engine::ports::PortError;

use crate::ctx::Ctx;
use crate::error::port_error;

/// The namespace of the ALB's metrics.
pub const NAMESPACE: &str = "AWS/ApplicationELB";
/// Requests the target group's targets answered.
pub const REQUESTS: &str = "RequestCount";
/// Of which with a 5xx status from the target.
pub const ERRORS: &str = "HTTPCode_Target_5XX_Count";
/// Seconds from the request leaving the ALB to the response head coming back.
pub const LATENCY: &str = "TargetResponseTime";
/// The statistic of `TargetResponseTime` judged by default.
pub const DEFAULT_LATENCY_STATISTIC: &str = "p99";

/// The granularity of the ALB's metrics, and so of a window.
const MINUTE: u64 = 60;

/// The period a window from `from` to `to` is read as: `(start, seconds)`, the start rounded down
/// to the minute and the length rounded up to whole minutes, at least one, so that CloudWatch
/// answers with one data point per metric over the whole window.
pub fn query_window(from: Timestamp, to: Timestamp) -> (u64, u64) {
    let start = from.as_millis() / 1000 / MINUTE * MINUTE;
    let end = to.as_millis().div_ceil(1000).max(start + 1);
    let seconds = (end - start).div_ceil(MINUTE).max(1) * MINUTE;
    (start, seconds)
}

/// The `LoadBalancer` dimension (`app/<name>/<id>`) from the listener's ARN
/// (`arn:...:listener/app/<name>/<id>/<listener id>`).
pub fn load_balancer_dimension(listener_arn: &str) -> Option<String> {
    let rest = listener_arn.split_once(":listener/")?.1;
    let (lb, _listener) = rest.rsplit_once('/')?;
    Some(lb.to_owned())
}

/// The `TargetGroup` dimension (`targetgroup/<name>/<id>`) from the target group's ARN.
pub fn target_group_dimension(tg_arn: &str) -> Option<String> {
    let at = tg_arn.find(":targetgroup/")?;
    Some(tg_arn[at + 1..].to_owned())
}

/// One version's figures from the values CloudWatch returned for its three queries. No value (no
/// request in the window) is no requests; several values (a window split in more than one
/// period) add up, and the latency is the highest of them, the cautious side.
pub fn stats_of(requests: &[f64], errors: &[f64], latency: &[f64]) -> WindowStats {
    let count = |values: &[f64]| {
        values
            .iter()
            .filter(|v| v.is_finite() && **v > 0.0)
            .sum::<f64>()
            .round() as u64
    };
    let requests = count(requests);
    let p99 = latency
        .iter()
        .copied()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .reduce(f64::max)
        .filter(|_| requests > 0)
        .map(Duration::from_secs_f64);
    WindowStats {
        requests,
        errors: count(errors).min(requests),
        p99,
    }
}

/// The three queries of version number `n`, ids `r<n>`, `e<n>`, `l<n>`.
fn queries(
    n: usize,
    lb: &str,
    tg: &str,
    period: i32,
    latency_statistic: &str,
) -> [MetricDataQuery; 3] {
    let query = |prefix: &str, metric: &str, stat: &str| {
        let metric = Metric::builder()
            .namespace(NAMESPACE)
            .metric_name(metric)
            .dimensions(Dimension::builder().name("LoadBalancer").value(lb).build())
            .dimensions(Dimension::builder().name("TargetGroup").value(tg).build())
            .build();
        MetricDataQuery::builder()
            .id(format!("{prefix}{n}"))
            .metric_stat(
                MetricStat::builder()
                    .metric(metric)
                    .period(period)
                    .stat(stat)
                    .build(),
            )
            .return_data(true)
            .build()
    };
    [
        query("r", REQUESTS, "Sum"),
        query("e", ERRORS, "Sum"),
        query("l", LATENCY, latency_statistic),
    ]
}

/// What each of `ids` did from `from` to `to`, from its target group's metrics. A version
/// without a target group, or without data in the window, served nothing.
pub(crate) async fn window(
    ctx: &Ctx,
    ids: &[DeploymentId],
    from: Timestamp,
    to: Timestamp,
) -> Result<BTreeMap<DeploymentId, WindowStats>, PortError> {
    let listener = &ctx.baseline.listener_arn;
    let Some(lb) = load_balancer_dimension(listener) else {
        return Err(PortError::new(
            flotilla_engine::ports::ErrorKind::Invalid,
            "read target group metrics",
            listener,
            "the listener ARN does not name an application load balancer",
        ));
    };
    let (start, seconds) = query_window(from, to);
    let period = i32::try_from(seconds).unwrap_or(i32::MAX);
    let mut measured = Vec::new();
    let mut request = ctx
        .clients
        .cloudwatch
        .get_metric_data()
        .start_time(DateTime::from_secs(
            i64::try_from(start).unwrap_or(i64::MAX),
        ))
        .end_time(DateTime::from_secs(
            i64::try_from(start + seconds).unwrap_or(i64::MAX),
        ));
    for id in ids {
        let Some(tg) = ctx
            .find_tg(id)
            .await?
            .as_deref()
            .and_then(target_group_dimension)
        else {
            continue;
        };
        let n = measured.len();
        for q in queries(n, &lb, &tg, period, &ctx.routing.latency_statistic) {
            request = request.metric_data_queries(q);
        }
        measured.push(id.clone());
    }
    let mut out: BTreeMap<DeploymentId, WindowStats> = ids
        .iter()
        .map(|id| (id.clone(), WindowStats::default()))
        .collect();
    if measured.is_empty() {
        return Ok(out);
    }
    let mut results: Vec<MetricDataResult> = Vec::new();
    let mut pages = request.into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| port_error("read target group metrics", &lb, e))?;
        results.extend(page.metric_data_results().iter().cloned());
    }
    let values = |key: String| -> Vec<f64> {
        results
            .iter()
            .filter(|r| r.id() == Some(key.as_str()))
            .flat_map(|r| r.values().iter().copied())
            .collect()
    };
    for (n, id) in measured.iter().enumerate() {
        out.insert(
            id.clone(),
            stats_of(
                &values(format!("r{n}")),
                &values(format!("e{n}")),
                &values(format!("l{n}")),
            ),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_one_period_of_whole_minutes() {
        fn check(from: u64, to: u64, want: (u64, u64)) {
            let got = query_window(Timestamp::from_millis(from), Timestamp::from_millis(to));
            assert_eq!(got, want, "{from}..{to}");
        }
        // 12:00:30 to 12:05:10: from 12:00 over six minutes, so the last one is whole.
        check(43_230_000, 43_510_000, (43_200, 360));
        check(43_200_000, 43_500_000, (43_200, 300));
        // A window shorter than a minute, or empty, is still one minute.
        check(43_200_000, 43_200_000, (43_200, 60));
        check(43_210_000, 43_215_000, (43_200, 60));
    }

    #[test]
    fn dimensions_from_arns() {
        assert_eq!(
            load_balancer_dimension(
                "arn:aws:elasticloadbalancing:us-east-1:123:listener/app/flotilla-prod/50dc6c495c0c9188/f2f7dc8efc522ab2"
            )
            .as_deref(),
            Some("app/flotilla-prod/50dc6c495c0c9188")
        );
        assert_eq!(load_balancer_dimension("arn:aws:ecs:x"), None);
        assert_eq!(
            target_group_dimension(
                "arn:aws:elasticloadbalancing:us-east-1:123:targetgroup/prod-20261125-190633-k3x9/56619de8"
            )
            .as_deref(),
            Some("targetgroup/prod-20261125-190633-k3x9/56619de8")
        );
        assert_eq!(target_group_dimension("arn:aws:ecs:x"), None);
    }

    #[test]
    fn figures_from_values() {
        // No data is no requests: the judgement's minimum-requests rule decides.
        assert_eq!(stats_of(&[], &[], &[]), WindowStats::default());
        let w = stats_of(&[120.0, 80.0], &[6.0], &[0.25, 0.4]);
        assert_eq!((w.requests, w.errors), (200, 6));
        assert_eq!(w.p99, Some(Duration::from_millis(400)));
        // Errors never exceed requests; a latency without requests is not judged.
        assert_eq!(stats_of(&[3.0], &[5.0], &[]).errors, 3);
        assert_eq!(stats_of(&[], &[], &[0.3]).p99, None);
    }
}
