//! `testEnv`: the test version the later test steps run against, and its teardown at the end
//! of the run, whatever happened.

use std::time::{Duration, Instant};

use super::super::walk::Walk;
use crate::engine::{Engine, Removed};
use crate::exec::Stop;
use crate::manifest::env::Environment;
use crate::progress::{Progress, Status};
use crate::report::run::Teardown;
use crate::testenv;

pub(super) async fn run(
    w: &mut Walk<'_>,
    ttl: Duration,
    copy_data: &[String],
) -> Result<String, Stop> {
    let o = testenv::Options {
        ttl,
        copy_data: copy_data.to_vec(),
        owner: Some(crate::owner::current()),
    };
    if let Some(p) = &w.production {
        p.journal.intent("testEnv", serde_json::json!({})).await?;
    }
    // From here on the run owns whatever of a test version exists: teardown removes it.
    w.made_test_env = true;
    let t = testenv::up(w.engine, w.env, w.run, &o, w.now, w.progress, w.cancel).await?;
    if let Some(p) = &w.production
        && let Err(e) = p.journal.done("testEnv", serde_json::json!({})).await
    {
        w.progress.note(&format!("  {e}"));
    }
    let detail = format!(
        "test version {} is up: {} services healthy",
        t.network,
        t.services.len()
    );
    w.test_env = Some(t);
    Ok(detail)
}

/// Removes the run's test version, reporting what went.
pub async fn teardown(
    engine: &dyn Engine,
    env: &Environment,
    run: &str,
    progress: &dyn Progress,
) -> Teardown {
    let t0 = Instant::now();
    let task = "teardown of the test version";
    match testenv::down(engine, &env.name, run).await {
        Ok(Removed {
            containers,
            networks,
            volumes,
        }) => {
            let detail =
                format!("removed {containers} containers, {networks} networks, {volumes} volumes");
            progress.end(task, Status::Ok, &detail, t0.elapsed());
            Teardown {
                containers,
                networks,
                volumes,
                error: None,
            }
        }
        Err(e) => {
            progress.end(task, Status::Failed, &e.to_string(), t0.elapsed());
            Teardown {
                containers: 0,
                networks: 0,
                volumes: 0,
                error: Some(e.to_string()),
            }
        }
    }
}
