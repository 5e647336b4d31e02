//! Prometheus as the source of a canary's figures where rollout's edge proxy does not carry the
//! traffic (the kubernetes backend): the queries of `kubernetes.prometheus` in rollout.yaml, with
//! their placeholders filled in for one candidate, asked as instant queries over HTTP
//! (`GET /api/v1/query`).
//!
//! Each query must come to one number: a vector of one sample or a scalar. No series at all is
//! "no data" (for `errors`, none failed); more than one series is an error naming the query, as
//! is a value that is not a number, an answer that is not Prometheus', or one that takes longer
//! than [`QUERY_TIMEOUT`].

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;

use crate::manifest::config::Prometheus;

/// How long one query may take, connection included.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the placeholders of a query stand for, for one candidate.
#[derive(Debug, Clone)]
pub struct Vars<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
    pub deployment: &'a str,
    pub window: Duration,
}

/// A candidate's requests over the window, as Prometheus counted them.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub requests: u64,
    pub errors: u64,
    pub p99: Option<Duration>,
}

/// `template` with its placeholders filled in. A pure function.
pub fn expand(template: &str, vars: &Vars<'_>) -> String {
    template
        .replace("{{namespace}}", vars.namespace)
        .replace("{{service}}", vars.service)
        .replace("{{deployment}}", vars.deployment)
        .replace("{{window}}", &format!("{}s", vars.window.as_secs().max(1)))
}

/// The one number of a `/api/v1/query` answer: `Ok(None)` for an empty vector or NaN. A pure
/// function.
pub fn one_number(answer: &serde_json::Value) -> Result<Option<f64>, String> {
    if answer["status"] != "success" {
        return Err(match answer["error"].as_str() {
            Some(e) => format!(
                "Prometheus refused it ({}): {e}",
                answer["errorType"].as_str().unwrap_or("error")
            ),
            None => "the answer is not a Prometheus query result".to_string(),
        });
    }
    let data = &answer["data"];
    let value = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => {
            let result = data["result"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            match result {
                [] => return Ok(None),
                [one] => &one["value"],
                many => {
                    return Err(format!(
                        "it returns {} series; it must come to one number (wrap it in sum(...))",
                        many.len()
                    ));
                }
            }
        }
        Some(other) => {
            return Err(format!(
                "it returns a {other}; it must come to one number (an instant vector of one series, or a scalar)"
            ));
        }
        None => return Err("the answer is not a Prometheus query result".to_string()),
    };
    let text = value[1]
        .as_str()
        .ok_or_else(|| "the answer is not a Prometheus query result".to_string())?;
    match text.parse::<f64>() {
        Ok(v) if v.is_nan() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(_) => Err(format!("its value `{text}` is not a number")),
    }
}

/// Asks `settings`' Prometheus for one candidate's figures.
pub async fn measure(settings: &Prometheus, vars: &Vars<'_>) -> Result<Measured, String> {
    let requests = query(&settings.url, &expand(&settings.requests, vars))
        .await
        .map_err(|e| format!("the requests query: {e}"))?
        .unwrap_or(0.0);
    let errors = query(&settings.url, &expand(&settings.errors, vars))
        .await
        .map_err(|e| format!("the errors query: {e}"))?
        .unwrap_or(0.0);
    let p99 = match &settings.p99 {
        None => None,
        Some(q) => query(&settings.url, &expand(q, vars))
            .await
            .map_err(|e| format!("the p99 query: {e}"))?
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64),
    };
    Ok(Measured {
        requests: requests.max(0.0).round() as u64,
        errors: errors.max(0.0).round() as u64,
        p99,
    })
}

/// One instant query against the Prometheus at `base` (`http://host:port[/prefix]`).
pub async fn query(base: &str, promql: &str) -> Result<Option<f64>, String> {
    let answer = tokio::time::timeout(QUERY_TIMEOUT, get(base, promql))
        .await
        .map_err(|_| format!("{base} did not answer within {}s", QUERY_TIMEOUT.as_secs()))??;
    one_number(&answer)
}

async fn get(base: &str, promql: &str) -> Result<serde_json::Value, String> {
    let uri: Uri = base
        .parse()
        .map_err(|e| format!("`{base}` is not a URL: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("`{base}` has no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let prefix = uri.path().trim_end_matches('/');
    let path = format!(
        "{prefix}/api/v1/query?query={}",
        crate::proxy::client::encode_path(promql)
    );
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot connect to {base}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let request = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("rollout/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{base}: {e}"))?;
    let status = response.status();
    let bytes = Limited::new(response.into_body(), 4 << 20)
        .collect()
        .await
        .map_err(|e| format!("{base}: reading the answer: {e}"))?
        .to_bytes();
    // Prometheus answers a bad query with 400 and its error in the same JSON shape.
    serde_json::from_slice(&bytes).map_err(|_| {
        format!(
            "{base} answered {status} with something that is not a Prometheus query result: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )
    })
}

/// A real Prometheus (Debian's `prometheus`, a process on loopback) scraping a small exporter of
/// one candidate's request counters, for the tests of this module and of the kubernetes canary.
#[cfg(test)]
pub(crate) mod testing {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Serves `http_requests_total` (by `code`) and `http_request_duration_seconds` for pod
    /// `<deployment>-5d9f8c-x1x2x` of `namespace`, growing at `ok` and `failed` requests a second
    /// since it started, every request between 50 and 100 ms.
    pub struct Exporter {
        pub port: u16,
    }

    impl Exporter {
        pub fn start(namespace: &str, deployment: &str, ok: u64, failed: u64) -> Exporter {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let labels = format!("namespace=\"{namespace}\",pod=\"{deployment}-5d9f8c-x1x2x\"");
            let t0 = Instant::now();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let mut head = [0u8; 4096];
                    let _ = stream.read(&mut head);
                    let secs = t0.elapsed().as_secs_f64();
                    let (ok_n, failed_n) =
                        ((ok as f64 * secs) as u64, (failed as f64 * secs) as u64);
                    let all = ok_n + failed_n;
                    let body = format!(
                        "# TYPE http_requests_total counter\n\
                         http_requests_total{{{labels},code=\"200\"}} {ok_n}\n\
                         http_requests_total{{{labels},code=\"500\"}} {failed_n}\n\
                         # TYPE http_request_duration_seconds histogram\n\
                         http_request_duration_seconds_bucket{{{labels},le=\"0.05\"}} 0\n\
                         http_request_duration_seconds_bucket{{{labels},le=\"0.1\"}} {all}\n\
                         http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {all}\n\
                         http_request_duration_seconds_sum{{{labels}}} {}\n\
                         http_request_duration_seconds_count{{{labels}}} {all}\n",
                        all as f64 * 0.08
                    );
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
            Exporter { port }
        }
    }

    /// A Prometheus process scraping `127.0.0.1:<target>` every second; killed when dropped.
    pub struct Server {
        pub url: String,
        child: Child,
        _dir: tempfile::TempDir,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Server {
        pub fn start(target: u16) -> Server {
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: candidate\n    static_configs: [ {{ targets: [ \"127.0.0.1:{target}\" ] }} ]\n"
                ),
            )
            .unwrap();
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("Debian's prometheus (scripts/setup.sh installs it) runs");
            Server {
                url: format!("http://127.0.0.1:{port}"),
                child,
                _dir: dir,
            }
        }

        /// Waits (up to 60 s) until `promql` comes to a number: Prometheus is up and has
        /// scraped enough samples.
        pub async fn wait_for(&self, promql: &str) {
            let t0 = Instant::now();
            loop {
                if let Ok(Some(_)) = super::query(&self.url, promql).await {
                    return;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "Prometheus at {} never answered `{promql}` with a number",
                    self.url
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// The queries of a rollout.yaml for the exporter's metrics.
    pub fn settings(url: &str) -> crate::manifest::config::Prometheus {
        let of = "namespace=\"{{namespace}}\",pod=~\"{{deployment}}-.*\"";
        crate::manifest::config::Prometheus {
            url: url.to_string(),
            requests: format!("sum(increase(http_requests_total{{{of}}}[{{{{window}}}}]))"),
            errors: format!(
                "sum(increase(http_requests_total{{{of},code=~\"5..\"}}[{{{{window}}}}]))"
            ),
            p99: Some(format!(
                "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{{{of}}}[{{{{window}}}}])))"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_are_filled_in_and_the_window_is_whole_seconds() {
        let vars = Vars {
            namespace: "rollout-shop",
            service: "web",
            deployment: "shop-web-r2",
            window: Duration::from_millis(60_400),
        };
        assert_eq!(
            expand(
                "sum(increase(x{namespace=\"{{namespace}}\",pod=~\"{{deployment}}-.*\",svc=\"{{service}}\"}[{{window}}]))",
                &vars
            ),
            "sum(increase(x{namespace=\"rollout-shop\",pod=~\"shop-web-r2-.*\",svc=\"web\"}[60s]))"
        );
        let short = Vars {
            window: Duration::from_millis(300),
            ..vars
        };
        assert_eq!(expand("{{window}}", &short), "1s");
    }

    #[test]
    fn an_answer_comes_to_one_number_or_says_why_not() {
        let vector = |result: serde_json::Value| json!({ "status": "success", "data": { "resultType": "vector", "result": result } });
        assert_eq!(
            one_number(&vector(json!([ { "metric": {}, "value": [1.0, "12.5"] } ]))),
            Ok(Some(12.5))
        );
        assert_eq!(one_number(&vector(json!([]))), Ok(None), "no series");
        assert_eq!(
            one_number(&vector(json!([ { "metric": {}, "value": [1.0, "NaN"] } ]))),
            Ok(None)
        );
        assert_eq!(
            one_number(
                &json!({ "status": "success", "data": { "resultType": "scalar", "result": [1.0, "3"] } })
            ),
            Ok(Some(3.0))
        );
        assert_eq!(
            one_number(&vector(
                json!([ { "metric": { "code": "200" }, "value": [1.0, "1"] }, { "metric": { "code": "500" }, "value": [1.0, "2"] } ])
            )),
            Err("it returns 2 series; it must come to one number (wrap it in sum(...))".into())
        );
        assert_eq!(
            one_number(
                &json!({ "status": "error", "errorType": "bad_data", "error": "parse error at char 4" })
            ),
            Err("Prometheus refused it (bad_data): parse error at char 4".into())
        );
        assert_eq!(
            one_number(&json!({ "status": "success", "data": { "resultType": "matrix", "result": [] } })),
            Err("it returns a matrix; it must come to one number (an instant vector of one series, or a scalar)".into())
        );
        assert_eq!(
            one_number(&json!({ "hello": 1 })),
            Err("the answer is not a Prometheus query result".into())
        );
    }

    /// Against a real Prometheus scraping the exporter: 90 good and 10 failed requests a second
    /// come to about a 10% error rate and a p99 just under 100 ms; another Deployment's figures
    /// are no data (0 requests); a query Prometheus cannot parse and one of several series are
    /// errors naming why; nothing listening is an error naming the address.
    #[tokio::test]
    async fn a_real_prometheus_gives_the_candidates_figures() {
        let exporter = testing::Exporter::start("rollout-shop", "shop-web-r2", 90, 10);
        let server = testing::Server::start(exporter.port);
        let settings = testing::settings(&server.url);
        let vars = Vars {
            namespace: "rollout-shop",
            service: "web",
            deployment: "shop-web-r2",
            window: Duration::from_secs(5),
        };
        server.wait_for(&expand(&settings.requests, &vars)).await;
        // Enough samples for the window.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let m = measure(&settings, &vars).await.unwrap();
        assert!(
            (250..=750).contains(&m.requests),
            "about 100 a second over 5 s: {m:?}"
        );
        let rate = m.errors as f64 / m.requests as f64;
        assert!((0.07..=0.13).contains(&rate), "about 10% failed: {m:?}");
        let p99 = m.p99.expect("a p99").as_secs_f64();
        assert!((0.09..=0.1).contains(&p99), "just under 100 ms: {m:?}");

        let other = Vars {
            deployment: "shop-web-r9",
            ..vars.clone()
        };
        let none = measure(&settings, &other).await.unwrap();
        assert_eq!((none.requests, none.errors, none.p99), (0, 0, None));

        let err = query(&server.url, "sum(").await.unwrap_err();
        assert!(err.starts_with("Prometheus refused it (bad_data)"), "{err}");
        let err = query(&server.url, "http_requests_total").await.unwrap_err();
        assert_eq!(
            err,
            "it returns 2 series; it must come to one number (wrap it in sum(...))"
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let err = query(&format!("http://{addr}"), "1").await.unwrap_err();
        assert!(
            err.starts_with(&format!("cannot connect to http://{addr}")),
            "{err}"
        );
    }
}
