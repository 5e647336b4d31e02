//! Helpers for tests against the real Docker engine: images built once, cleanup guaranteed.

use std::collections::BTreeMap;

use rollout::engine::docker::DockerEngine;
use rollout::engine::{Engine, labels};

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Connects to the engine, failing the test (not skipping it) when there is none.
pub async fn engine() -> DockerEngine {
    DockerEngine::connect(None)
        .await
        .unwrap_or_else(|e| panic!("these tests need a running Docker engine: {e}"))
}

/// Builds the demo images (cached by the engine after the first build).
pub async fn demo_images(engine: &DockerEngine) {
    for image in rollout::demo::images().expect("demo images (is busybox-static installed?)") {
        engine
            .build_image(&image.tag, &image.context)
            .await
            .expect("build demo image");
    }
}

/// Removes everything labelled with an environment when dropped, even if the test panicked.
pub struct Cleanup {
    pub environment: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let env = self.environment.clone();
        // A fresh thread: Drop may run inside a runtime, which cannot block on another one.
        let _ = std::thread::spawn(move || {
            runtime().block_on(async {
                if let Ok(engine) = DockerEngine::connect(None).await {
                    let selector = BTreeMap::from([(labels::ENVIRONMENT.to_string(), env)]);
                    let _ = engine.remove_labelled(&selector).await;
                }
            })
        })
        .join();
    }
}

/// Starts every service of the project's environment as production through the engine seam,
/// with the labels, as a promotion would leave it (run id `run`). Secrets come from `lookup`.
pub async fn start_production(
    project: &std::path::Path,
    run: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> rollout::manifest::env::Environment {
    use rollout::engine::Role;
    use rollout::engine::spec::{
        base_labels, production_container, production_network, production_volume,
    };
    let env = rollout::project::Project::open(project)
        .expect("open")
        .environment(None, None, lookup)
        .expect("environment")
        .environment;
    let engine = engine().await;
    let labels = base_labels(&env, Role::Production, run);
    engine
        .ensure_network(&production_network(&env.name), &labels)
        .await
        .expect("network");
    for svc in &env.services {
        for v in &svc.volumes {
            let volume = production_volume(&env.name, &svc.name, &v.name);
            engine
                .ensure_volume(&volume, &labels)
                .await
                .expect("volume");
        }
        engine
            .run_container(&production_container(&env, svc, run))
            .await
            .expect("run container");
    }
    env
}
