//! `rollout report`: the change documents of real runs on the real engine: a promotion through
//! a canary (with a secret whose value changes, and a reason that tries to inject markup), its
//! approvals recorded as `rollout approve` will record them, rendered in three formats and the
//! HTML checked in headless Chromium; a rehearsal's report; bad run ids.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::support::docker::{Cleanup, demo_images, engine, runtime};
use crate::support::{Project, chromium, chromium_dom, free_port, unique};

const SECRET_V1: &str = "first-session-key-9f3a7c";
const SECRET_V2: &str = "second-session-key-41be0d";
const REASON: &str = "<script>alert('pwned')</script> CHG-1234 & \"upgrade\" | web 2.5.0";
const APPROVAL_NOTE: &str = "OK for <b>tonight</b> after the \"backup\" & only then";

fn manifest(env: &str, port: u16, image: &str, api_url: &str) -> String {
    format!(
        "apiVersion: rollout/v1\nkind: Environment\nname: {env}\nclient: acme\nservices:\n  web:\n    image: {image}\n    env: {{ API_URL: \"{api_url}\" }}\n    secrets: {{ SESSION_KEY: {{ fromEnv: REPORT_SESSION_KEY }} }}\n    ports: [ {{ name: http, container: 8080, public: {port} }} ]\n    health: {{ http: {{ port: 8080, path: /healthz }}, interval: 200ms, startPeriod: 3s, retries: 2 }}\n"
    )
}

const PLAYBOOK: &str = "apiVersion: rollout/v1\nkind: Playbook\nname: full\nsteps:\n  - testEnv: {}\n  - smoke: { checks: [ { http: { service: web, path: /healthz, expectStatus: 200 } }, { tcp: { service: web, port: 8080 } } ] }\n  - canary: { weight: 50, hold: 2s, analysis: { maxErrorRate: 0.05, maxP99: 2s, minRequests: 5 } }\n  - promote: { drain: 1s }\n  - smoke: { target: production, checks: [ { http: { service: web, path: /healthz } } ] }\n";

/// GETs on the public port until dropped, so the canary has traffic to analyse.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(port: u16) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = c.write_all(
                        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                    );
                    let _ = c.read_to_end(&mut Vec::new());
                    n.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Traffic {
            stop,
            sent,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_id(stdout: &str) -> String {
    stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("run "))
        .unwrap_or_else(|| panic!("the first line is not `run <id>`:\n{stdout}"))
        .trim()
        .to_string()
}

/// Every byte under `dir` as text, to look for a secret anywhere (files, the store, its WAL).
fn all_bytes_under(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push_str(&all_bytes_under(&p));
        } else {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).expect("read")));
        }
    }
    out
}

/// Where the rendered documents and the screenshot are kept for a person to look at.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

#[test]
fn a_real_promotion_reports_in_three_formats_and_renders_in_chromium() {
    let rt = runtime();
    let name = unique("rp");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let port = free_port();
    let project = Project::new()
        .file("rollout.yaml", "proxy: { bind: 127.0.0.1 }\n")
        .playbook("full", PLAYBOOK)
        .manifest(
            &name,
            &manifest(&name, port, "shop-web:2.4.0", "http://api:9000"),
        );

    // v1: the first deployment.
    project
        .run_with(
            &["promote", "-p", "full", "--yes"],
            &[("REPORT_SESSION_KEY", SECRET_V1)],
        )
        .code(0)
        .stdout_has("promoted");

    // v2: new image, a changed env value and a new secret value, through a canary under traffic.
    std::fs::write(
        project.path().join(format!("manifests/{name}.yaml")),
        manifest(&name, port, "shop-web:2.5.0", "http://api:9001"),
    )
    .expect("manifest");
    let traffic = Traffic::start(port);
    let promoted = project
        .run_with(
            &["promote", "-p", "full", "--yes", "--reason", REASON],
            &[("REPORT_SESSION_KEY", SECRET_V2)],
        )
        .code(0)
        .stdout_has("promoted");
    let sent = traffic.sent.load(Ordering::Relaxed);
    drop(traffic);
    let run = run_id(&promoted.stdout);

    // JSON: the data, camelCase, as the run left it.
    let data = project
        .run(&["report", "latest", "-o", "json"])
        .code(0)
        .json();
    assert_eq!(data["run"], run.as_str());
    assert_eq!(data["kind"], "promotion");
    assert_eq!(data["outcome"]["outcome"], "promoted");
    assert_eq!(data["reason"], REASON);
    assert_eq!(data["revision"], 2);
    let web = &data["changes"][0];
    assert_eq!(web["service"], "web");
    assert_eq!(web["action"], "update");
    let fields: Vec<(String, String, String)> = web["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("-").to_string();
            (s("field"), s("before"), s("after"))
        })
        .collect();
    for expected in [
        ("image", "shop-web:2.4.0", "shop-web:2.5.0"),
        ("env API_URL", "http://api:9000", "http://api:9001"),
        (
            "secret SESSION_KEY",
            "set (value hidden)",
            "changed (value hidden)",
        ),
    ] {
        let expected = (
            expected.0.to_string(),
            expected.1.to_string(),
            expected.2.to_string(),
        );
        assert!(fields.contains(&expected), "{expected:?} not in {fields:?}");
    }
    let steps = data["steps"].as_array().expect("steps");
    assert!(
        steps.iter().all(|s| s["started"].is_string()),
        "every step has its start: {steps:?}"
    );
    let canary = steps
        .iter()
        .find(|s| {
            s["description"]
                .as_str()
                .unwrap_or("")
                .starts_with("canary")
        })
        .expect("a canary step");
    let figures = &canary["canary"][0];
    assert_eq!(figures["service"], "web");
    assert_eq!(figures["weight"], 50);
    assert_eq!(figures["analysis"]["verdict"], "pass");
    let requests = figures["requests"].as_u64().expect("requests");
    assert!(
        requests >= 5 && requests <= sent,
        "the canary counted {requests} of the {sent} requests sent"
    );
    assert_eq!(figures["errors"], 0);
    assert!(figures["p99Ms"].as_u64().is_some(), "{figures}");
    let checks: Vec<&str> = steps
        .iter()
        .flat_map(|s| s["checks"].as_array().cloned().unwrap_or_default())
        .map(|c| c["verdict"]["kind"].as_str().unwrap_or("").to_string())
        .map(|k| if k == "pass" { "pass" } else { "other" })
        .collect();
    assert_eq!(checks, ["pass", "pass", "pass"], "{steps:?}");

    // Approvals and an authorization, recorded in the run as `rollout approve` will record them.
    let state = rollout::project::Project::open(project.path())
        .expect("project")
        .state_dir();
    {
        let store = rollout::store::Store::open(&state).expect("store");
        let mut record = store.run(&run).expect("read").expect("the run is recorded");
        record.report["approvals"] = serde_json::json!([
            { "by": "claire.client", "role": "client", "at": "2026-03-02T20:55:00Z", "note": APPROVAL_NOTE }
        ]);
        record.report["authorizations"] = serde_json::json!([
            { "party": "hosting-co", "reference": "CHG-2291", "by": "ops@hosting-co",
              "note": "agreed by phone", "expires": "2026-03-03T06:00:00Z" }
        ]);
        store.record_run(&record).expect("record");
    }

    let dir = artifacts();
    let md = project.run(&["report", &run, "-o", "md"]).code(0).stdout;
    let json = project.run(&["report", &run, "-o", "json"]).code(0).stdout;
    let html_path = dir.join("promotion.html");
    project
        .run(&[
            "report",
            &run,
            "-o",
            "html",
            "--out",
            html_path.to_str().expect("utf-8"),
        ])
        .code(0)
        .stdout_has("written to");
    let html = std::fs::read_to_string(&html_path).expect("html");
    std::fs::write(dir.join("promotion.md"), &md).expect("write md");

    // Three formats: the approval note, and no secret value.
    assert!(md.contains(APPROVAL_NOTE), "{md}");
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    assert_eq!(parsed["approvals"][0]["note"], APPROVAL_NOTE);
    assert!(
        html.contains(
            "OK for &lt;b&gt;tonight&lt;/b&gt; after the &quot;backup&quot; &amp; only then"
        ),
        "the note is escaped in the HTML"
    );
    for doc in [&md, &json, &html] {
        for secret in [SECRET_V1, SECRET_V2] {
            assert!(!doc.contains(secret), "a secret value is in a report");
        }
        assert!(doc.contains("claire.client") && doc.contains("CHG-2291"));
        assert!(doc.contains("changed (value hidden)"));
    }
    // Nor anywhere rollout keeps what it did: report files, the store and its journal.
    let kept = all_bytes_under(&state);
    for secret in [SECRET_V1, SECRET_V2] {
        assert!(
            !kept.contains(secret),
            "a secret value is in the state directory"
        );
    }
    assert!(md.contains("| Outcome | **promoted** |"), "{md}");
    assert!(
        md.contains("| image | shop-web:2.4.0 | shop-web:2.5.0 |"),
        "{md}"
    );
    assert!(md.contains("## Canary analysis"), "{md}");

    // Chromium parses the file: the DOM holds the note as text (not as a <b> element), the
    // reason's script as text (no <script> element at all), the checks and the outcome.
    let profile = tempfile::tempdir().expect("profile");
    let url = format!("file://{}", html_path.display());
    let dom = chromium_dom(profile.path(), &url);
    std::fs::write(dir.join("promotion.dom.html"), &dom).expect("write dom");
    assert!(
        dom.contains("OK for &lt;b&gt;tonight&lt;/b&gt; after the \"backup\" &amp; only then"),
        "the approval note is not in the DOM as text:\n{dom}"
    );
    assert!(!dom.contains("<b>"), "the note became markup");
    assert!(
        !dom.to_lowercase().contains("<script"),
        "the reason became a script"
    );
    assert!(dom.contains("&lt;script&gt;alert('pwned')&lt;/script&gt; CHG-1234"));
    assert!(
        dom.contains("<code>http GET web /healthz"),
        "check names:\n{dom}"
    );
    assert!(dom.contains("id=\"outcome\">promoted</span>"), "{dom}");
    for secret in [SECRET_V1, SECRET_V2] {
        assert!(!dom.contains(secret));
    }

    // It renders: a screenshot (looked at by a person when this changes) and a print to PDF.
    let png = dir.join("promotion.png");
    chromium(
        profile.path(),
        &[
            "--window-size=1200,2200",
            &format!("--screenshot={}", png.display()),
        ],
        &url,
    );
    let png_bytes = std::fs::read(&png).expect("screenshot");
    assert!(png_bytes.starts_with(b"\x89PNG\r\n\x1a\n") && png_bytes.len() > 20_000);
    let pdf = dir.join("promotion.pdf");
    chromium(
        profile.path(),
        &[
            "--no-pdf-header-footer",
            &format!("--print-to-pdf={}", pdf.display()),
        ],
        &url,
    );
    let pdf_bytes = std::fs::read(&pdf).expect("pdf");
    assert!(pdf_bytes.starts_with(b"%PDF") && pdf_bytes.len() > 10_000);

    // v3 answers 500: the canary's analysis fails and the report carries the rollback evidence.
    std::fs::write(
        project.path().join(format!("manifests/{name}.yaml")),
        manifest(&name, port, "shop-web:2.7.0", "http://api:9001"),
    )
    .expect("manifest");
    let traffic = Traffic::start(port);
    let failed = project
        .run_with(
            &["promote", "-p", "full", "--yes", "--reason", "web 2.7.0"],
            &[("REPORT_SESSION_KEY", SECRET_V2)],
        )
        .code(1);
    drop(traffic);
    let run = run_id(&failed.stdout);
    let md = project.run(&["report", "latest"]).code(0).stdout;
    std::fs::write(dir.join("rolled-back.md"), &md).expect("write md");
    assert!(md.contains(&format!("# Promotion {run} of {name}")), "{md}");
    assert!(md.contains("| Outcome | **rolled back**: web: "), "{md}");
    assert!(md.contains("### Rollback evidence"), "{md}");
    assert!(
        md.contains("- failed step: 3. canary: 50% of traffic"),
        "{md}"
    );
    assert!(
        md.contains("- traffic back on the previous version in "),
        "{md}"
    );
    assert!(md.contains("| FAIL: error rate above 5.00% |"), "{md}");
    assert!(md.contains("| 4 | promote: switch all traffic"), "{md}");
    assert!(md.contains("| not run |"), "{md}");
    let data = project.run(&["report", &run, "-o", "json"]).code(0).json();
    assert!(data["rollbackMs"].as_u64().is_some(), "{data}");
    assert_eq!(data["outcome"]["outcome"], "rolledBack");
}

#[test]
fn a_rehearsal_is_recorded_and_reported_as_latest() {
    let rt = runtime();
    let name = unique("rr");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let project = Project::new()
        .env("REPORT_SESSION_KEY", SECRET_V1)
        .playbook("full", PLAYBOOK)
        .manifest(
            &name,
            &manifest(&name, free_port(), "shop-web:2.4.0", "http://api:9000"),
        );
    let rehearsal = project.run(&["rehearse"]).code(0);
    let run = run_id(&rehearsal.stdout);
    let html = project
        .run(&["report", "latest", "-o", "html", "-e", &name])
        .code(0)
        .stdout;
    assert!(
        html.contains(&format!("Rehearsal {run} of {name}")),
        "{html}"
    );
    assert!(html.contains("id=\"outcome\">passed</span>"));
    // Nothing runs in production yet: the rehearsed version creates the service.
    assert!(html.contains("web: created"), "{html}");
    assert!(html.contains("<code>tcp web:8080"), "{html}");
    assert!(html.contains("skipped in rehearsal (changes production)"));
    assert!(!html.contains(SECRET_V1));
    let md = project.run(&["report", &run]).code(0).stdout;
    assert!(
        md.contains("| secret SESSION_KEY | — | set (value hidden) |"),
        "{md}"
    );
    assert!(!md.contains(SECRET_V1));
}

#[test]
fn unknown_and_malformed_run_ids_are_clear_errors() {
    let project = Project::new().manifest("shop", &crate::support::one_service("shop", "x:1"));
    project
        .run(&["report", "zzzz9999"])
        .code(1)
        .stderr_has("no run `zzzz9999` is recorded in");
    project
        .run(&["report", "../../etc/passwd", "-o", "html"])
        .code(1)
        .stderr_has("is not a run id");
    project
        .run(&["report", "latest"])
        .code(1)
        .stderr_has("environment `shop` has no recorded run yet");
}
