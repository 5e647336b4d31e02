//! The edge proxy of an environment, as a container: started on demand, found again after a
//! restart, and driven through its admin API.
//!
//! The proxy runs `FROM scratch` from rollout's own static binary (like kamal-proxy, it must
//! outlive the CLI, and the engine's restart policy brings it back after a crash or reboot). Its
//! admin port is published on 127.0.0.1 only, on a port the engine picks at each start, so the
//! port is looked up every time rather than remembered.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::engine::image::{PROXY_ADMIN_PORT, proxy_context, proxy_image, static_rollout_binary};
use crate::engine::spec::{production_network, proxy_container, proxy_name};
use crate::engine::{Engine, EngineError};
use crate::manifest::env::Environment;
use crate::proxy::client::{AdminClient, AdminError};

/// How long a freshly started proxy gets to answer on its admin API.
const READY_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the edge proxy image cannot be built: {0}")]
    Image(std::io::Error),
    #[error("the edge proxy {container} has no admin port published on 127.0.0.1")]
    NoAdminPort { container: String },
    #[error("the edge proxy {container} did not answer on its admin API within {}s: {source}", READY_WITHIN.as_secs())]
    NotReady {
        container: String,
        source: AdminError,
    },
    #[error("the edge proxy {container}: {source}")]
    Admin {
        container: String,
        source: AdminError,
    },
}

/// Whether `env` needs an edge proxy: it does when any service has a public port.
pub fn needed(env: &Environment) -> bool {
    env.services
        .iter()
        .any(|s| s.ports.iter().any(|p| p.public.is_some()))
}

/// The proxy image's tag, computed once per process: it digests the whole static binary, and a
/// promotion calls [`ensure`] at every routing change.
fn image_tag() -> Result<String, EdgeError> {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(tag) = TAG.get() {
        return Ok(tag.clone());
    }
    let binary = static_rollout_binary().map_err(EdgeError::Image)?;
    Ok(TAG.get_or_init(|| proxy_image(&binary)).clone())
}

/// Starts the edge proxy of `env` if it is not running (building its image first if needed),
/// and waits until its admin API answers.
pub async fn ensure(
    engine: &dyn Engine,
    env: &Environment,
    run: &str,
    bind: std::net::IpAddr,
) -> Result<(), EdgeError> {
    let image = image_tag()?;
    if !engine.has_image(&image).await? {
        let binary = static_rollout_binary().map_err(EdgeError::Image)?;
        engine.build_image(&image, &proxy_context(binary)).await?;
    }
    let spec = proxy_container(env, run, &bind.to_string(), &image);
    engine
        .ensure_network(&production_network(&env.name), &spec.labels)
        .await?;
    for (volume, _) in &spec.volumes {
        engine.ensure_volume(volume, &spec.labels).await?;
    }
    engine.run_container(&spec).await?;
    let t0 = Instant::now();
    loop {
        let result = match admin(engine, &env.name).await {
            Ok(client) => client
                .healthz()
                .await
                .map_err(|source| EdgeError::NotReady {
                    container: spec.name.clone(),
                    source,
                }),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if t0.elapsed() >= READY_WITHIN => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A client for the admin API of `env`'s proxy, on the port the engine published it on now.
pub async fn admin(engine: &dyn Engine, env: &str) -> Result<AdminClient, EdgeError> {
    let container = proxy_name(env);
    let port = engine
        .published_port(&container, PROXY_ADMIN_PORT)
        .await?
        .ok_or(EdgeError::NoAdminPort { container })?;
    Ok(AdminClient::new(SocketAddr::from(([127, 0, 0, 1], port))))
}
