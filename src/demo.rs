//! The demo client's images, built locally `FROM scratch` from busybox: no registry is needed.
//!
//! `shop-web` serves a page containing "shop" and `/healthz` on 8080, `shop-api` answers JSON on
//! 9000 and ships `/bin/check` for exec smoke checks, and `shop-db` keeps its data in
//! `/var/lib/data` (appending a line to `boot.log` at each start) and serves it on 5432 so tests
//! can see which data a copy holds.

use crate::engine::image::{BuildContext, ContextFile, busybox_context};

/// An image the demo needs: its tag and how to build it.
pub struct DemoImage {
    pub tag: String,
    pub context: BuildContext,
}

fn file(path: &str, mode: u32, contents: impl Into<Vec<u8>>) -> ContextFile {
    ContextFile {
        path: path.to_string(),
        mode,
        contents: contents.into(),
    }
}

/// Runs busybox httpd as a child of a shell that exits on SIGTERM: httpd as PID 1 would ignore
/// the signal, and every stop would wait out the engine's grace period.
fn httpd(port: u16) -> String {
    format!(
        "CMD [\"/bin/sh\", \"-c\", \"httpd -f -p {port} -h /www & pid=$!; trap 'kill $pid; exit 0' TERM; wait\"]\n"
    )
}

/// The web front at `version`; `healthy: false` builds one whose health endpoint is missing.
pub fn web(version: &str, healthy: bool) -> std::io::Result<DemoImage> {
    let mut files = vec![file(
        "www/index.html",
        0o644,
        format!("<!doctype html><title>shop</title><h1>shop web {version}</h1>\n"),
    )];
    if healthy {
        files.push(file("www/healthz", 0o644, "ok\n"));
    }
    // A slow page (1 s), to have requests in flight across a switch, and an echo of POST bodies.
    files.push(file(
        "www/cgi-bin/slow",
        0o755,
        format!("#!/bin/sh\nsleep 1\nprintf 'Content-Type: text/plain\\r\\n\\r\\nshop web {version} slow\\n'\n"),
    ));
    files.push(file(
        "www/cgi-bin/echo",
        0o755,
        format!("#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nshop web {version} got '\nhead -c \"${{CONTENT_LENGTH:-0}}\"\n"),
    ));
    let tail = format!("EXPOSE 8080\n{}", httpd(8080));
    Ok(DemoImage {
        tag: format!("shop-web:{version}"),
        context: busybox_context(&tail, files)?,
    })
}

/// A web front that passes its health check but answers 500 on every page: what a canary's
/// analysis must catch.
pub fn web_failing(version: &str) -> std::io::Result<DemoImage> {
    let broken = format!(
        "#!/bin/sh\nprintf 'Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nshop web {version} is broken\\n'\n"
    );
    let files = vec![
        file("www/healthz", 0o644, "ok\n"),
        file("www/cgi-bin/index.cgi", 0o755, broken.clone()),
        file("www/cgi-bin/slow", 0o755, broken.clone()),
        file("www/cgi-bin/echo", 0o755, broken),
    ];
    let tail = format!("EXPOSE 8080\n{}", httpd(8080));
    Ok(DemoImage {
        tag: format!("shop-web:{version}"),
        context: busybox_context(&tail, files)?,
    })
}

pub fn api(version: &str) -> std::io::Result<DemoImage> {
    let files = vec![
        file(
            "www/status",
            0o644,
            format!("{{\"status\":\"ok\",\"version\":\"{version}\"}}\n"),
        ),
        file(
            "bin/check",
            0o755,
            "#!/bin/sh\n# Exec smoke check: the API answers on its port with status ok.\nwget -q -O - http://127.0.0.1:9000/status | grep -q '\"ok\"'\n",
        ),
    ];
    let tail = format!("EXPOSE 9000\n{}", httpd(9000));
    Ok(DemoImage {
        tag: format!("shop-api:{version}"),
        context: busybox_context(&tail, files)?,
    })
}

pub fn db(version: &str) -> std::io::Result<DemoImage> {
    let tail = "EXPOSE 5432\nVOLUME /var/lib/data\nCMD [\"/bin/sh\", \"-c\", \"mkdir -p /var/lib/data && echo started >> /var/lib/data/boot.log && httpd -f -p 5432 -h /var/lib/data & pid=$!; trap 'kill $pid; exit 0' TERM; wait\"]\n";
    Ok(DemoImage {
        tag: format!("shop-db:{version}"),
        context: busybox_context(tail, Vec::new())?,
    })
}

/// Every image the demo project names, plus the versions the promotion demo goes through:
/// 2.5.0 (good), 2.6.0 (never healthy), 2.7.0 (healthy but failing every request).
pub fn images() -> std::io::Result<Vec<DemoImage>> {
    Ok(vec![
        web("2.4.0", true)?,
        web("2.5.0", true)?,
        web("2.6.0", false)?,
        web_failing("2.7.0")?,
        api("1.9.0")?,
        db("15")?,
    ])
}
