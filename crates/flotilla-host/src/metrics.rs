//! `GET /metrics` on the admin listener: the daemon's numbers in the Prometheus text format
//! (version 0.0.4), per app and version. [`render`] is pure; the daemon hands it the status
//! report, the router's counters summed per version, and what the reaper has done.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `flotilla_version_info` | gauge (1) | `app`, `version`, `state` |
//! | `flotilla_version_weight` | gauge, share of fresh traffic in percent | `app`, `version` |
//! | `flotilla_instances` / `flotilla_instances_healthy` | gauge | `app`, `version` |
//! | `flotilla_sessions` | gauge, open WebSockets and event streams | `app`, `version` |
//! | `flotilla_requests_in_flight` | gauge | `app`, `version` |
//! | `flotilla_responses_total` | counter | `app`, `version`, `class` (`1xx` … `5xx`) |
//! | `flotilla_upstream_errors_total` | counter | `app`, `version` |
//! | `flotilla_response_head_seconds` | histogram, routing to response head | `app`, `version` |
//! | `flotilla_reaper_passes_total` | counter | `app` |
//! | `flotilla_reaper_actions_total` | counter | `app`, `action` |
//! | `flotilla_reaper_failed_actions_total` | counter | `app` |
//! | `flotilla_reaper_waiting_versions` | gauge, draining versions kept at the last pass | `app` |
//!
//! Counters of an instance start again from zero when the instance is replaced, which Prometheus's
//! `rate()` treats as a counter reset.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use flotilla_core::DeploymentId;
use flotilla_engine::workflows::{ReapReport, StatusReport};
use flotilla_proxy::{LATENCY_BOUNDS_US, StatsSnapshot};

/// One version's router counters as a canary's judgement reads them: responses, 5xx (the
/// router's own 502 and 504 included) and the time-to-head histogram with its bounds.
pub fn canary_counters(traffic: &StatsSnapshot) -> flotilla_core::canary::Counters {
    let bounds = LATENCY_BOUNDS_US.iter().copied().chain([u64::MAX]);
    flotilla_core::canary::Counters {
        responses: traffic.responses_by_class.iter().sum(),
        errors: traffic.responses_by_class[4],
        latency: bounds.zip(traffic.latency_buckets).collect(),
    }
}

/// What the daemon's reaper has done since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReaperTotals {
    /// Passes that ran (not skipped for the lock).
    pub passes: u64,
    /// Visible actions taken, by kind ([`flotilla_core::reaper::ReapAction::name`]).
    pub actions: BTreeMap<&'static str, u64>,
    /// Actions that failed (retried by a later pass).
    pub failed: u64,
    /// Draining versions the last pass left draining.
    pub waiting: u64,
}

/// [`ReaperTotals`] shared between the reaper loop, which adds each pass, and the metrics page.
#[derive(Debug, Default)]
pub struct ReaperMeter(Mutex<ReaperTotals>);

impl ReaperMeter {
    /// Adds one pass's report.
    pub fn record(&self, report: &ReapReport) {
        if report.skipped_locked.is_some() {
            return;
        }
        let mut totals = self.0.lock().unwrap_or_else(|p| p.into_inner());
        totals.passes += 1;
        for action in report.actions.iter().filter(|a| a.is_visible()) {
            *totals.actions.entry(action.name()).or_default() += 1;
        }
        totals.failed += report.failed.len() as u64;
        totals.waiting = report.waiting.len() as u64;
    }

    /// A copy of the totals.
    pub fn totals(&self) -> ReaperTotals {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A label value with `\`, `"` and newlines escaped as the text format asks.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole `/metrics` page. `traffic` holds the router's counters summed over each version's
/// instances; a version without an entry has served nothing since the daemon started.
pub fn render(
    report: &StatusReport,
    traffic: &BTreeMap<DeploymentId, StatsSnapshot>,
    reaper: &ReaperTotals,
) -> String {
    let app = label(report.name.as_str());
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &mut dyn FnMut(&mut String)| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        samples(&mut out);
    };
    let versions = &report.versions;
    let stats = |id: &DeploymentId| traffic.get(id).copied().unwrap_or_default();

    family(
        "flotilla_version_info",
        "gauge",
        "A recorded version and its state.",
        &mut |out| {
            for v in versions {
                let r = &v.record.version;
                let _ = writeln!(
                    out,
                    "flotilla_version_info{{app=\"{app}\",version=\"{}\",state=\"{}\"}} 1",
                    label(r.id.as_str()),
                    r.state
                );
            }
        },
    );
    let per_version = |out: &mut String, name: &str, value: &dyn Fn(usize) -> u64| {
        for (i, v) in versions.iter().enumerate() {
            let id = label(v.record.version.id.as_str());
            let _ = writeln!(out, "{name}{{app=\"{app}\",version=\"{id}\"}} {}", value(i));
        }
    };
    family(
        "flotilla_version_weight",
        "gauge",
        "The version's share of fresh traffic, in percent.",
        &mut |out| {
            per_version(out, "flotilla_version_weight", &|i| {
                u64::from(versions[i].weight)
            })
        },
    );
    family(
        "flotilla_instances",
        "gauge",
        "Instances of the version that run.",
        &mut |out| {
            per_version(out, "flotilla_instances", &|i| {
                versions[i]
                    .compute
                    .as_ref()
                    .map_or(0, |c| u64::from(c.running))
            })
        },
    );
    family(
        "flotilla_instances_healthy",
        "gauge",
        "Instances of the version that pass their health check.",
        &mut |out| {
            per_version(out, "flotilla_instances_healthy", &|i| {
                versions[i]
                    .compute
                    .as_ref()
                    .map_or(0, |c| u64::from(c.healthy))
            })
        },
    );
    family(
        "flotilla_sessions",
        "gauge",
        "Open WebSockets and event streams through the router.",
        &mut |out| {
            per_version(out, "flotilla_sessions", &|i| {
                stats(&versions[i].record.version.id).sessions
            })
        },
    );
    family(
        "flotilla_requests_in_flight",
        "gauge",
        "Requests being served.",
        &mut |out| {
            per_version(out, "flotilla_requests_in_flight", &|i| {
                stats(&versions[i].record.version.id).in_flight
            })
        },
    );
    family(
        "flotilla_responses_total",
        "counter",
        "Responses by status class (the router's own 502 and 504 included).",
        &mut |out| {
            for v in versions {
                let id = label(v.record.version.id.as_str());
                let counts = stats(&v.record.version.id).responses_by_class;
                for (i, count) in counts.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "flotilla_responses_total{{app=\"{app}\",version=\"{id}\",class=\"{}xx\"}} {count}",
                        i + 1
                    );
                }
            }
        },
    );
    family(
        "flotilla_upstream_errors_total",
        "counter",
        "Requests whose instance could not be reached or did not answer in time.",
        &mut |out| {
            per_version(out, "flotilla_upstream_errors_total", &|i| {
                stats(&versions[i].record.version.id).upstream_errors_total
            })
        },
    );
    family(
        "flotilla_response_head_seconds",
        "histogram",
        "Time from routing a request to its response head.",
        &mut |out| {
            for v in versions {
                let id = label(v.record.version.id.as_str());
                let s = stats(&v.record.version.id);
                let mut cumulative = 0;
                for (bucket, bound) in s.latency_buckets.iter().zip(LATENCY_BOUNDS_US) {
                    cumulative += bucket;
                    let _ = writeln!(
                        out,
                        "flotilla_response_head_seconds_bucket{{app=\"{app}\",version=\"{id}\",le=\"{}\"}} {cumulative}",
                        seconds(bound)
                    );
                }
                let count: u64 = s.latency_buckets.iter().sum();
                let _ = writeln!(
                    out,
                    "flotilla_response_head_seconds_bucket{{app=\"{app}\",version=\"{id}\",le=\"+Inf\"}} {count}"
                );
                let _ = writeln!(
                    out,
                    "flotilla_response_head_seconds_sum{{app=\"{app}\",version=\"{id}\"}} {}",
                    seconds(s.latency_sum_us)
                );
                let _ = writeln!(
                    out,
                    "flotilla_response_head_seconds_count{{app=\"{app}\",version=\"{id}\"}} {count}"
                );
            }
        },
    );
    family(
        "flotilla_reaper_passes_total",
        "counter",
        "Reaper passes since the daemon started.",
        &mut |out| {
            let _ = writeln!(
                out,
                "flotilla_reaper_passes_total{{app=\"{app}\"}} {}",
                reaper.passes
            );
        },
    );
    family(
        "flotilla_reaper_actions_total",
        "counter",
        "What the reaper did, by action.",
        &mut |out| {
            for (action, count) in &reaper.actions {
                let _ = writeln!(
                    out,
                    "flotilla_reaper_actions_total{{app=\"{app}\",action=\"{action}\"}} {count}"
                );
            }
        },
    );
    family(
        "flotilla_reaper_failed_actions_total",
        "counter",
        "Reaper actions that failed (a later pass retries them).",
        &mut |out| {
            let _ = writeln!(
                out,
                "flotilla_reaper_failed_actions_total{{app=\"{app}\"}} {}",
                reaper.failed
            );
        },
    );
    family(
        "flotilla_reaper_waiting_versions",
        "gauge",
        "Draining versions the last reaper pass kept, waiting for their sessions or age.",
        &mut |out| {
            let _ = writeln!(
                out,
                "flotilla_reaper_waiting_versions{{app=\"{app}\"}} {}",
                reaper.waiting
            );
        },
    );
    out
}

/// Microseconds as seconds, without trailing zeros (`0.005`, `2.5`, `10`).
fn seconds(micros: u64) -> String {
    let text = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_written_without_trailing_zeros() {
        assert_eq!(seconds(5_000), "0.005");
        assert_eq!(seconds(2_500_000), "2.5");
        assert_eq!(seconds(10_000_000), "10");
        assert_eq!(seconds(0), "0");
    }

    use flotilla_core::DeploymentName;
    use flotilla_core::lifecycle::{Version, VersionState};
    use flotilla_core::reaper::{ReapAction, RetireReason};
    use flotilla_core::routing::RoutingTable;
    use flotilla_engine::ports::{ComputeStatus, VersionRecord};
    use flotilla_engine::workflows::VersionStatus;

    fn version(id: &str, state: VersionState, weight: u16) -> VersionStatus {
        let id = DeploymentId::new(id).expect("valid id");
        VersionStatus {
            record: VersionRecord {
                version: Version {
                    id: id.clone(),
                    state,
                    created_at: id.created_at(),
                    state_changed_at: id.created_at(),
                },
                image: None,
                instances: 2,
                ready_passes: 0,
                canary: None,
            },
            compute: Some(ComputeStatus {
                desired: 2,
                running: 2,
                healthy: 1,
                instances: vec![],
                sessions: Some(3),
                stopped: vec![],
                problems: vec![],
                client_blocked_by_csp: 0,
            }),
            weight,
            affinity: None,
            readiness: BTreeMap::new(),
        }
    }

    #[test]
    fn every_version_has_its_traffic_instances_and_latency_histogram() {
        let active = "20261207-120000-aaaa";
        let draining = "20261206-120000-bbbb";
        let report = StatusReport {
            name: DeploymentName::new("shop").expect("valid"),
            versions: vec![
                version(draining, VersionState::Draining, 0),
                version(active, VersionState::Active, 100),
            ],
            routing: RoutingTable::new(),
            rules_used: 0,
            rules_limit: 0,
            lock: None,
            orphans: vec![],
        };
        let mut traffic = StatsSnapshot {
            sessions: 3,
            responses_by_class: [0, 7, 0, 1, 2],
            ..StatsSnapshot::default()
        };
        traffic.latency_buckets[0] = 6; // <= 5 ms
        traffic.latency_buckets[4] = 3; // <= 100 ms
        traffic.latency_buckets[11] = 1; // > 10 s
        traffic.latency_sum_us = 12_345_678;
        let traffic = BTreeMap::from([(DeploymentId::new(active).expect("valid"), traffic)]);
        let meter = ReaperMeter::default();
        let id = DeploymentId::new(draining).expect("valid");
        meter.record(&ReapReport {
            actions: vec![
                ReapAction::RecordReadyPasses {
                    id: id.clone(),
                    passes: 1,
                },
                ReapAction::Retire {
                    id,
                    reason: RetireReason::SessionsEnded,
                },
            ],
            ..ReapReport::default()
        });
        let page = render(&report, &traffic, &meter.totals());
        let has = |line: &str| assert!(page.lines().any(|l| l == line), "{line}\n---\n{page}");
        has(&format!(
            "flotilla_version_info{{app=\"shop\",version=\"{active}\",state=\"active\"}} 1"
        ));
        has(&format!(
            "flotilla_version_info{{app=\"shop\",version=\"{draining}\",state=\"draining\"}} 1"
        ));
        has(&format!(
            "flotilla_version_weight{{app=\"shop\",version=\"{active}\"}} 100"
        ));
        has(&format!(
            "flotilla_instances_healthy{{app=\"shop\",version=\"{active}\"}} 1"
        ));
        has(&format!(
            "flotilla_sessions{{app=\"shop\",version=\"{active}\"}} 3"
        ));
        has(&format!(
            "flotilla_sessions{{app=\"shop\",version=\"{draining}\"}} 0"
        ));
        has(&format!(
            "flotilla_responses_total{{app=\"shop\",version=\"{active}\",class=\"5xx\"}} 2"
        ));
        // Buckets are cumulative and end with +Inf = count.
        has(&format!(
            "flotilla_response_head_seconds_bucket{{app=\"shop\",version=\"{active}\",le=\"0.005\"}} 6"
        ));
        has(&format!(
            "flotilla_response_head_seconds_bucket{{app=\"shop\",version=\"{active}\",le=\"0.1\"}} 9"
        ));
        has(&format!(
            "flotilla_response_head_seconds_bucket{{app=\"shop\",version=\"{active}\",le=\"10\"}} 9"
        ));
        has(&format!(
            "flotilla_response_head_seconds_bucket{{app=\"shop\",version=\"{active}\",le=\"+Inf\"}} 10"
        ));
        has(&format!(
            "flotilla_response_head_seconds_count{{app=\"shop\",version=\"{active}\"}} 10"
        ));
        has(&format!(
            "flotilla_response_head_seconds_sum{{app=\"shop\",version=\"{active}\"}} 12.345678"
        ));
        has("flotilla_reaper_passes_total{app=\"shop\"} 1");
        has("flotilla_reaper_actions_total{app=\"shop\",action=\"retire\"} 1");
        assert!(
            !page.contains("record_ready_passes"),
            "bookkeeping is not an action"
        );
        // Every sample belongs to a family declared with HELP and TYPE before it.
        let mut declared = std::collections::BTreeSet::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().expect("name").to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("name");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|base| declared.contains(*base))
                    .unwrap_or(name);
                assert!(declared.contains(family), "undeclared sample: {line}");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
