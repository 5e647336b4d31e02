//! Live progress of a run: one line per task with its timing; a spinner per running task on a
//! terminal, plain lines otherwise (and on stderr when stdout carries JSON).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use crate::plan::render::Paint;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Failed,
    Skipped,
}

/// Where runs report what they are doing.
pub trait Progress: Send + Sync {
    /// A task starts (shown as running until it ends).
    fn begin(&self, task: &str);
    /// A task ends; `detail` says how.
    fn end(&self, task: &str, status: Status, detail: &str, elapsed: Duration);
    /// A line of information.
    fn note(&self, text: &str);
    /// A running task's latest figures (shown live on a terminal; nothing is printed otherwise).
    fn update(&self, _task: &str, _detail: &str) {}
}

/// Discards everything: for callers that report results themselves.
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _: &str) {}
    fn end(&self, _: &str, _: Status, _: &str, _: Duration) {}
    fn note(&self, _: &str) {}
}

/// Progress for a person: spinners on a terminal, plain lines when piped.
pub struct Console {
    paint: Paint,
    to_stderr: bool,
    live: Option<(
        indicatif::MultiProgress,
        Mutex<BTreeMap<String, indicatif::ProgressBar>>,
    )>,
}

impl Console {
    pub fn new(paint: Paint, to_stderr: bool) -> Self {
        let terminal = if to_stderr {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        let live = terminal.then(|| {
            let target = if to_stderr {
                indicatif::ProgressDrawTarget::stderr()
            } else {
                indicatif::ProgressDrawTarget::stdout()
            };
            (
                indicatif::MultiProgress::with_draw_target(target),
                Mutex::new(BTreeMap::new()),
            )
        });
        Console {
            paint,
            to_stderr,
            live,
        }
    }

    fn line(&self, text: &str) {
        match &self.live {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None if self.to_stderr => eprintln!("{text}"),
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
        }
    }
}

pub fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Progress for Console {
    fn begin(&self, task: &str) {
        if let Some((multi, bars)) = &self.live {
            let bar = multi.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(
                indicatif::ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_message(task.to_string());
            bar.enable_steady_tick(Duration::from_millis(100));
            if let Ok(mut bars) = bars.lock() {
                bars.insert(task.to_string(), bar);
            }
        }
    }

    fn end(&self, task: &str, status: Status, detail: &str, elapsed: Duration) {
        if let Some((multi, bars)) = &self.live
            && let Some(bar) = bars.lock().ok().and_then(|mut b| b.remove(task))
        {
            bar.finish_and_clear();
            multi.remove(&bar);
        }
        let mark = match status {
            Status::Ok => self.paint.green("ok  "),
            Status::Failed => self.paint.red("FAIL"),
            Status::Skipped => self.paint.dim("skip"),
        };
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        self.line(&format!("  {mark} {task}{detail} ({})", seconds(elapsed)));
    }

    fn note(&self, text: &str) {
        self.line(text);
    }

    fn update(&self, task: &str, detail: &str) {
        if let Some((_, bars)) = &self.live
            && let Some(bar) = bars.lock().ok().and_then(|b| b.get(task).cloned())
        {
            bar.set_message(format!("{task}: {detail}"));
        }
    }
}
