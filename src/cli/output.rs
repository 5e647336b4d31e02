//! The one printer for what the user reads: text or JSON on stdout, colour only on a terminal
//! and never with `NO_COLOR`. Diagnostics for developers go through `tracing` instead.

use std::io::{IsTerminal, Write};

use crate::plan::render::Paint;

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    color: bool,
}

impl Printer {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset or empty.
    pub fn detect() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Printer {
            color: !no_color && std::io::stdout().is_terminal(),
        }
    }

    pub fn paint(&self) -> Paint {
        Paint { color: self.color }
    }

    /// Plain text on stdout.
    pub fn out(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        if !text.ends_with('\n') {
            let _ = stdout.write_all(b"\n");
        }
        let _ = stdout.flush();
    }

    /// One JSON document on stdout.
    pub fn json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        self.out(&text);
        Ok(())
    }

    /// A warning on stderr.
    pub fn warn(&self, text: &str) {
        let label = if self.stderr_color() {
            "\x1b[33mwarning:\x1b[0m"
        } else {
            "warning:"
        };
        eprintln!("{label} {text}");
    }

    /// A refusal (exit 3): an error the user must act on, not a warning.
    pub fn refusal(&self, text: &str) {
        self.error(&anyhow::Error::msg(text.to_string()));
    }

    /// An error on stderr, printed once with its causes.
    pub fn error(&self, err: &anyhow::Error) {
        let label = if self.stderr_color() {
            "\x1b[31merror:\x1b[0m"
        } else {
            "error:"
        };
        eprintln!("{label} {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
    }

    fn stderr_color(&self) -> bool {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        !no_color && std::io::stderr().is_terminal()
    }
}

/// A run's duration as the `history` and `runs` tables show it: `12.3s`, or `-` while it runs.
pub fn duration_cell(d: Option<jiff::SignedDuration>) -> String {
    d.map_or("-".to_string(), |d| format!("{:.1}s", d.as_secs_f64()))
}
