//! The host daemon in one process, for `bench/router-vs-nginx.sh` and `bench/router-versions.sh`:
//! serves the daemon (router, supervisor, state) on the given ports, deploys the given app
//! `BENCH_VERSIONS` times (default 2; each with `BENCH_INSTANCES` instances, default 2) through the
//! engine over the daemon's socket (the same path `flotilla deploy` takes), prints `VERSION <n>
//! <id>` for each, then `V1 <oldest id>` and `V2 <newest id>`, then runs until SIGTERM or Ctrl-C
//! and stops everything. Every version but the newest stays draining (the reaper waits an hour).
//!
//! Usage: bench_router APP_DIR ROUTER_PORT ADMIN_PORT 'BUILD' 'COMMAND'
//! (with `BENCH_HTTPS_PORT`, `BENCH_TLS_CERT` and `BENCH_TLS_KEY` set, also HTTPS on that port
//! with that certificate, for `bench/tls-vs-nginx.sh`)
//! (built without the CLI so the benchmark does not need the AWS SDK compiled in release mode).

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_core::{DeploymentId, DeploymentName, Timestamp};
use flotilla_engine::Settings;
use flotilla_engine::events::Silent;
use flotilla_engine::ports::ImageRequest;
use flotilla_engine::workflows::{DeployRequest, Outcome, Ran, Workflow, never};
use flotilla_host::HostSettings;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, app_dir, router_port, admin_port, build, command] = args.as_slice() else {
        return Err("usage: bench_router APP_DIR ROUTER_PORT ADMIN_PORT BUILD COMMAND".into());
    };
    let name = DeploymentName::new("bench")?;
    let mut settings = HostSettings::new(name.clone(), app_dir, command.clone());
    settings.listen = SocketAddr::from(([127, 0, 0, 1], router_port.parse()?));
    settings.admin_listen = SocketAddr::from(([127, 0, 0, 1], admin_port.parse()?));
    settings.build = Some(build.clone());
    settings.drain_grace = Duration::from_secs(3600);
    settings.reaper_interval = Duration::from_secs(3600);
    // bench/tls-vs-nginx.sh: TLS on this port with this certificate and key.
    if let (Ok(port), Ok(certificate), Ok(key)) = (
        std::env::var("BENCH_HTTPS_PORT"),
        std::env::var("BENCH_TLS_CERT"),
        std::env::var("BENCH_TLS_KEY"),
    ) {
        settings.https = Some(flotilla_host::settings::HttpsSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], port.parse()?)),
            certificates: flotilla_host::settings::CertificateSource::Files {
                certificate: certificate.into(),
                key: key.into(),
            },
        });
    }
    let settings = settings.resolved()?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon_settings = settings.clone();
    let daemon = tokio::spawn(async move {
        flotilla_host::serve(&daemon_settings, async {
            let _ = stop_rx.await;
        })
        .await
    });
    // The daemon opens its socket after binding; wait for it rather than starting another one.
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(settings.socket_path())
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let workflows = flotilla_host::connect(
        &settings,
        Settings {
            name,
            policy: settings.reaper_policy,
            // Routing cost with many versions is measured here, not the ALB's rule limit.
            budget: flotilla_core::routing::RuleBudget { limit: 10_000 },
            health_timeout: Duration::from_secs(60),
            health_poll: Duration::from_millis(200),
            lock_ttl: Duration::from_secs(600),
            lock_owner: format!("bench_router (pid {})", std::process::id()),
            local_holders: None,
        },
    )
    .await?;
    let count = env_number("BENCH_VERSIONS", 2)?;
    let instances = env_number("BENCH_INSTANCES", 2)?;
    let mut ids = Vec::new();
    for n in 1..=count {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let id = DeploymentId::generate(
            Timestamp::from_millis(now.as_millis() as u64),
            u64::from(now.subsec_nanos()),
        );
        let request = DeployRequest {
            id,
            image: ImageRequest::Build(settings.app_dir.clone()),
            instances,
            min_healthy: instances,
            break_lock: false,
            env: Default::default(),
        };
        let deploy = Workflow::Deploy {
            request,
            canary: None,
        };
        let Ran::Finished(Outcome::Deployed(outcome)) =
            workflows.run(deploy, &Silent, never()).await?
        else {
            return Err("the deploy reported something else".into());
        };
        println!("VERSION {n} {}", outcome.deployment_id);
        ids.push(outcome.deployment_id);
        // Ids carry the second; keep them apart.
        if n < count {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    }
    let (Some(oldest), Some(newest)) = (ids.first(), ids.last()) else {
        return Err("BENCH_VERSIONS must be at least 1".into());
    };
    println!("V1 {oldest}");
    println!("V2 {newest}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop_tx.send(());
    daemon.await??;
    Ok(())
}

/// A positive number from the environment variable `name`, or `default` when it is unset.
fn env_number(name: &str, default: u32) -> Result<u32, Box<dyn std::error::Error>> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name}={v:?} is not a positive number").into()),
        },
    }
}
