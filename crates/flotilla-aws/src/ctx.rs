//! What every port of one deployment name shares: the clients, the baseline, the settings, and
//! small per-process caches (target group ARNs, the VPC) that save repeated look-ups.

use std::collections::HashMap;
use std::sync::Mutex;

use flotilla_core::{DeploymentId, DeploymentName, names};
use flotilla_engine::ports::{ErrorKind, PortError};

use crate::error::port_error;
use crate::sdk::Clients;
use crate::settings::{Baseline, RoutingSettings, TaskSettings};

/// The tag keys flotilla puts on services, target groups and rules.
pub(crate) const TAG_NAME: &str = "deployment_name";
pub(crate) const TAG_ID: &str = "deployment_id";
pub(crate) const TAG_STATE: &str = "state";

/// The shared context of one deployment name's ports.
pub(crate) struct Ctx {
    pub name: DeploymentName,
    pub clients: Clients,
    pub baseline: Baseline,
    pub task: TaskSettings,
    pub routing: RoutingSettings,
    pub region: String,
    /// The docker executable that builds, inspects and pushes images.
    pub docker: String,
    tg_arns: Mutex<HashMap<DeploymentId, String>>,
    vpc: tokio::sync::OnceCell<String>,
    /// What each version's task runs, worked out when its image was prepared.
    task_images: Mutex<HashMap<DeploymentId, crate::images::TaskImages>>,
}

impl Ctx {
    pub fn new(
        name: DeploymentName,
        clients: Clients,
        baseline: Baseline,
        task: TaskSettings,
        routing: RoutingSettings,
        region: String,
        docker: String,
    ) -> Self {
        Ctx {
            name,
            clients,
            baseline,
            task,
            routing,
            region,
            docker,
            tg_arns: Mutex::new(HashMap::new()),
            vpc: tokio::sync::OnceCell::new(),
            task_images: Mutex::new(HashMap::new()),
        }
    }

    pub fn cached_task_images(&self, id: &DeploymentId) -> Option<crate::images::TaskImages> {
        self.task_images.lock().ok()?.get(id).cloned()
    }

    pub fn remember_task_images(&self, id: &DeploymentId, images: &crate::images::TaskImages) {
        if let Ok(mut m) = self.task_images.lock() {
            m.insert(id.clone(), images.clone());
        }
    }

    pub fn service_name(&self, id: &DeploymentId) -> String {
        names::service_name(&self.name, id)
    }

    pub fn target_group_name(&self, id: &DeploymentId) -> String {
        names::target_group_name(&self.name, id)
    }

    /// The ARN ECS gives the service of `id` (long ARN format), if the account is known.
    pub fn service_arn(&self, id: &DeploymentId) -> Option<String> {
        let account = self.baseline.account_id()?;
        Some(format!(
            "arn:aws:ecs:{}:{account}:service/{}/{}",
            self.region,
            self.baseline.cluster_name(),
            self.service_name(id)
        ))
    }

    /// The id whose target group is named `tg_name`, if it is one of this deployment name's.
    pub fn id_of_target_group_name(&self, tg_name: &str) -> Option<DeploymentId> {
        let tail = tg_name.get(tg_name.len().checked_sub(flotilla_core::ids::ID_LEN)?..)?;
        let id = DeploymentId::new(tail).ok()?;
        (self.target_group_name(&id) == tg_name).then_some(id)
    }

    pub fn cached_tg(&self, id: &DeploymentId) -> Option<String> {
        self.tg_arns.lock().ok()?.get(id).cloned()
    }

    pub fn remember_tg(&self, id: &DeploymentId, arn: &str) {
        if let Ok(mut m) = self.tg_arns.lock() {
            m.insert(id.clone(), arn.to_owned());
        }
    }

    pub fn forget_tg(&self, id: &DeploymentId) {
        if let Ok(mut m) = self.tg_arns.lock() {
            m.remove(id);
        }
    }

    /// The target group ARN of `id`, from the cache or by name; `None` when it does not exist.
    pub async fn find_tg(&self, id: &DeploymentId) -> Result<Option<String>, PortError> {
        if let Some(arn) = self.cached_tg(id) {
            return Ok(Some(arn));
        }
        let name = self.target_group_name(id);
        match self
            .clients
            .elb
            .describe_target_groups()
            .names(&name)
            .send()
            .await
        {
            Ok(out) => {
                let arn = out
                    .target_groups()
                    .first()
                    .and_then(|tg| tg.target_group_arn())
                    .map(str::to_owned);
                if let Some(arn) = &arn {
                    self.remember_tg(id, arn);
                }
                Ok(arn)
            }
            Err(e) => {
                let err = port_error("find target group", &name, e);
                if err.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The load balancer's VPC: from the baseline, or looked up once from the listener.
    pub async fn vpc_id(&self) -> Result<String, PortError> {
        if let Some(vpc) = &self.baseline.vpc_id {
            return Ok(vpc.clone());
        }
        self.vpc
            .get_or_try_init(|| async {
                let listener = &self.baseline.listener_arn;
                let out = self
                    .clients
                    .elb
                    .describe_listeners()
                    .listener_arns(listener)
                    .send()
                    .await
                    .map_err(|e| port_error("describe listener", listener, e))?;
                let lb = out
                    .listeners()
                    .first()
                    .and_then(|l| l.load_balancer_arn())
                    .ok_or_else(|| {
                        PortError::new(
                            ErrorKind::NotFound,
                            "describe listener",
                            listener,
                            "the baseline's listener does not exist; run `flotilla baseline up`",
                        )
                    })?
                    .to_owned();
                let out = self
                    .clients
                    .elb
                    .describe_load_balancers()
                    .load_balancer_arns(&lb)
                    .send()
                    .await
                    .map_err(|e| port_error("describe load balancer", &lb, e))?;
                out.load_balancers()
                    .first()
                    .and_then(|l| l.vpc_id())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        PortError::new(
                            ErrorKind::NotFound,
                            "describe load balancer",
                            &lb,
                            "the load balancer has no VPC",
                        )
                    })
            })
            .await
            .cloned()
    }
}

/// The last segment of an ARN (`.../name` → `name`).
pub(crate) fn arn_tail(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// The target group name inside a target group ARN (`...:targetgroup/<name>/<hash>`).
pub(crate) fn tg_name_of_arn(arn: &str) -> Option<&str> {
    let rest = arn.split_once(":targetgroup/")?.1;
    rest.split('/').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arn_parts() {
        assert_eq!(
            tg_name_of_arn(
                "arn:aws:elasticloadbalancing:us-east-1:123:targetgroup/prod-20261125-190633-k3x9/56619de8"
            ),
            Some("prod-20261125-190633-k3x9")
        );
        assert_eq!(tg_name_of_arn("arn:aws:ecs:x"), None);
        assert_eq!(
            arn_tail("arn:aws:ecs:us-east-1:1:task/c/3808a9b4-930a-43cd-95a8-61d511b02bff"),
            "3808a9b4-930a-43cd-95a8-61d511b02bff"
        );
    }
}
