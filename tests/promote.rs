//! Zero-downtime promotion against the real engine: steady load on the public port through a
//! good promotion, a candidate that never becomes healthy, one that fails its canary analysis,
//! a rollback and quick back-and-forth promotions. Not one request may fail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::docker::{Cleanup, demo_images, engine, runtime};
use crate::support::{Project, unique};

/// What one request got: the version that answered (from the page), or what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Version { status: u16, version: String },
    Error(String),
}

/// Reads one HTTP/1.1 response (status line, headers, Content-Length body) from a connection.
pub(crate) fn read_response(reader: &mut BufReader<TcpStream>) -> Result<(u16, String), String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("status line: {e}"))?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        reader
            .read_line(&mut h)
            .map_err(|e| format!("header: {e}"))?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader
                .read_line(&mut size)
                .map_err(|e| format!("chunk size: {e}"))?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {size:?}"))?;
            let mut chunk = vec![0; n + 2];
            reader
                .read_exact(&mut chunk)
                .map_err(|e| format!("chunk: {e}"))?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        return Ok((status, String::from_utf8_lossy(&body).into_owned()));
    }
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("body: {e}"))?;
        }
        None => {
            reader
                .read_to_end(&mut body)
                .map_err(|e| format!("body: {e}"))?;
        }
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub(crate) fn version_of(body: &str) -> String {
    body.split("shop web ")
        .nth(1)
        .map(|rest| {
            rest.split(|c: char| c == '<' || c.is_whitespace())
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|| format!("? {body:.40}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get,
    Post,
    Slow,
}

/// Steady load on the public port until stopped.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    sent: Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Six clients: GETs on keep-alive connections and on fresh ones, POSTs with a body that must
    /// come back, and slow (1 s) requests so that some are always in flight across a switch.
    pub(crate) fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let kinds = [
            Kind::Get,
            Kind::Get,
            Kind::Post,
            Kind::Slow,
            Kind::Get,
            Kind::Post,
        ];
        let threads = kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                let (stop, answers, sent) = (stop.clone(), answers.clone(), sent.clone());
                std::thread::spawn(move || {
                    // Every other client opens a fresh connection per request.
                    let keep_alive = i % 2 == 0 || kind == Kind::Slow;
                    let deadline = Instant::now() + Duration::from_secs(600);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let conn = TcpStream::connect(("127.0.0.1", port));
                        let Ok(conn) = conn else {
                            sent.fetch_add(1, Ordering::Relaxed);
                            answers.lock().unwrap().push(Answer::Error(format!("connect: {}", conn.unwrap_err())));
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        };
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                        let _ = conn.set_nodelay(true);
                        let mut writer = conn.try_clone().expect("clone");
                        let mut reader = BufReader::new(conn);
                        let per_connection = if keep_alive { 20 } else { 1 };
                        for _ in 0..per_connection {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            n += 1;
                            let connection = if keep_alive { "keep-alive" } else { "close" };
                            let body = format!("client-{i}-request-{n}");
                            let request = match kind {
                                Kind::Get => format!("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n"),
                                Kind::Slow => format!("GET /cgi-bin/slow HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n"),
                                Kind::Post => format!(
                                    "POST /cgi-bin/echo HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                                    body.len()
                                ),
                            };
                            sent.fetch_add(1, Ordering::Relaxed);
                            let answer = writer
                                .write_all(request.as_bytes())
                                .map_err(|e| format!("write: {e}"))
                                .and_then(|_| read_response(&mut reader))
                                .and_then(|(status, text)| {
                                    // A POST must come back whole, from whichever version took it.
                                    if kind == Kind::Post && status == 200 && !text.contains(&body) {
                                        return Err(format!("POST body lost: sent {body:?}, got {text:?}"));
                                    }
                                    Ok((status, text))
                                });
                            let failed = answer.is_err();
                            answers.lock().unwrap().push(match answer {
                                Ok((status, text)) => Answer::Version { status, version: version_of(&text) },
                                Err(e) => Answer::Error(format!("{kind:?}: {e}")),
                            });
                            if failed {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            answers,
            sent,
            threads,
        }
    }

    /// Takes the answers so far, leaving the load running.
    pub(crate) fn drain(&self) -> Vec<Answer> {
        std::mem::take(&mut *self.answers.lock().unwrap())
    }

    pub(crate) fn finish(self) -> (u64, Vec<Answer>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread");
        }
        let answers = std::mem::take(&mut *self.answers.lock().unwrap());
        (self.sent.load(Ordering::Relaxed), answers)
    }
}

pub(crate) fn manifest(env: &str, port: u16, image: &str) -> String {
    format!(
        "apiVersion: rollout/v1\nkind: Environment\nname: {env}\nclient: acme\nservices:\n  web:\n    image: {image}\n    ports: [ {{ name: http, container: 8080, public: {port} }} ]\n    health: {{ http: {{ port: 8080, path: /healthz }}, interval: 200ms, startPeriod: 3s, retries: 2 }}\n"
    )
}

/// FULL with a long hold: a candidate that fails its analysis must not be held for all of it.
const FAILFAST: &str = "apiVersion: rollout/v1\nkind: Playbook\nname: failfast\nsteps:\n  - testEnv: {}\n  - canary: { weight: 25, hold: 30s, analysis: { maxErrorRate: 0.05, minRequests: 5 } }\n  - promote: { drain: 2s }\n";
const FULL: &str = "apiVersion: rollout/v1\nkind: Playbook\nname: full\nsteps:\n  - testEnv: {}\n  - smoke: { checks: [ { http: { service: web, path: /healthz } } ] }\n  - canary: { weight: 25, hold: 2s, analysis: { maxErrorRate: 0.05, minRequests: 5 } }\n  - promote: { drain: 2s }\n  - smoke: { target: production, checks: [ { http: { service: web, path: /healthz } } ] }\n";
const QUICK: &str =
    "apiVersion: rollout/v1\nkind: Playbook\nname: quick\nsteps:\n  - promote: { drain: 1s }\n";

/// Samples what the public port serves now, synchronously.
pub(crate) fn serving(port: u16) -> Vec<String> {
    (0..10)
        .map(|_| {
            let conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let mut writer = conn.try_clone().expect("clone");
            write!(
                writer,
                "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            .expect("write");
            let (status, body) = read_response(&mut BufReader::new(conn)).expect("response");
            format!("{status} {}", version_of(&body))
        })
        .collect()
}

pub(crate) fn assert_serving(port: u16, version: &str) {
    let got = serving(port);
    assert!(
        got.iter().all(|g| g == &format!("200 {version}")),
        "expected only {version}, got {got:?}"
    );
}

#[test]
fn promotions_failures_and_rollbacks_drop_no_request() {
    let rt = runtime();
    let name = unique("zd");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let port = crate::support::free_port();
    let project = Project::new()
        .file("rollout.yaml", "proxy: { bind: 127.0.0.1 }\n")
        .playbook("full", FULL)
        .playbook("failfast", FAILFAST)
        .playbook("quick", QUICK);
    let write = |image: &str| {
        std::fs::write(
            project.path().join(format!("manifests/{name}.yaml")),
            manifest(&name, port, image),
        )
        .expect("manifest")
    };
    std::fs::create_dir_all(project.path().join("manifests")).expect("mkdir");

    // v1: the first deployment (nothing to canary against).
    write("shop-web:2.4.0");
    project
        .run(&["promote", "-p", "full", "--yes"])
        .code(0)
        .stdout_has("promoted");
    assert_serving(port, "2.4.0");
    let load = Load::start(port);
    std::thread::sleep(Duration::from_millis(500));

    // v2 through the whole playbook.
    write("shop-web:2.5.0");
    project
        .run(&["promote", "-p", "full", "--yes"])
        .code(0)
        .stdout_has("canary: 25% of traffic")
        .stdout_has("promoted");
    assert_serving(port, "2.5.0");

    // v3 never becomes healthy: refused before any traffic reaches it.
    write("shop-web:2.6.0");
    project
        .run(&["promote", "-p", "full", "--yes"])
        .code(1)
        .stdout_has("did not become healthy");
    assert_serving(port, "2.5.0");

    // v4 is healthy but answers 500: the canary's analysis catches it as soon as it has its
    // requests (issue 23: not at the end of the 30 s hold) and traffic goes back.
    write("shop-web:2.7.0");
    project
        .run(&["promote", "-p", "failfast", "--yes"])
        .code(1)
        .stdout_has("error rate above 5.00%")
        .stdout_has("into the hold of 30s")
        .stdout_has("rolled back");
    assert_serving(port, "2.5.0");
    let answers = load.drain();
    let v4: Vec<&Answer> = answers
        .iter()
        .filter(|a| matches!(a, Answer::Version { version, .. } if version == "2.7.0"))
        .collect();
    assert!(!v4.is_empty(), "the canary sent some traffic to v4");

    // Rollback to v1 (issue 23: it reads as a rollback, never as a promotion), then 20 quick
    // back-and-forth promotions.
    let rolled = project
        .run(&["rollback"])
        .code(0)
        .stdout_has("Rolling back")
        .stdout_has("all traffic on the restored version")
        .stdout_has("restored")
        .nowhere("promoted");
    let report = project
        .run(&["report", &rolled.run_id(), "-o", "json"])
        .code(0)
        .json();
    assert_eq!(report["kind"], "rollback", "{report}");
    assert_eq!(report["outcome"]["outcome"], "restored", "{report}");
    project
        .run(&["report", &rolled.run_id(), "-o", "md"])
        .code(0)
        .stdout_has("restored")
        .nowhere("promoted");
    assert_serving(port, "2.4.0");
    for i in 0..20 {
        let (image, version) = if i % 2 == 0 {
            ("shop-web:2.5.0", "2.5.0")
        } else {
            ("shop-web:2.4.0", "2.4.0")
        };
        write(image);
        project.run(&["promote", "-p", "quick", "--yes"]).code(0);
        assert_serving(port, version);
    }

    let (sent, rest) = load.finish();
    let all: Vec<Answer> = answers.into_iter().chain(rest).collect();
    assert_eq!(
        all.len() as u64,
        sent,
        "every request got an answer or an error, none vanished"
    );
    let errors: Vec<&Answer> = all
        .iter()
        .filter(|a| matches!(a, Answer::Error(_)))
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {sent} requests failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let bad: Vec<&Answer> = all
        .iter()
        .filter(|a| matches!(a, Answer::Version { status, version } if *status != 200 && version != "2.7.0"))
        .collect();
    assert!(
        bad.is_empty(),
        "non-2xx from a good version: {:?}",
        &bad[..bad.len().min(5)]
    );
    assert!(all.iter().all(|a| matches!(a, Answer::Version { version, .. } if ["2.4.0", "2.5.0", "2.7.0"].contains(&version.as_str()))), "only known versions answered");
    assert!(sent > 500, "the load was steady: {sent} requests");

    let history = project.run(&["history", "-o", "json"]).code(0).json();
    let revisions = history["revisions"].as_array().expect("revisions");
    // v3 failed in its test version, before production was touched: a run, not a revision.
    assert_eq!(
        revisions.len(),
        24,
        "v1, v2, v4, the rollback and 20 cycles"
    );
    let outcomes: Vec<&str> = revisions
        .iter()
        .rev()
        .map(|r| r["outcome"]["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        &outcomes[..4],
        ["promoted", "promoted", "rolledBack", "promoted"]
    );
    // Nothing of the failed candidates or of the test versions is left.
    let left = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Names}} {{.Image}}",
            "--filter",
            &format!("label=rollout.environment={name}"),
        ])
        .output()
        .expect("docker ps");
    let left = String::from_utf8_lossy(&left.stdout).to_string();
    let lines: Vec<&str> = left.lines().collect();
    assert_eq!(lines.len(), 2, "one web container and the proxy: {left}");
    assert!(lines.iter().any(|l| l.contains("shop-web:2.4.0")), "{left}");
}

pub(crate) fn containers_of(env: &str, service: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("label=rollout.environment={env}"),
            "--filter",
            &format!("label=rollout.service={service}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn exec(container: &str, cmd: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .arg("exec")
        .arg(container)
        .args(cmd)
        .output()
        .expect("docker exec");
    assert!(
        out.status.success(),
        "{cmd:?} in {container}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn stateful_services_are_stop_started_on_their_data_and_internal_ones_follow_by_name() {
    let rt = runtime();
    let name = unique("st");
    let _cleanup = Cleanup {
        environment: name.clone(),
    };
    rt.block_on(async { demo_images(&engine().await).await });
    let port = crate::support::free_port();
    let manifest = |version: &str| {
        format!(
            "apiVersion: rollout/v1\nkind: Environment\nname: {name}\nclient: acme\nservices:\n  web:\n    image: shop-web:2.4.0\n    ports: [ {{ name: http, container: 8080, public: {port} }} ]\n    dependsOn: [api]\n    health: {{ http: {{ port: 8080, path: /healthz }} }}\n  api:\n    image: shop-api:1.9.0\n    env: {{ RELEASE: \"{version}\" }}\n    ports: [ {{ container: 9000 }} ]\n    dependsOn: [db]\n    health: {{ tcp: {{ port: 9000 }} }}\n  db:\n    image: shop-db:15\n    env: {{ RELEASE: \"{version}\" }}\n    stateful: true\n    ports: [ {{ container: 5432, protocol: tcp }} ]\n    volumes: [ {{ name: data, path: /var/lib/data }} ]\n"
        )
    };
    let project = Project::new()
        .file("rollout.yaml", "proxy: { bind: 127.0.0.1 }\n")
        .playbook("quick", QUICK)
        .manifest(&name, &manifest("1"));
    project.run(&["promote", "--yes"]).code(0);
    let db_v1 = containers_of(&name, "db");
    assert_eq!(db_v1.len(), 1, "{db_v1:?}");
    exec(
        &db_v1[0],
        &[
            "/bin/sh",
            "-c",
            "echo kept-across-updates > /var/lib/data/marker",
        ],
    );

    std::fs::write(
        project.path().join(format!("manifests/{name}.yaml")),
        manifest("2"),
    )
    .expect("manifest");
    project
        .run(&["plan"])
        .code(2)
        .stdout_has("db: stop-start (stateful)")
        .stdout_has("warning: `db` is stateful");
    project
        .run(&["promote", "--yes"])
        .code(0)
        .stdout_has("db is stateful: stopping");

    let db_v2 = containers_of(&name, "db");
    assert_eq!(db_v2.len(), 1, "the old db container is gone: {db_v2:?}");
    assert_ne!(db_v2, db_v1);
    assert_eq!(
        exec(&db_v2[0], &["cat", "/var/lib/data/marker"]),
        "kept-across-updates",
        "the new db runs on the same data"
    );
    assert_eq!(exec(&db_v2[0], &["/bin/sh", "-c", "echo $RELEASE"]), "2");
    let api = containers_of(&name, "api");
    assert_eq!(api.len(), 1, "{api:?}");
    assert_eq!(exec(&api[0], &["/bin/sh", "-c", "echo $RELEASE"]), "2");
    // web still reaches `api` by name: the alias moved to the new container with the old one gone.
    let web = containers_of(&name, "web");
    assert!(
        exec(
            &web[0],
            &["wget", "-q", "-O", "-", "http://api:9000/status"]
        )
        .contains("\"ok\"")
    );
    project.run(&["plan"]).code(0);
}
