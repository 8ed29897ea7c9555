//! The baseline stack's lifecycle against moto's CloudFormation: `baseline up` creates the stack
//! in two steps and caches its outputs, a second run changes nothing, a deploy runs on top of
//! it, an update puts the active version's default forward back, and `baseline down` removes
//! it; a brought certificate gives an HTTPS baseline; a failed deletion is reported.
//!
//! What moto cannot do, and how these tests stand in for it (never the product):
//! - its CloudFormation skips ACM certificates, so a requested certificate cannot be tested;
//!   the HTTP-only and brought-certificate modes are, and the validation-record reading is
//!   tested on a certificate requested from moto's ACM directly;
//! - it deletes no route table of a stack, so deleting the VPC fails with DependencyViolation
//!   (synchronously, from `DeleteStack`, after which moto forgets the stack). Before
//!   `baseline down`, [`delete_route_tables`] removes them, as CloudFormation itself does on AWS;
//!   one test lets the failure happen to check that it is reported;
//! - it runs no ECS tasks: [`EcsStandIn`] runs them and registers their targets;
//! - its stack updates never reset a listener's default action; the test resets it the way
//!   CloudFormation does on AWS when the listener resource is updated.

use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::types::ActionTypeEnum;
use flotilla_aws::stack::{
    BaselineStack, Desired, Plan, ReaperArtefact, StackClients, StackError, StackNotice,
    StackProgress, WaitSettings,
};
use flotilla_aws::{AwsSettings, Clients, Needs};
use flotilla_baseline::outputs::Mode;
use flotilla_baseline::{BaselineOptions, TlsMode};
use flotilla_core::{DeploymentName, names};
use flotilla_engine::events::Silent;
use flotilla_engine::workflows::TeardownTarget;
use flotilla_engine::{Engine, Settings};

use crate::support::{AGENT_IMAGE, EcsStandIn, Moto, REGION, World, eager_policy, next_id};

/// Collects every notice.
#[derive(Default)]
struct Notes(Mutex<Vec<StackNotice>>);

impl StackProgress for Notes {
    fn notice(&self, notice: StackNotice) {
        self.0.lock().expect("notes").push(notice);
    }
}

impl Notes {
    fn take(&self) -> Vec<StackNotice> {
        std::mem::take(&mut *self.0.lock().expect("notes"))
    }

    fn steps(notes: &[StackNotice]) -> Vec<String> {
        notes
            .iter()
            .filter_map(|n| match n {
                StackNotice::Step(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

/// One moto, a project directory, and the baseline stack of `name` in it.
struct Site {
    moto: Moto,
    dir: tempfile::TempDir,
    name: DeploymentName,
    settings: AwsSettings,
    clients: StackClients,
}

impl Site {
    async fn new(name: &str) -> Site {
        let moto = Moto::start();
        let dir = tempfile::tempdir().expect("project dir");
        let name = DeploymentName::new(name).expect("valid name");
        let mut settings = AwsSettings::new(name.clone());
        settings.region = Some(REGION.to_owned());
        settings.endpoint_url = Some(moto.url());
        settings.max_attempts = 2;
        settings.baseline_file = Some(
            dir.path()
                .join(".flotilla")
                .join(name.as_str())
                .join("baseline.json"),
        );
        // The app listens on 8000, so the agent (and the baseline's container port) is 8001.
        settings.task.app_port = 8000;
        settings.task.container_port = 8001;
        settings.task.app_command = vec!["/app/server".to_owned()];
        // A prebuilt agent image: these tests run no container (the Docker tests do).
        settings.task.agent_image = Some(AGENT_IMAGE.to_owned());
        settings.routing.health_interval_seconds = 5;
        settings.routing.health_timeout_seconds = 2;
        let config = flotilla_aws::sdk_config_with(&settings, |l| {
            l.credentials_provider(aws_sdk_ssm::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
        })
        .await;
        let clients = StackClients::new(&config, true);
        Site {
            moto,
            dir,
            name,
            settings,
            clients,
        }
    }

    fn stack(&self) -> BaselineStack {
        BaselineStack::new(
            self.clients.clone(),
            self.settings.clone(),
            WaitSettings {
                poll: Duration::from_millis(100),
                timeout: Duration::from_secs(60),
                heartbeat: Duration::from_secs(60),
            },
        )
    }

    fn provider(&self) -> &Clients {
        &self.clients.provider
    }

    fn engine(&self) -> Engine {
        let ports =
            flotilla_aws::connect_with(&self.settings, self.provider().clone(), Needs::Deploy)
                .expect("ports over the cached baseline");
        Engine::new(
            ports,
            Settings {
                name: self.name.clone(),
                policy: eager_policy(2),
                budget: Default::default(),
                health_timeout: Duration::from_secs(30),
                health_poll: Duration::from_millis(200),
                lock_ttl: Duration::from_secs(600),
                lock_owner: "baseline test".to_owned(),
                local_holders: None,
            },
        )
    }

    /// What `baseline up` does: plan, then apply.
    async fn up(
        &self,
        options: &BaselineOptions,
        notes: &Notes,
    ) -> (Plan, flotilla_aws::stack::UpReport) {
        self.up_with(options, reaper_artefact(), notes).await
    }

    /// `baseline up` with the reaper's code from `artefact`.
    async fn up_with(
        &self,
        options: &BaselineOptions,
        artefact: ReaperArtefact,
        notes: &Notes,
    ) -> (Plan, flotilla_aws::stack::UpReport) {
        let desired = Desired::new(options, artefact).expect("a template");
        let stack = self.stack();
        let plan = stack.plan(&desired, notes).await.expect("plan");
        let report = stack.apply(&plan, &desired, notes).await.expect("apply");
        (plan, report)
    }

    /// Deletes the stack's route tables but the VPC's main one: what CloudFormation does on AWS
    /// while deleting a stack, and moto's CloudFormation does not (see the module comment).
    fn delete_route_tables(&self, vpc: &str) -> usize {
        let xml = self.moto.ec2(&[
            ("Action", "DescribeRouteTables"),
            ("Filter.1.Name", "vpc-id"),
            ("Filter.1.Value.1", vpc),
        ]);
        let mut ids: Vec<&str> = xml
            .split("<routeTableId>")
            .skip(1)
            .filter_map(|s| s.split("</routeTableId>").next())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut deleted = 0;
        for id in ids {
            // The main route table refuses; it goes with the VPC.
            let (status, _) = self
                .moto
                .ec2_call(&[("Action", "DeleteRouteTable"), ("RouteTableId", id)]);
            if status == 200 {
                deleted += 1;
            }
        }
        deleted
    }

    fn vpc_exists(&self, vpc: &str) -> bool {
        let (status, body) = self
            .moto
            .ec2_call(&[("Action", "DescribeVpcs"), ("VpcId.1", vpc)]);
        status == 200 && body.contains(vpc)
    }
}

/// The reaper's "binary": any real Linux executable will do, moto never runs it.
fn reaper_artefact() -> ReaperArtefact {
    ReaperArtefact::from_binary(std::path::Path::new("/bin/true")).expect("/bin/true zips")
}

async fn listener_default(clients: &Clients, listener: &str) -> (ActionTypeEnum, Option<String>) {
    let out = clients
        .elb
        .describe_listeners()
        .listener_arns(listener)
        .send()
        .await
        .expect("describe listener");
    let action = &out.listeners()[0].default_actions()[0];
    let tg = action
        .forward_config()
        .and_then(|f| f.target_groups().first())
        .and_then(|t| t.target_group_arn())
        .or(action.target_group_arn())
        .map(str::to_owned);
    (action.r#type().cloned().expect("a type"), tg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_up_then_again_then_a_deploy_on_it_then_an_update_then_down() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let site = Site::new("base").await;
    let stack = site.stack();
    let notes = Notes::default();
    let options = BaselineOptions::new(site.name.clone(), TlsMode::HttpOnly);

    // First `up`: the plan lists the template's resources, the reaper's last.
    let (plan, report) = site.up(&options, &notes).await;
    let Plan::Create { changes } = &plan else {
        panic!("a first run creates: {plan:?}");
    };
    let reaper: Vec<&str> = changes
        .iter()
        .filter(|c| c.with_reaper_code)
        .map(|c| c.logical_id.as_str())
        .collect();
    assert!(reaper.contains(&"ReaperFunction"), "{reaper:?}");
    assert!(changes.iter().any(|c| c.logical_id == "LoadBalancer"));
    assert!(report.created && report.changed, "{report:?}");
    assert_eq!(
        report.status, "UPDATE_COMPLETE",
        "created, then given the reaper"
    );
    let steps = Notes::steps(&notes.take());
    assert!(
        steps
            .iter()
            .any(|s| s.contains("creating stack flotilla-base")),
        "{steps:?}"
    );
    assert!(
        steps
            .iter()
            .any(|s| s.contains("uploading the reaper's code")),
        "{steps:?}"
    );
    assert!(
        steps.iter().any(|s| s.contains("adding the reaper")),
        "{steps:?}"
    );

    // The outputs are cached where the provider reads them.
    let cache = site.dir.path().join(".flotilla/base/baseline.json");
    assert_eq!(report.cache, cache);
    let cached: flotilla_baseline::BaselineOutputs =
        serde_json::from_str(&std::fs::read_to_string(&cache).expect("cache written"))
            .expect("cache parses");
    assert_eq!(cached, report.outputs);
    assert_eq!(cached.deployment_name, "base");
    assert_eq!(cached.mode, Mode::HttpOnly);
    assert_eq!(cached.cluster_name, "flotilla-base");
    assert_eq!(cached.private_subnet_ids.len(), 2);
    assert_eq!(cached.container_port, 8001);
    assert_eq!(
        cached.listener_arn, cached.http_listener_arn,
        "HTTP-only routes on port 80"
    );
    assert_eq!(
        cached.reaper_function_name.as_deref(),
        Some("flotilla-base-reaper"),
        "the second step added the reaper"
    );
    assert_eq!(cached.certificate_arn, None);
    let key = reaper_artefact().key();
    assert_eq!(report.reaper_code_key.as_deref(), Some(key.as_str()));
    site.clients
        .s3
        .head_object()
        .bucket(&cached.artefact_bucket)
        .key(&key)
        .send()
        .await
        .expect("the reaper's zip is in the artefact bucket");
    let live = stack.describe().await.expect("describe").expect("exists");
    assert_eq!(
        live.parameters.get("ReaperCodeKey").map(String::as_str),
        Some(key.as_str())
    );
    // Until a version is deployed, the listener answers the template's 503.
    let (kind, _) = listener_default(site.provider(), &cached.listener_arn).await;
    assert_eq!(kind, ActionTypeEnum::FixedResponse);

    // Second `up`: nothing to change, and nothing is done.
    let (plan, report) = site.up(&options, &notes).await;
    assert!(matches!(plan, Plan::NoChange { .. }), "{plan:?}");
    assert!(!report.changed && !report.created);
    assert_eq!(report.outputs, cached);
    assert!(Notes::steps(&notes.take()).is_empty(), "nothing happened");

    // A deploy from the AWS provider on top of it, with the stand-in running ECS's part.
    let engine = site.engine();
    let ecs = EcsStandIn::for_cluster(site.provider().clone(), &cached.cluster_name).await;
    let id = next_id();
    let outcome = ecs
        .while_settling(engine.deploy(World::request(&id), &Silent))
        .await
        .expect("deploy on the baseline");
    assert_eq!(outcome.deployment_id, id);
    let tg_name = names::target_group_name(&site.name, &id);
    let (kind, tg) = listener_default(site.provider(), &cached.listener_arn).await;
    assert_eq!(kind, ActionTypeEnum::Forward);
    let tg = tg.expect("a target group");
    assert!(tg.contains(&format!(":targetgroup/{tg_name}/")), "{tg}");
    let tgs = site
        .provider()
        .elb
        .describe_target_groups()
        .target_group_arns(&tg)
        .send()
        .await
        .expect("target group");
    assert_eq!(
        tgs.target_groups()[0].vpc_id(),
        Some(cached.vpc_id.as_str()),
        "in the baseline's VPC"
    );
    let services = site
        .provider()
        .ecs
        .describe_services()
        .cluster(&cached.cluster_name)
        .services(names::service_name(&site.name, &id))
        .send()
        .await
        .expect("service");
    let service = &services.services()[0];
    assert_eq!(service.status(), Some("ACTIVE"));
    let network = service
        .network_configuration()
        .and_then(|n| n.awsvpc_configuration())
        .expect("awsvpc");
    assert_eq!(network.subnets(), cached.private_subnet_ids.as_slice());
    assert_eq!(
        network.security_groups(),
        std::slice::from_ref(&cached.service_security_group_id)
    );
    // The deploy published its state to the drain board in the stack's artefact bucket.
    let board = flotilla_aws::drain_board::read_board(
        &site.provider().s3,
        cached
            .drain_bucket
            .as_deref()
            .expect("the stack names the board's bucket"),
        &flotilla_aws::drain_board::board_key(&site.name),
    )
    .await
    .expect("read board")
    .map(|(_, b)| b)
    .expect("a drain board");
    assert_eq!(
        board.versions.get(&id),
        Some(&flotilla_core::lifecycle::VersionState::Active),
        "{board:?}"
    );
    let running = stack.running_versions().await.expect("running versions");
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].id, id.to_string());
    assert_eq!(running[0].state.as_deref(), Some("active"));
    assert!(running[0].service.is_some(), "{running:?}");

    // An update that CloudFormation applies by resetting the listener (as on AWS when the
    // listener resource changes): `up` points fresh traffic back at the active version.
    site.provider()
        .elb
        .modify_listener()
        .listener_arn(&cached.listener_arn)
        .default_actions(
            aws_sdk_elasticloadbalancingv2::types::Action::builder()
                .r#type(ActionTypeEnum::FixedResponse)
                .fixed_response_config(
                    aws_sdk_elasticloadbalancingv2::types::FixedResponseActionConfig::builder()
                        .status_code("503")
                        .content_type("text/plain")
                        .message_body("no version deployed yet")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("reset the default");
    let mut changed = options.clone();
    changed.alarms.five_xx_rate_percent = 7;
    let (plan, report) = site.up(&changed, &notes).await;
    let Plan::Update {
        changes,
        new_reaper_code,
        ..
    } = &plan
    else {
        panic!("a changed option updates: {plan:?}");
    };
    assert!(!new_reaper_code, "same binary, same code");
    assert!(
        changes
            .iter()
            .any(|c| c.logical_id == "FiveXxRateAlarm" && c.action == "Modify"),
        "{changes:?}"
    );
    assert!(report.changed && !report.created);
    assert_eq!(report.default_restored, Some(id.clone()));
    let (kind, restored) = listener_default(site.provider(), &cached.listener_arn).await;
    assert_eq!(kind, ActionTypeEnum::Forward);
    assert_eq!(restored.as_deref(), Some(tg.as_str()));
    let steps = Notes::steps(&notes.take());
    assert!(
        steps
            .iter()
            .any(|s| s.contains(&format!("active version {id}"))),
        "{steps:?}"
    );

    // Versions go first (the CLI refuses `baseline down` while `running_versions` is not
    // empty), then the stack.
    ecs.while_settling(engine.teardown(TeardownTarget::All, false, &Silent))
        .await
        .expect("teardown");
    assert_eq!(stack.running_versions().await.expect("listed"), vec![]);
    let refused = stack
        .down(&["Vpc".to_owned()], &notes)
        .await
        .expect_err("--retain is for DELETE_FAILED stacks");
    assert!(refused.to_string().contains("UPDATE_COMPLETE"), "{refused}");
    assert!(cache.exists(), "a refusal changes nothing");
    assert!(site.delete_route_tables(&cached.vpc_id) >= 3);
    let down = stack.down(&[], &notes).await.expect("down");
    assert!(down.deleted);
    assert!(down.objects_removed >= 1, "the reaper's zip: {down:?}");
    assert_eq!(down.cache_removed.as_deref(), Some(cache.as_path()));
    assert!(!cache.exists());
    assert!(
        !site.dir.path().join(".flotilla/base").exists(),
        "the empty per-name directory goes too"
    );
    assert_eq!(stack.describe().await.expect("describe"), None);
    assert!(!site.vpc_exists(&cached.vpc_id), "the network is gone");
    let bucket = site
        .clients
        .s3
        .head_bucket()
        .bucket(&cached.artefact_bucket)
        .send()
        .await;
    assert!(bucket.is_err(), "the artefact bucket is gone");

    // And again: nothing left to delete.
    let again = stack.down(&[], &notes).await.expect("down again");
    assert!(!again.deleted && again.cache_removed.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brought_certificate_makes_an_https_baseline() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let site = Site::new("tls").await;
    let requested = site
        .clients
        .acm
        .request_certificate()
        .domain_name("app.example.com")
        .validation_method(aws_sdk_acm::types::ValidationMethod::Dns)
        .send()
        .await
        .expect("request certificate");
    let arn = requested.certificate_arn().expect("arn").to_owned();
    let options = BaselineOptions::new(
        site.name.clone(),
        TlsMode::Certificate {
            certificate_arn: arn.clone(),
            domain: Some("app.example.com".to_owned()),
        },
    );
    let notes = Notes::default();
    let (_, report) = site.up(&options, &notes).await;
    let outputs = &report.outputs;
    assert_eq!(outputs.mode, Mode::Https);
    assert_eq!(outputs.certificate_arn.as_deref(), Some(arn.as_str()));
    assert_eq!(outputs.url, "https://app.example.com");
    assert_ne!(outputs.listener_arn, outputs.http_listener_arn);
    let listener = site
        .provider()
        .elb
        .describe_listeners()
        .listener_arns(&outputs.listener_arn)
        .send()
        .await
        .expect("listener");
    let https = &listener.listeners()[0];
    assert_eq!(https.port(), Some(443));
    assert_eq!(
        https.ssl_policy(),
        Some("ELBSecurityPolicy-TLS13-1-2-2021-06")
    );
    assert_eq!(
        https
            .certificates()
            .first()
            .and_then(|c| c.certificate_arn()),
        Some(arn.as_str())
    );
    assert!(
        outputs.certificate_validation_records.is_empty(),
        "a brought certificate is the user's to validate"
    );

    // What `up` prints for a requested certificate, read from ACM the same way.
    let records = site
        .stack()
        .validation_records(&arn)
        .await
        .expect("describe certificate")
        .expect("records");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].domain, "app.example.com");
    assert_eq!(records[0].record_type, "CNAME");
    assert!(
        records[0].name.ends_with(".app.example.com."),
        "{records:?}"
    );
    assert!(
        records[0].value.ends_with(".acm-validations.aws."),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_is_reported_and_the_cache_kept() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let site = Site::new("stuck").await;
    let notes = Notes::default();
    let options = BaselineOptions::new(site.name.clone(), TlsMode::HttpOnly);
    let (_, report) = site.up(&options, &notes).await;
    let vpc = report.outputs.vpc_id.clone();
    // moto refuses to delete the VPC while its route tables exist (see the module comment).
    let err = site
        .stack()
        .down(&[], &notes)
        .await
        .expect_err("moto cannot");
    let text = err.to_string();
    assert!(text.contains("delete stack flotilla-stuck"), "{text}");
    assert!(text.contains("DependencyViolation"), "{text}");
    assert!(matches!(err, StackError::Aws(_)), "{err:?}");
    assert!(
        report.cache.exists(),
        "outputs stay cached until the stack is gone"
    );
    assert!(site.vpc_exists(&vpc));
}

/// The function's environment as the Lambda API reports it (moto resolved the template's
/// references): what the reaper reads at start.
fn function_environment(moto_url: &str, function: &str) -> Vec<(String, String)> {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            &format!("{moto_url}/2015-03-31/functions/{function}/configuration"),
            "-H",
            "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=x",
        ])
        .output()
        .expect("curl moto");
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the function's configuration is JSON");
    doc["Environment"]["Variables"]
        .as_object()
        .unwrap_or_else(|| panic!("no environment in {doc}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// The zip `baseline up` uploads, run as Lambda would run it: its `bootstrap` unpacked into an
/// image with nothing else in it (no libc, no shell, no CA bundle), started with the function's
/// environment from moto against cargo-lambda's Runtime API emulator, and invoked once. The pass
/// retires a drained version in moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_zip_runs_from_scratch_under_a_lambda_runtime_and_retires_a_drained_version() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    use flotilla_testkit::docker::{ContextFile, Docker};
    use flotilla_testkit::lambda::LambdaRuntime;

    let site = Site::new("reapzip").await;
    let notes = Notes::default();
    let mut options = BaselineOptions::new(site.name.clone(), TlsMode::HttpOnly);
    options.reaper.policy = eager_policy(1);
    let artefact =
        ReaperArtefact::from_binary(&crate::support::static_binary("flotilla-aws-reaper"))
            .expect("the static reaper zips");
    let (_, report) = site.up_with(&options, artefact, &notes).await;
    let outputs = report.outputs.clone();
    let function = outputs
        .reaper_function_name
        .clone()
        .expect("the stack has the reaper");

    // The zip as uploaded, and its one file.
    let key = report.reaper_code_key.clone().expect("a code key");
    let object = site
        .clients
        .s3
        .get_object()
        .bucket(&outputs.artefact_bucket)
        .key(&key)
        .send()
        .await
        .expect("the zip in the artefact bucket");
    let zip_bytes = object.body.collect().await.expect("zip body").into_bytes();
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(zip_bytes.to_vec())).expect("a zip archive");
    assert_eq!(archive.len(), 1, "only the bootstrap");
    let mut entry = archive.by_name("bootstrap").expect("bootstrap in the zip");
    assert_eq!(
        entry.unix_mode().map(|m| m & 0o111),
        Some(0o111),
        "bootstrap is executable"
    );
    let mut bootstrap = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut bootstrap).expect("unzip bootstrap");
    drop(entry);

    // Two versions: the first drains, and each of its tasks has reported ready.
    let engine = site.engine();
    let ecs = EcsStandIn::for_cluster(site.provider().clone(), &outputs.cluster_name).await;
    let v1 = next_id();
    ecs.while_settling(engine.deploy(World::request(&v1), &Silent))
        .await
        .expect("first deploy");
    let v2 = next_id();
    ecs.while_settling(engine.deploy(World::request(&v2), &Silent))
        .await
        .expect("second deploy");
    let service = names::service_name(&site.name, &v1);
    let tasks: Vec<String> = ecs
        .tasks()
        .await
        .into_iter()
        .filter(|(_, svc)| svc == &service)
        .map(|(arn, _)| arn.rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    assert!(!tasks.is_empty(), "the first version runs");
    for task in &tasks {
        let instance = flotilla_core::InstanceId::new(task).expect("a task id is an instance id");
        site.provider()
            .ssm
            .put_parameter()
            .name(names::task_parameter(&site.name, &v1, &instance))
            .value("draining")
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .expect("report ready");
    }

    // The image Lambda's provided runtime amounts to here: the bootstrap and nothing else.
    let docker = Docker::shared().expect("private dockerd");
    let image = "flotilla-reaper-under-test:latest";
    docker
        .build(
            image,
            "FROM scratch\nCOPY bootstrap /var/task/bootstrap\nENTRYPOINT [\"/var/task/bootstrap\"]\n",
            &[ContextFile::bytes("bootstrap", bootstrap).mode(0o755)],
        )
        .expect("build the function image");
    let runtime = LambdaRuntime::start().expect("the Lambda Runtime API emulator");
    let mut env = function_environment(&site.moto.url(), &function);
    assert!(
        env.iter().any(|(k, _)| k == "FLOTILLA_LISTENER_ARN"),
        "the stack gives the reaper its listener: {env:?}"
    );
    env.extend(runtime.function_env());
    env.extend([
        ("AWS_ENDPOINT_URL".to_owned(), site.moto.url()),
        ("AWS_REGION".to_owned(), REGION.to_owned()),
        ("AWS_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
    ]);
    let container = format!("flotilla-reaper-{}", std::process::id());
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        container.clone(),
        "--network".into(),
        "host".into(),
        "--read-only".into(),
    ];
    for (k, v) in &env {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    args.push(image.into());
    docker.run(&args).expect("start the function's container");

    let invoked = ecs
        .while_settling(async {
            tokio::task::block_in_place(|| runtime.invoke("{}", Duration::from_secs(120)))
        })
        .await;
    let logs = docker
        .run(["logs", container.as_str()])
        .unwrap_or_else(|e| format!("(no logs: {e})"));
    let _ = docker.run(["rm", "-f", container.as_str()]);
    let invoked = invoked.unwrap_or_else(|e| {
        panic!(
            "invoke failed: {e}\nfunction log:\n{logs}\nemulator:\n{}",
            runtime.log_tail(20)
        )
    });
    assert_eq!(invoked.status, 200, "{invoked:?}\n{logs}");
    let pass: serde_json::Value = serde_json::from_str(&invoked.body)
        .unwrap_or_else(|e| panic!("the pass's report is JSON ({e}): {invoked:?}\n{logs}"));
    assert!(
        pass.to_string().contains(v1.as_str()),
        "the pass acted on the drained version: {pass}\n{logs}"
    );
    // The canary tick before the pass ran, and found no canary to drive.
    assert_eq!(pass["canary"]["tick"], "idle", "{pass}\n{logs}");
    let state = site
        .provider()
        .ssm
        .get_parameter()
        .name(names::state_parameter(&site.name, &v1))
        .send()
        .await
        .expect("the first version's state")
        .parameter()
        .and_then(|p| p.value())
        .map(str::to_owned);
    assert_eq!(state.as_deref(), Some("retired"), "{pass}\n{logs}");
    let state = site
        .provider()
        .ssm
        .get_parameter()
        .name(names::state_parameter(&site.name, &v2))
        .send()
        .await
        .expect("the second version's state")
        .parameter()
        .and_then(|p| p.value())
        .map(str::to_owned);
    assert_eq!(
        state.as_deref(),
        Some("active"),
        "the active version is untouched"
    );
}
