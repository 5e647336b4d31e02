//! `rollout demo`: builds the demo client's images on the local engine; shows the plan for the
//! demo environment (this repository's `manifests/` and `playbooks/`) and rehearses it; then
//! promotes a live copy of its web front through v2.4.0, v2.5.0 and a broken v2.7.0 that is
//! rolled back by itself, while a load counts what the public port answered.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::output::Printer;
use crate::cli::{DemoArgs, EnvArgs, ExitStatus, Format, PlanArgs, PromoteArgs, RehearseArgs};
use crate::demo;
use crate::engine::labels;
use crate::project::Project;

/// The live part of the demo: a public port on loopback, and the environment's name.
const LIVE_PORT: u16 = 18080;
const LIVE_ENV: &str = "shop-live";

pub async fn run(dir: &Path, args: DemoArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let project = Project::open(dir)?;
    let engine = crate::session::connect(&project, "demo").await?;
    printer.out(&format!(
        "Building the demo images on {}",
        engine.describe()
    ));
    for image in demo::images().context("preparing the demo images")? {
        engine.build_image(&image.tag, &image.context).await?;
        printer.out(&format!("  built {}", image.tag));
    }
    if args.build_only {
        return Ok(ExitStatus::Success);
    }
    printer.out("\n$ rollout plan");
    let plan = PlanArgs {
        env: EnvArgs::default(),
        playbook: None,
        output: Format::Text,
    };
    if super::plan::run(dir, plan, printer).await? == ExitStatus::Changes {
        printer.out("(`rollout plan` exits 2: there are changes to carry out.)");
    }
    printer.out("\n$ rollout rehearse");
    let rehearse = RehearseArgs {
        env: EnvArgs::default(),
        playbook: None,
        output: Format::Text,
    };
    if super::rehearse::run(dir, rehearse, printer).await? != ExitStatus::Success {
        anyhow::bail!("the rehearsal of the demo environment failed");
    }
    live(engine.as_ref(), printer).await
}

/// Promotions under load on a throwaway project, cleaned up afterwards.
async fn live(engine: &dyn crate::engine::Engine, printer: Printer) -> anyhow::Result<ExitStatus> {
    let live = std::env::temp_dir().join(format!("rollout-demo-{}", std::process::id()));
    std::fs::create_dir_all(live.join("manifests"))?;
    std::fs::create_dir_all(live.join("playbooks"))?;
    std::fs::write(live.join("rollout.yaml"), "proxy: { bind: 127.0.0.1 }\n")?;
    std::fs::write(
        live.join("playbooks/live.yaml"),
        "apiVersion: rollout/v1\nkind: Playbook\nname: live\nsteps:\n  - testEnv: {}\n  - smoke: { checks: [ { http: { service: web, path: /healthz } } ] }\n  - canary: { weight: 25, hold: 3s, analysis: { maxErrorRate: 0.01, minRequests: 5 } }\n  - promote: { drain: 2s }\n  - smoke: { target: production, checks: [ { http: { service: web, path: /healthz } } ] }\n",
    )?;
    let manifest = |version: &str| {
        format!(
            "apiVersion: rollout/v1\nkind: Environment\nname: {LIVE_ENV}\nclient: acme\nservices:\n  web:\n    image: shop-web:{version}\n    ports: [ {{ name: http, container: 8080, public: {LIVE_PORT} }} ]\n    health: {{ http: {{ port: 8080, path: /healthz }}, interval: 200ms }}\n"
        )
    };
    let promote = |version: &'static str| {
        let live = live.clone();
        let text = manifest(version);
        async move {
            std::fs::write(live.join(format!("manifests/{LIVE_ENV}.yaml")), text)?;
            printer.out(&format!("\n$ rollout promote   # web {version}"));
            let args = PromoteArgs {
                env: EnvArgs::default(),
                playbook: None,
                yes: true,
                emergency: false,
                reason: Some(format!("demo: web {version}")),
                wait: None,
                supersede: false,
                output: Format::Text,
            };
            super::promote::run(&live, args, printer).await
        }
    };
    let result = async {
        if promote("2.4.0").await? != ExitStatus::Success {
            anyhow::bail!("the first promotion of the demo failed");
        }
        printer.out(&format!(
            "\nA load now runs against http://127.0.0.1:{LIVE_PORT}/ until the end of the demo."
        ));
        let load = Load::start(LIVE_PORT);
        let v2 = promote("2.5.0").await?;
        let v3 = promote("2.7.0").await?;
        let counts = load.stop().await;
        printer.out(&format!(
            "\nThe public port answered {} requests during the two promotions:",
            counts.values().sum::<u64>()
        ));
        for (what, n) in &counts {
            printer.out(&format!("  {n:>6}  {what}"));
        }
        let failed = counts
            .iter()
            .filter(|(k, _)| k.starts_with("failed"))
            .map(|(_, n)| n)
            .sum::<u64>();
        printer.out(&format!("  failed connections or requests: {failed}"));
        anyhow::ensure!(v2 == ExitStatus::Success, "promoting web 2.5.0 failed");
        anyhow::ensure!(v3 == ExitStatus::Failure, "web 2.7.0 was not rolled back");
        anyhow::ensure!(failed == 0, "{failed} requests failed during the demo");
        Ok(ExitStatus::Success)
    }
    .await;
    printer.out(&format!(
        "\nCleaning up the live demo environment {LIVE_ENV}"
    ));
    let selector = BTreeMap::from([(labels::ENVIRONMENT.to_string(), LIVE_ENV.to_string())]);
    engine.remove_labelled(&selector).await?;
    let _ = std::fs::remove_dir_all(&live);
    result
}

/// A steady load of fresh connections, counting answers by status and version.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<BTreeMap<String, u64>>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..4)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut counts = BTreeMap::new();
                    while !stop.load(Ordering::Relaxed) {
                        *counts.entry(one_request(port).await).or_insert(0) += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    counts
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(self) -> BTreeMap<String, u64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = BTreeMap::new();
        for t in self.tasks {
            for (k, v) in t.await.unwrap_or_default() {
                *all.entry(k).or_insert(0) += v;
            }
        }
        all
    }
}

async fn one_request(port: u16) -> String {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(text)) => {
            let status = text.split_whitespace().nth(1).unwrap_or("?").to_string();
            let version = text
                .split("shop web ")
                .nth(1)
                .and_then(|r| r.split(|c: char| c == '<' || c.is_whitespace()).next())
                .unwrap_or("?");
            format!("HTTP {status} from web {version}")
        }
        Ok(Err(e)) => format!("failed: {e}"),
        Err(_) => "failed: no answer within 10s".into(),
    }
}
