//! Backend choice: the engine a project's rollout.yaml names (docker or kubernetes), wrapped in
//! retries. The CLI commands and the daemon connect through here, so both refuse a command the
//! kubernetes backend does not carry out yet with the same words.

use anyhow::Context;

use crate::engine::Engine;
use crate::engine::docker::DockerEngine;
use crate::engine::kube::KubeEngine;
use crate::manifest::config::Backend;
use crate::project::Project;

/// The commands the kubernetes backend carries out so far (issue #8). `history` connects to read
/// the run records kept in the cluster, `approve` to read and write the gates kept there;
/// `report` and `audit` read the local store and never connect.
const KUBERNETES_COMMANDS: [&str; 11] = [
    "plan",
    "status",
    "history",
    "daemon",
    "promote",
    "rollback",
    "test-env up",
    "test-env down",
    "test-env list",
    "rehearse",
    "approve",
];

/// Connects to the backend named in rollout.yaml for `command` (as the user typed it). On the
/// kubernetes backend a command not built there yet is refused before anything is done.
pub(crate) async fn connect(project: &Project, command: &str) -> anyhow::Result<Box<dyn Engine>> {
    match project.config.backend {
        Backend::Docker => {
            let engine = DockerEngine::connect(project.config.docker_host.as_deref())
                .await
                .context("the docker backend needs a running Docker engine")?;
            Ok(Box::new(crate::engine::retry::Retrying::new(engine)))
        }
        Backend::Kubernetes => {
            if !KUBERNETES_COMMANDS.contains(&command) {
                anyhow::bail!(
                    "not supported on the kubernetes backend yet: `rollout {command}` (issue #8; `plan`, `status`, `promote`, `rollback`, `history`, `test-env`, `rehearse`, `approve` and `daemon` work there so far); nothing was done"
                );
            }
            let engine = KubeEngine::connect()
                .await
                .context("the kubernetes backend needs a reachable cluster")?
                .with_prometheus(project.config.prometheus.clone())
                .with_copy_image(project.config.copy_image.clone());
            Ok(Box::new(crate::engine::retry::Retrying::new(engine)))
        }
    }
}
