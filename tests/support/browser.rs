//! Headless Chromium driven over the DevTools protocol, for dashboard tests that fill in forms
//! and press buttons as a person would. The protocol runs on a pipe
//! (`--remote-debugging-pipe`: JSON messages ended by NUL on fds 3 and 4), which two FIFOs give
//! the browser: no port, no WebSocket client.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Browser {
    child: Child,
    to: std::fs::File,
    from: Receiver<Value>,
    next: u64,
    session: String,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with a fresh profile and opens one blank page.
    pub fn launch() -> Browser {
        let dir = tempfile::tempdir().expect("temp dir");
        let (input, output) = (dir.path().join("in"), dir.path().join("out"));
        for fifo in [&input, &output] {
            let made = Command::new("mkfifo").arg(fifo).status().expect("mkfifo");
            assert!(made.success());
        }
        let profile = dir.path().join("profile");
        let log = std::fs::File::create(dir.path().join("chromium.log")).expect("log");
        // The shell opens fd 3 (blocks until we open `in` to write), then fd 4 (until we open
        // `out` to read), then becomes Chromium.
        let child = Command::new("sh")
            .arg("-c")
            .arg(
                "exec chromium --headless --no-sandbox --disable-gpu --no-first-run \
                 --hide-scrollbars --user-data-dir=\"$1\" --remote-debugging-pipe about:blank \
                 3<\"$2\" 4>\"$3\"",
            )
            .arg("sh")
            .args([&profile, &input, &output])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run chromium (install it: scripts/setup.sh, or apt-get install chromium)");
        let to = std::fs::OpenOptions::new()
            .write(true)
            .open(&input)
            .expect("open the browser's input");
        let from = std::fs::File::open(&output).expect("open the browser's output");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                message.pop_if(|b| *b == 0);
                if let Ok(v) = serde_json::from_slice::<Value>(&message)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        let mut browser = Browser {
            child,
            to,
            from: rx,
            next: 0,
            session: String::new(),
            _dir: dir,
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .expect("a page");
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .expect("attach to the page");
        browser.session = attached["sessionId"]
            .as_str()
            .expect("session id")
            .to_string();
        browser
    }

    /// Sends one command (to the page once attached) and waits for its answer: its `result`, or
    /// its error message.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next += 1;
        let id = self.next;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("json");
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to the browser");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from.recv_timeout(left) {
                Ok(v) if v["id"] == id => {
                    return match v.get("error") {
                        Some(e) => Err(e["message"].as_str().unwrap_or("error").to_string()),
                        None => Ok(v["result"].clone()),
                    };
                }
                // Events, and answers to nothing we wait for.
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("the browser did not answer {method}"),
                Err(RecvTimeoutError::Disconnected) => panic!("the browser went away ({method})"),
            }
        }
    }

    pub fn navigate(&mut self, url: &str) {
        let r = self
            .call("Page.navigate", json!({ "url": url }))
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
        assert!(r["errorText"].is_null(), "navigate to {url}: {r}");
    }

    /// Evaluates `expression` in the page; its value, or why it failed (a page that is being
    /// replaced has no context to evaluate in).
    pub fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(e.to_string());
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expression` until it is `true` in a fully loaded page, or panics after `limit`
    /// with the page's text.
    pub fn wait_for(&mut self, expression: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let check = format!("document.readyState === 'complete' && !!({expression})");
            if self.eval(&check) == Ok(Value::Bool(true)) {
                return;
            }
            if start.elapsed() > limit {
                let text = self.eval("location.href + '\\n' + document.body.innerText");
                panic!("not within {limit:?}: {expression}\npage: {text:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The whole page (up to 1200×3000) as a PNG file at `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let height = self
            .eval("document.documentElement.scrollHeight")
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(1400)
            .clamp(600, 3000);
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1200, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .expect("viewport");
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .expect("screenshot");
        let data = r["data"].as_str().expect("png data");
        // base64 by coreutils, from a file (a pipe both ways would fill up and stall): the test
        // binary has no decoder of its own.
        let encoded = path.with_extension("png.b64");
        std::fs::write(&encoded, data).expect("write");
        let decoded = Command::new("base64")
            .arg("-d")
            .arg(&encoded)
            .output()
            .expect("base64");
        assert!(decoded.status.success());
        let _ = std::fs::remove_file(&encoded);
        std::fs::write(path, decoded.stdout).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
