//! Volume copies on Docker: a short-lived helper container with both volumes mounted copies
//! file by file, its output quoted when it fails.

use crate::engine::Engine;
use futures_util::StreamExt;
use std::collections::BTreeMap;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{CreateContainerOptions, WaitContainerOptions};

use super::containers::to_hash;
use super::failure::{call, timed};
use super::{COPY_TIMEOUT, DockerEngine, HELPER_TAIL_LINES};
use crate::engine::image::UTIL_IMAGE;
use crate::engine::{ContainerState, Copied, EngineError};

impl DockerEngine {
    pub(super) async fn copy(
        &self,
        from: &str,
        to: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Copied, EngineError> {
        // Mounting a missing volume would create it empty: check, so a wrong name is an error.
        match call(self.docker.inspect_volume(from)).await {
            Ok(_) => {}
            Err(f) if f.is_not_found() => {
                return Err(EngineError::Call {
                    action: "copy volume",
                    object: format!("{from} -> {to}"),
                    reason: format!("there is no volume `{from}`"),
                });
            }
            Err(f) => return Err(f.call("inspect volume", from)),
        }
        self.ensure_volume(to, labels).await?;
        self.ensure_util_image().await?;
        let helper = format!("rollout-copy-{to}");
        // Left over by a run that crashed mid-copy.
        self.remove_container_if_any(&helper).await?;
        let copied = self.run_copy_helper(&helper, from, to, labels).await;
        let removed = self.remove_container_if_any(&helper).await;
        copied.and(removed).map(|()| Copied::Files)
    }

    /// Runs the copy helper `helper` to completion; the caller removes it.
    pub(super) async fn run_copy_helper(
        &self,
        helper: &str,
        from: &str,
        to: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        let object = format!("{from} -> {to}");
        let mount = |source: &str, target: &str, read_only: bool| Mount {
            source: Some(source.to_string()),
            target: Some(target.to_string()),
            typ: Some(MountType::VOLUME),
            read_only: Some(read_only),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(UTIL_IMAGE.to_string()),
            cmd: Some(
                ["/bin/busybox", "cp", "-a", "/from/.", "/to/"]
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
            ),
            labels: Some(to_hash(labels)),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_string()),
                mounts: Some(vec![mount(from, "/from", true), mount(to, "/to", false)]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(helper.to_string()),
            ..Default::default()
        };
        call(self.docker.create_container(Some(options), body))
            .await
            .map_err(|f| f.call("create container", helper))?;
        self.start(helper).await?;
        let wait = async {
            let options = WaitContainerOptions {
                condition: "not-running".to_string(),
            };
            let mut stream = self.docker.wait_container(helper, Some(options));
            match stream.next().await {
                // bollard reports a non-zero exit as an error; the exit code is read below.
                Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) | None => {
                    Ok(())
                }
                Some(Err(e)) => Err(e),
            }
        };
        timed(COPY_TIMEOUT, wait)
            .await
            .map_err(|f| f.call("wait for container", helper))?;
        match self.state_of(helper).await? {
            Some(ContainerState::Exited { code: 0 }) => Ok(()),
            Some(ContainerState::Exited { code }) => {
                let logs = self
                    .logs_tail(helper, HELPER_TAIL_LINES)
                    .await
                    .unwrap_or_default();
                let mut reason = format!("`cp` exited with code {code}");
                if !logs.is_empty() {
                    reason.push_str(": ");
                    reason.push_str(&logs.join("\n  "));
                }
                Err(EngineError::Call {
                    action: "copy volume",
                    object,
                    reason,
                })
            }
            other => Err(EngineError::Call {
                action: "copy volume",
                object,
                reason: format!(
                    "the helper container {helper} ended in an unexpected state: {}",
                    other.map_or_else(|| "removed".to_string(), |s| s.to_string())
                ),
            }),
        }
    }
}
