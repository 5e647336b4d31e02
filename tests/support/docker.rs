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
