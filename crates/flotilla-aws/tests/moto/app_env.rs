//! The app's own environment on AWS: plain variables in the task definition's `environment`,
//! secrets as `secrets[].valueFrom` references that ECS resolves with the execution role, and a
//! deploy refused before anything exists when the baseline's role may not read a secret.

use flotilla_aws::Needs;
use flotilla_engine::ports::{AppEnv, SecretSource};
use flotilla_engine::workflows::DeployRequest;

use crate::support::{REGION, World, next_id};

const SM_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:shop-auth-AbC123";

fn app_env(level: &str) -> AppEnv {
    AppEnv {
        vars: [("LOG_LEVEL".to_owned(), level.to_owned())].into(),
        secrets: [
            (
                "DATABASE_URL".to_owned(),
                SecretSource::Reference("ssm:/shop/database-url".to_owned()),
            ),
            (
                "AUTH_SECRET".to_owned(),
                SecretSource::Reference(format!("{SM_ARN}:password::")),
            ),
        ]
        .into(),
    }
}

/// The environment and secrets of the app container of `id`'s task definition.
async fn container_env(
    w: &World,
    id: &flotilla_core::DeploymentId,
) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let td = w.task_definition(id).await;
    let app = td
        .container_definitions()
        .iter()
        .find(|c| c.name() == Some(flotilla_aws::compute::CONTAINER_NAME))
        .expect("app container")
        .clone();
    let env = app
        .environment()
        .iter()
        .map(|kv| {
            (
                kv.name().unwrap_or("").to_owned(),
                kv.value().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let secrets = app
        .secrets()
        .iter()
        .map(|s| (s.name().to_owned(), s.value_from().to_owned()))
        .collect();
    (env, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_carries_its_own_variables_and_secret_references() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let engine = w.engine("alice");
    let v1 = next_id();
    let first = DeployRequest {
        env: app_env("info"),
        ..World::request(&v1)
    };
    w.deploy_request(&engine, first).await.expect("deploy v1");
    let v2 = next_id();
    let second = DeployRequest {
        env: app_env("debug"),
        ..World::request(&v2)
    };
    w.deploy_request(&engine, second).await.expect("deploy v2");

    for (id, level) in [(&v1, "info"), (&v2, "debug")] {
        let (env, secrets) = container_env(&w, id).await;
        assert!(
            env.contains(&("LOG_LEVEL".to_owned(), level.to_owned())),
            "{id}: {env:?}"
        );
        // flotilla's own variables are still there, after the app's.
        assert!(
            env.iter().any(|(k, _)| k == "FLOTILLA_DEPLOYMENT_ID"),
            "{env:?}"
        );
        let mut secrets = secrets;
        secrets.sort();
        assert_eq!(
            secrets,
            vec![
                ("AUTH_SECRET".to_owned(), format!("{SM_ARN}:password::")),
                (
                    "DATABASE_URL".to_owned(),
                    format!("arn:aws:ssm:{REGION}:123456789012:parameter/shop/database-url"),
                ),
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_execution_role_may_not_read_stops_the_deploy_before_anything_exists() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let mut w = World::new("shop").await;
    w.settings.declared_secrets = vec!["ssm:/shop/database-url".to_owned(), SM_ARN.to_owned()];
    // The baseline grants the SSM parameter only.
    w.settings.baseline_overrides.secret_grants = Some(vec![format!(
        "arn:aws:ssm:{REGION}:123456789012:parameter/shop/database-url"
    )]);
    let err = match flotilla_aws::connect_with(&w.settings, w.clients.clone(), Needs::Deploy) {
        Ok(_) => panic!("a deploy with an ungranted secret must be refused"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains(SM_ARN), "{err}");
    assert!(err.contains("flotilla baseline up"), "{err}");
    assert!(
        !err.contains("database-url"),
        "the granted one is fine: {err}"
    );
    let inv = w.inventory().await;
    assert!(
        inv.target_groups.is_empty() && inv.services.is_empty(),
        "{inv:?}"
    );

    // Granted: the same settings connect. Other commands never check (they create nothing).
    w.settings
        .baseline_overrides
        .secret_grants
        .as_mut()
        .expect("grants")
        .push(SM_ARN.to_owned());
    flotilla_aws::connect_with(&w.settings, w.clients.clone(), Needs::Deploy).expect("granted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_comes_from_an_init_container_and_wraps_the_app_on_the_chosen_architecture() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    use aws_sdk_ecs::types::{ContainerCondition, CpuArchitecture};
    let mut w = World::new("shop").await;
    w.settings.task.architecture = flotilla_baseline::Architecture::Arm64;
    w.settings.task.user = Some("1000:1000".to_owned());
    let engine = w.engine("alice");
    let id = next_id();
    w.deploy(&engine, &id).await.expect("deploy");
    let td = w.task_definition(&id).await;
    assert_eq!(
        td.runtime_platform().and_then(|p| p.cpu_architecture()),
        Some(&CpuArchitecture::Arm64)
    );
    let volumes: Vec<&str> = td.volumes().iter().filter_map(|v| v.name()).collect();
    assert_eq!(volumes, vec!["flotilla-agent", "tmp"]);
    let by_name = |n: &str| {
        td.container_definitions()
            .iter()
            .find(|c| c.name() == Some(n))
            .unwrap_or_else(|| panic!("no container {n}"))
            .clone()
    };
    let init = by_name("flotilla-agent");
    assert_eq!(init.image(), Some(crate::support::AGENT_IMAGE));
    assert_eq!(init.essential(), Some(false));
    assert_eq!(init.command(), ["install", "/flotilla/agent"]);
    let app = by_name("app");
    assert_eq!(app.essential(), Some(true));
    assert_eq!(
        app.entry_point().join(" "),
        "/flotilla/agent --listen 0.0.0.0:8000 --app-port 3000 --"
    );
    assert_eq!(app.command(), ["/app/server"]);
    let dep = &app.depends_on()[0];
    assert_eq!(dep.container_name(), "flotilla-agent");
    assert_eq!(dep.condition(), &ContainerCondition::Success);
    assert_eq!(app.readonly_root_filesystem(), Some(true));
    assert_eq!(app.user(), Some("1000:1000"));
    let mounts: Vec<(String, String, bool)> = app
        .mount_points()
        .iter()
        .map(|m| {
            (
                m.source_volume().unwrap_or("").to_owned(),
                m.container_path().unwrap_or("").to_owned(),
                m.read_only().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        vec![
            ("flotilla-agent".to_owned(), "/flotilla".to_owned(), true),
            ("tmp".to_owned(), "/tmp".to_owned(), false),
        ]
    );
}
