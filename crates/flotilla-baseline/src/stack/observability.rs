//! What operators look at: a CloudWatch dashboard with one line per version (versions come and go,
//! so the widgets use metric `SEARCH` expressions instead of fixed target groups), alarms for the
//! failures a deploy tool must surface, and an optional SNS topic that hears about them.

use serde_json::{Value, json};

use super::ids;
use crate::cfn::{Resource, Template, get_att, json_text, reference, sub};
use crate::names;
use crate::options::{BaselineOptions, Notifications};

/// The alarm topic for `options`: the stack's own (email) or the user's, or `None`.
pub(super) fn topic_arn(options: &BaselineOptions) -> Option<Value> {
    match &options.alarms.notifications {
        Notifications::None => None,
        Notifications::Email(_) => Some(reference(ids::ALARM_TOPIC)),
        Notifications::Topic(arn) => Some(json!(arn)),
    }
}

/// The dashboard's `LoadBalancer` dimension, as a `Fn::Sub` variable.
const LB_DIMENSION: &str = "${LoadBalancer.LoadBalancerFullName}";

pub(super) fn add(t: &mut Template, options: &BaselineOptions) {
    let name = &options.name;

    if let Notifications::Email(address) = &options.alarms.notifications {
        t.add(
            ids::ALARM_TOPIC,
            Resource::new(
                "AWS::SNS::Topic",
                json!({
                    "TopicName": names::alarm_topic_name(name),
                    "DisplayName": format!("flotilla {name} alarms"),
                }),
            )
            .skip_checkov(
                "CKV_AWS_26",
                "CloudWatch alarms cannot publish to a topic encrypted with the AWS-managed SNS \
                 key, and alarm notifications carry no secrets; a customer key would add cost and \
                 a key policy.",
            ),
        );
        t.add(
            ids::ALARM_EMAIL_SUBSCRIPTION,
            Resource::new(
                "AWS::SNS::Subscription",
                json!({
                    "TopicArn": reference(ids::ALARM_TOPIC),
                    "Protocol": "email",
                    "Endpoint": address,
                }),
            ),
        );
    }
    let actions = match topic_arn(options) {
        Some(topic) => json!([topic]),
        None => json!([]),
    };
    let lb_dimension = json!([{
        "Name": "LoadBalancer",
        "Value": get_att(ids::LOAD_BALANCER, "LoadBalancerFullName"),
    }]);
    let lb_metric = |id: &str, metric: &str| {
        json!({
            "Id": id,
            "ReturnData": false,
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/ApplicationELB",
                    "MetricName": metric,
                    "Dimensions": lb_dimension.clone(),
                },
                "Period": 60,
                "Stat": "Sum",
            },
        })
    };

    let percent = options.alarms.five_xx_rate_percent;
    t.add(
        ids::FIVE_XX_ALARM,
        Resource::new(
            "AWS::CloudWatch::Alarm",
            json!({
                "AlarmName": names::alarm_name(name, "5xx-rate"),
                "AlarmDescription": format!(
                    "More than {percent}% of requests answered 5xx (by the load balancer or the \
                     versions) in 3 of the last 5 minutes. Before the first deploy every request \
                     gets 503 \"no version deployed yet\"."
                ),
                "ComparisonOperator": "GreaterThanThreshold",
                "Threshold": percent,
                "EvaluationPeriods": 5,
                "DatapointsToAlarm": 3,
                "TreatMissingData": "notBreaching",
                "Metrics": [
                    lb_metric("elb5xx", "HTTPCode_ELB_5XX_Count"),
                    lb_metric("target5xx", "HTTPCode_Target_5XX_Count"),
                    lb_metric("requests", "RequestCount"),
                    {
                        "Id": "rate",
                        "Label": "5xx share of requests (%)",
                        "Expression": "IF(FILL(requests, 0) > 0, 100 * (FILL(elb5xx, 0) + FILL(target5xx, 0)) / FILL(requests, 1), 0)",
                        "ReturnData": true,
                    },
                ],
                "AlarmActions": actions.clone(),
                "OKActions": actions.clone(),
            }),
        ),
    );
    t.add(
        ids::UNHEALTHY_ALARM,
        Resource::new(
            "AWS::CloudWatch::Alarm",
            json!({
                "AlarmName": names::alarm_name(name, "unhealthy-targets"),
                "AlarmDescription": "A version has had unhealthy targets for 5 minutes: a failing \
                    deploy, or tasks failing their health checks. `flotilla status` shows which.",
                "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                "Threshold": 1,
                "EvaluationPeriods": 5,
                "DatapointsToAlarm": 5,
                "TreatMissingData": "notBreaching",
                "Metrics": [{
                    "Id": "unhealthy",
                    "Label": "Most unhealthy targets in one version",
                    // Metrics Insights covers every version's target group of this load balancer,
                    // including those created after the alarm.
                    "Expression": sub(format!(
                        "SELECT MAX(UnHealthyHostCount) FROM SCHEMA(\"AWS/ApplicationELB\", LoadBalancer, TargetGroup) WHERE LoadBalancer = '{LB_DIMENSION}'"
                    )),
                    "Period": 60,
                    "ReturnData": true,
                }],
                "AlarmActions": actions.clone(),
                "OKActions": actions.clone(),
            }),
        ),
    );
    t.add(
        ids::NO_TASKS_ALARM,
        Resource::new(
            "AWS::CloudWatch::Alarm",
            json!({
                "AlarmName": names::alarm_name(name, "no-running-tasks"),
                "AlarmDescription": "No task has run in the cluster for 3 minutes: nothing serves \
                    the application. Expected until the first deploy.",
                "Namespace": "ECS/ContainerInsights",
                "MetricName": "TaskCount",
                "Dimensions": [{ "Name": "ClusterName", "Value": reference(ids::CLUSTER) }],
                "Statistic": "Maximum",
                "Period": 60,
                "EvaluationPeriods": 3,
                "Threshold": 1,
                "ComparisonOperator": "LessThanThreshold",
                // Container Insights reports nothing for a cluster without tasks.
                "TreatMissingData": "breaching",
                "AlarmActions": actions.clone(),
                "OKActions": actions.clone(),
            }),
        ),
    );
    let interval = options.reaper.interval.as_secs();
    t.add(
        ids::REAPER_ERRORS_ALARM,
        Resource::new(
            "AWS::CloudWatch::Alarm",
            json!({
                "AlarmName": names::alarm_name(name, "reaper-errors"),
                "AlarmDescription": "The reaper failed 3 passes in a row: drained versions are not \
                    being retired. Its log group says why; `flotilla reap` runs a pass by hand.",
                "Namespace": "AWS/Lambda",
                "MetricName": "Errors",
                "Dimensions": [{ "Name": "FunctionName", "Value": reference(ids::REAPER_FUNCTION) }],
                "Statistic": "Sum",
                "Period": interval,
                "EvaluationPeriods": 3,
                "DatapointsToAlarm": 3,
                "Threshold": 1,
                "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                "TreatMissingData": "notBreaching",
                "AlarmActions": actions.clone(),
                "OKActions": actions,
            }),
        )
        .when(ids::HAS_REAPER_CODE),
    );

    t.add(
        ids::DASHBOARD,
        Resource::new(
            "AWS::CloudWatch::Dashboard",
            json!({
                "DashboardName": names::dashboard_name(name),
                "DashboardBody": sub(json_text(&dashboard_body(options))),
            }),
        ),
    );
}

/// A metric-search expression entry for a dashboard widget.
fn search(id: &str, query: String, stat: &str, label: &str) -> Value {
    json!([{
        "id": id,
        "expression": format!("SEARCH('{query}', '{stat}', 60)"),
        "label": label,
    }])
}

/// A dashboard widget of time series at grid position (`x`, `y`).
fn widget(x: u32, y: u32, title: &str, metrics: Vec<Value>, extra: Value) -> Value {
    let mut properties = json!({
        "title": title,
        "view": "timeSeries",
        "region": "${AWS::Region}",
        "period": 60,
        "metrics": metrics,
    });
    if let (Some(p), Some(e)) = (properties.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    json!({ "type": "metric", "x": x, "y": y, "width": 12, "height": 6, "properties": properties })
}

fn dashboard_body(options: &BaselineOptions) -> Value {
    let name = options.name.as_str();
    let cluster = names::cluster_name(&options.name);
    let function = names::reaper_function_name(&options.name);
    let per_tg = |metric: &str| {
        format!(
            "{{AWS/ApplicationELB,LoadBalancer,TargetGroup}} MetricName=\"{metric}\" LoadBalancer=\"{LB_DIMENSION}\""
        )
    };
    let per_service = |namespace: &str, metric: &str| {
        format!(
            "{{{namespace},ClusterName,ServiceName}} MetricName=\"{metric}\" ClusterName=\"{cluster}\""
        )
    };
    let alarm_arns: Vec<Value> = ["5xx-rate", "unhealthy-targets", "no-running-tasks"]
        .iter()
        .map(|what| {
            json!(format!(
                "arn:${{AWS::Partition}}:cloudwatch:${{AWS::Region}}:${{AWS::AccountId}}:alarm:{}",
                names::alarm_name(&options.name, what)
            ))
        })
        .collect();
    let widgets = vec![
        json!({
            "type": "alarm", "x": 0, "y": 0, "width": 24, "height": 2,
            "properties": { "title": format!("flotilla {name}: alarms"), "alarms": alarm_arns },
        }),
        widget(
            0,
            2,
            "Requests per version",
            vec![search("requests", per_tg("RequestCount"), "Sum", "")],
            json!({ "stat": "Sum" }),
        ),
        widget(
            12,
            2,
            "5xx responses",
            vec![
                json!(["AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "LoadBalancer", LB_DIMENSION,
                       { "label": "load balancer (includes 503 no version deployed yet)", "stat": "Sum" }]),
                search("target5xx", per_tg("HTTPCode_Target_5XX_Count"), "Sum", ""),
            ],
            json!({ "stat": "Sum" }),
        ),
        widget(
            0,
            8,
            "Target response time per version (p99, seconds)",
            vec![search("latency", per_tg("TargetResponseTime"), "p99", "")],
            json!({ "stat": "p99" }),
        ),
        widget(
            12,
            8,
            "Healthy and unhealthy targets per version",
            vec![
                search("healthy", per_tg("HealthyHostCount"), "Minimum", "healthy"),
                search(
                    "unhealthy",
                    per_tg("UnHealthyHostCount"),
                    "Maximum",
                    "unhealthy",
                ),
            ],
            json!({}),
        ),
        widget(
            0,
            14,
            "Running tasks per version",
            vec![search(
                "running",
                per_service("ECS/ContainerInsights", "RunningTaskCount"),
                "Average",
                "",
            )],
            json!({}),
        ),
        widget(
            12,
            14,
            "CPU and memory per version (%)",
            vec![
                search(
                    "cpu",
                    per_service("AWS/ECS", "CPUUtilization"),
                    "Average",
                    "CPU",
                ),
                search(
                    "memory",
                    per_service("AWS/ECS", "MemoryUtilization"),
                    "Average",
                    "memory",
                ),
            ],
            json!({ "yAxis": { "left": { "min": 0, "max": 100 } } }),
        ),
        widget(
            0,
            20,
            "Drained tasks (App/Drain ShutdownReady per task, 1 = ready to retire)",
            vec![search(
                "ready",
                format!(
                    "{{App/Drain,deployment_name,deployment_id,task_id}} MetricName=\"ShutdownReady\" deployment_name=\"{name}\""
                ),
                "Maximum",
                "",
            )],
            json!({}),
        ),
        widget(
            12,
            20,
            "Reaper passes",
            vec![
                json!(["AWS/Lambda", "Invocations", "FunctionName", function, { "stat": "Sum" }]),
                json!(["AWS/Lambda", "Errors", "FunctionName", function, { "stat": "Sum" }]),
            ],
            json!({}),
        ),
    ];
    json!({ "widgets": widgets })
}
