//! Reaching pods from this machine, as `kubectl port-forward` and `kubectl exec` do, so the
//! playbook's explicit http, tcp and exec checks run on this backend unchanged:
//!
//! - [`KubeEngine::forward`]: a listener on `127.0.0.1` (an ephemeral port) for one port of one
//!   Deployment; each connection accepted is carried to a running pod of the Deployment (looked
//!   for again per connection, so a restarted pod is followed) through
//!   the API server's `portforward` subresource (a WebSocket, `v4.channel.k8s.io`). The checks
//!   then connect to `127.0.0.1:<port>` as they do to a container's published port on Docker.
//!   The listener lives as long as the engine; one per Deployment and port.
//! - [`KubeEngine::exec_in_pod`]: the command run in the Deployment's running pod through the
//!   `exec` subresource, its output and exit code read back, bounded in time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams, ListParams};
use tokio::io::AsyncReadExt;

use super::{KubeEngine, api_error, pods_of};
use crate::engine::{EngineError, ExecOutput};

/// How much of a command's output is kept (its end), as on Docker.
const OUTPUT_LIMIT: usize = 64 << 10;

/// The listeners an engine keeps open: (Deployment, container port) -> local port. Their tasks
/// end with the engine.
#[derive(Default)]
pub struct Forwards {
    open: Mutex<HashMap<(String, u16), (u16, tokio::task::AbortHandle)>>,
}

impl Drop for Forwards {
    fn drop(&mut self) {
        let open = self.open.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, (_, task)) in open.drain() {
            task.abort();
        }
    }
}

/// The name of a running (and, if it has a readiness probe, ready) pod in `pods`.
pub fn running_pod(pods: &[Pod]) -> Option<String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find(|p| {
            p.status.as_ref().is_some_and(|s| {
                s.phase.as_deref().is_none_or(|phase| phase == "Running")
                    && s.container_statuses.as_ref().is_some_and(|c| {
                        c.iter()
                            .all(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
                    })
            })
        })
        .and_then(|p| p.metadata.name.clone())
}

/// The exit code an `exec`'s final status gives: 0 on success, the `ExitCode` cause otherwise.
pub fn exit_code(status: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Status) -> i64 {
    if status.status.as_deref() == Some("Success") {
        return 0;
    }
    status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message.as_deref())
        .and_then(|m| m.parse().ok())
        .unwrap_or(-1)
}

/// A running pod of the pods `selector` picks in `pods`' namespace (Deployment `container`'s).
async fn find_running(
    pods: &Api<Pod>,
    selector: &str,
    container: &str,
) -> Result<String, EngineError> {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| api_error(e, "list", &format!("Pods of {container}")))?;
    running_pod(&list.items).ok_or_else(|| EngineError::Call {
        action: "reach",
        object: format!("Deployment {container}"),
        reason: "none of its pods is running".into(),
    })
}

impl KubeEngine {
    /// The pods of Deployment `container` (their namespace's API) and its pod selector.
    async fn pods_of_deployment(&self, container: &str) -> Result<(Api<Pod>, String), EngineError> {
        let d = self
            .find_deployment(container)
            .await?
            .ok_or_else(|| EngineError::Call {
                action: "reach",
                object: format!("Deployment {container}"),
                reason: "it is not in the cluster".into(),
            })?;
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let selector = pods_of(&d).unwrap_or_default();
        Ok((self.api(&ns), selector))
    }

    /// A local port carried to `port` of Deployment `container`'s running pod (opened once).
    pub(super) async fn forward(&self, container: &str, port: u16) -> Result<u16, EngineError> {
        let key = (container.to_string(), port);
        if let Some((local, _)) = self
            .forwards
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(*local);
        }
        // A running pod is looked for now, so a Deployment without one fails here, clearly; each
        // connection looks again, so a pod replaced meanwhile (a restart) is followed.
        let (pods, selector) = self.pods_of_deployment(container).await?;
        find_running(&pods, &selector, container).await?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| EngineError::Call {
                action: "forward",
                object: format!("port {port} of {container}"),
                reason: format!("cannot listen on 127.0.0.1: {e}"),
            })?;
        let local = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let name = container.to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (pods, selector, name) = (pods.clone(), selector.clone(), name.clone());
                tokio::spawn(async move {
                    // No pod to carry it to: the connection closes, and the check says so.
                    let Ok(pod) = find_running(&pods, &selector, &name).await else {
                        return;
                    };
                    let Ok(mut forwarder) = pods.portforward(&pod, &[port]).await else {
                        return;
                    };
                    if let Some(mut upstream) = forwarder.take_stream(port) {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                    }
                    drop(forwarder);
                });
            }
        });
        self.forwards
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (local, task.abort_handle()));
        Ok(local)
    }

    /// Runs `command` in Deployment `container`'s running pod, bounded by `limit`.
    pub(super) async fn exec_in_pod(
        &self,
        container: &str,
        command: &[String],
        limit: Duration,
    ) -> Result<ExecOutput, EngineError> {
        let (pods, selector) = self.pods_of_deployment(container).await?;
        let pod = find_running(&pods, &selector, container).await?;
        let what = || format!("`{}` in {container} (pod {pod})", command.join(" "));
        let run = async {
            let mut attached = pods
                .exec(
                    &pod,
                    command.to_vec(),
                    &AttachParams::default()
                        .stdin(false)
                        .stdout(true)
                        .stderr(true),
                )
                .await
                .map_err(|e| api_error(e, "exec", &what()))?;
            let mut out = Vec::new();
            let mut err = Vec::new();
            let stdout = attached.stdout();
            let stderr = attached.stderr();
            let status = attached.take_status();
            let read_out = async {
                if let Some(mut s) = stdout {
                    let _ = s.read_to_end(&mut out).await;
                }
            };
            let read_err = async {
                if let Some(mut s) = stderr {
                    let _ = s.read_to_end(&mut err).await;
                }
            };
            tokio::join!(read_out, read_err);
            let code = match status {
                Some(status) => status.await.map_or(-1, |s| exit_code(&s)),
                None => -1,
            };
            let _ = attached.join().await;
            out.extend_from_slice(&err);
            let start = out.len().saturating_sub(OUTPUT_LIMIT);
            Ok(ExecOutput {
                exit_code: code,
                output: String::from_utf8_lossy(&out[start..]).into_owned(),
            })
        };
        tokio::time::timeout(limit, run)
            .await
            .map_err(|_| EngineError::ExecTimeout {
                command: command.join(" "),
                container: container.to_string(),
                limit,
            })?
    }
}

/// Against a stand-in API server on loopback that speaks the API's WebSocket subresources the way
/// the kubelet's streaming server does (`v4.channel.k8s.io`: a channel byte before every frame;
/// port-forward announces its port on its data and error channels first; exec ends with a
/// `Status` on channel 3), and plain JSON for the rest. The "pod" behind it is the stand-in
/// itself: an HTTP server on port 8080, and a shell whose `false` exits 3.
#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    use super::*;

    pub(crate) type Seen = Arc<Mutex<Vec<String>>>;

    fn deployment() -> Value {
        json!({ "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "shop-web-r1", "namespace": "rollout-shop", "labels": { "rollout.environment": "shop" } },
            "spec": { "selector": { "matchLabels": { "rollout.environment": "shop", "rollout.run": "r1", "rollout.service": "web" } },
                "template": { "spec": { "containers": [ { "name": "web", "image": "web:1" } ] } } } })
    }

    pub(crate) fn pod(name: &str, running: bool) -> Value {
        let state = if running {
            json!({ "running": { "startedAt": "2026-01-01T10:00:00Z" } })
        } else {
            json!({ "waiting": { "reason": "ContainerCreating" } })
        };
        json!({ "metadata": { "name": name }, "status": { "phase": if running { "Running" } else { "Pending" },
            "containerStatuses": [ { "name": "web", "image": "web:1", "imageID": "", "ready": running, "restartCount": 0, "state": state } ] } })
    }

    /// Serves until the test ends; `pods` is what the pod list answers.
    pub(crate) async fn api_server(pods: Vec<Value>) -> (KubeEngine, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_one(conn, pods.clone(), log.clone()));
            }
        });
        let config = kube::Config::new(url.parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        (KubeEngine::new(client, "stand-in"), seen)
    }

    async fn serve_one(mut conn: tokio::net::TcpStream, pods: Vec<Value>, seen: Seen) {
        let mut buf = vec![0u8; 8192];
        let head = loop {
            let n = conn.peek(&mut buf).await.unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.contains("\r\n\r\n") || n == 0 {
                break text;
            }
        };
        let line = head.lines().next().unwrap_or_default().to_string();
        let path = line.split(' ').nth(1).unwrap_or_default().to_string();
        seen.lock().unwrap().push(format!("GET {path}"));
        if head.to_ascii_lowercase().contains("upgrade: websocket") {
            let mut ws = tokio_tungstenite::accept_hdr_async(conn, v4_channel)
                .await
                .unwrap();
            if path.contains("/portforward?") {
                // The port on the data channel (0) and the error channel (1), little-endian.
                for ch in [0u8, 1] {
                    ws.send(Message::binary(vec![ch, 0x90, 0x1f]))
                        .await
                        .unwrap();
                }
                let mut request = Vec::new();
                while let Some(Ok(Message::Binary(frame))) = ws.next().await {
                    if frame.first() == Some(&0) {
                        request.extend_from_slice(&frame[1..]);
                    }
                    if request.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&request).into_owned();
                let body = format!("pod answered {}", text.lines().next().unwrap_or_default());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut frame = vec![0u8];
                frame.extend_from_slice(answer.as_bytes());
                ws.send(Message::binary(frame)).await.unwrap();
                let _ = ws.close(None).await;
            } else if path.contains("/exec?") {
                let fails = path.contains("command=false");
                let mut out = vec![1u8];
                out.extend_from_slice(b"checked 3 tables\n");
                ws.send(Message::binary(out)).await.unwrap();
                let mut err = vec![2u8];
                err.extend_from_slice(b"warning: slow disk\n");
                ws.send(Message::binary(err)).await.unwrap();
                let status = if fails {
                    json!({ "metadata": {}, "status": "Failure", "message": "command terminated with non-zero exit code", "reason": "NonZeroExitCode",
                        "details": { "causes": [ { "reason": "ExitCode", "message": "3" } ] } })
                } else {
                    json!({ "metadata": {}, "status": "Success" })
                };
                let mut frame = vec![3u8];
                frame.extend_from_slice(status.to_string().as_bytes());
                ws.send(Message::binary(frame)).await.unwrap();
                let _ = ws.close(None).await;
            }
            return;
        }
        let end = head.find("\r\n\r\n").unwrap() + 4;
        let mut consumed = vec![0u8; end];
        conn.read_exact(&mut consumed).await.unwrap();
        let body = if path.starts_with("/apis/apps/v1/deployments?") {
            json!({ "kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {}, "items": [deployment()] })
        } else if path.starts_with("/api/v1/namespaces/rollout-shop/pods?") {
            json!({ "kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods })
        } else {
            json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": path })
        };
        let status = if body["kind"] == "Status" {
            "404 Not Found"
        } else {
            "200 OK"
        };
        let text = body.to_string();
        let _ = conn
            .write_all(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                )
                .as_bytes(),
            )
            .await;
    }

    /// Answers the upgrade with the subprotocol the API server picks for kube's client.
    #[allow(clippy::result_large_err)]
    fn v4_channel(
        _: &Request,
        mut response: Response,
    ) -> Result<Response, tokio_tungstenite::tungstenite::handshake::server::ErrorResponse> {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        Ok(response)
    }

    async fn get(port: u16, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// A Deployment's port on 127.0.0.1: each connection carried to its running pod (not the one
    /// still starting) through `portforward`, the same local port for every ask. The checks' own
    /// probes through it are tested beside them (`check::tests`), so `engine` needs no `check`.
    #[tokio::test]
    async fn a_port_forward_carries_each_connection_to_the_running_pod() {
        let (engine, seen) = api_server(vec![
            pod("shop-web-r1-5d9f8c-new01", false),
            pod("shop-web-r1-5d9f8c-x1x2x", true),
        ])
        .await;
        let port = engine.forward("shop-web-r1", 8080).await.unwrap();
        assert_eq!(
            engine.forward("shop-web-r1", 8080).await.unwrap(),
            port,
            "opened once"
        );
        let first = get(port, "/healthz").await;
        assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
        assert!(
            first.ends_with("pod answered GET /healthz HTTP/1.1"),
            "{first}"
        );
        let second = get(port, "/").await;
        assert!(second.ends_with("pod answered GET / HTTP/1.1"), "{second}");
        let seen = seen.lock().unwrap().clone();
        let forwards: Vec<&String> = seen.iter().filter(|r| r.contains("/portforward")).collect();
        assert_eq!(forwards.len(), 2, "one upgrade per connection: {seen:?}");
        assert!(
            forwards.iter().all(|r| *r
                == "GET /api/v1/namespaces/rollout-shop/pods/shop-web-r1-5d9f8c-x1x2x/portforward?&ports=8080"),
            "to the running pod: {seen:?}"
        );
    }

    /// exec in the running pod: output (stdout then stderr) and exit code read back; a command
    /// that fails gives its exit code.
    #[tokio::test]
    async fn exec_runs_in_the_running_pod_and_reads_back_output_and_exit_code() {
        let (engine, seen) = api_server(vec![pod("shop-web-r1-5d9f8c-x1x2x", true)]).await;
        let ok = engine
            .exec_in_pod(
                "shop-web-r1",
                &["/bin/check".into(), "--all".into()],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(ok.exit_code, 0);
        assert_eq!(ok.output, "checked 3 tables\nwarning: slow disk\n");
        let failed = engine
            .exec_in_pod("shop-web-r1", &["false".into()], Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(failed.exit_code, 3);
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.iter().any(|r| r.starts_with(
                "GET /api/v1/namespaces/rollout-shop/pods/shop-web-r1-5d9f8c-x1x2x/exec?"
            ) && r.contains("command=%2Fbin%2Fcheck&command=--all")),
            "{seen:?}"
        );
    }

    /// No pod running: port-forward and exec fail at once, saying so.
    #[tokio::test]
    async fn no_running_pod_is_said_before_anything_is_forwarded() {
        let (engine, _) = api_server(vec![pod("shop-web-r1-5d9f8c-new01", false)]).await;
        let err = engine.forward("shop-web-r1", 8080).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "reach `Deployment shop-web-r1` failed: none of its pods is running"
        );
        assert!(
            engine
                .exec_in_pod("shop-web-r1", &["true".into()], Duration::from_secs(1))
                .await
                .is_err()
        );
    }
}
