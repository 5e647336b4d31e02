//! Exec checks: a command run inside the service's container through the engine, judged by its
//! exit code and output.

use std::time::Duration;

use crate::engine::{Engine, EngineError, ExecOutput};

use super::{Verdict, human, tail};

/// How much output a failure reason quotes (from the end, where a command says why it failed).
const QUOTE: usize = 200;

/// A margin over the engine's own limit, so the engine's timeout (which names the command and
/// cleans up) normally fires first and ours only guards against an engine that hangs.
const ENGINE_GRACE: Duration = Duration::from_secs(2);

/// What a command must do.
#[derive(Debug, Clone, Copy)]
pub(super) struct Expect<'a> {
    pub exit: i64,
    pub output: Option<&'a str>,
}

impl Expect<'static> {
    /// What a health probe expects: exit 0.
    pub fn success() -> Self {
        Expect {
            exit: 0,
            output: None,
        }
    }
}

/// One attempt: run `command` in `container`, bounded by `timeout`.
pub(super) async fn attempt(
    engine: &dyn Engine,
    container: &str,
    command: &[String],
    expect: &Expect<'_>,
    timeout: Duration,
) -> Verdict {
    let run = engine.exec(container, command, timeout);
    match tokio::time::timeout(timeout + ENGINE_GRACE, run).await {
        Err(_) => Verdict::fail(format!(
            "`{}` in `{container}` did not finish within {}",
            command.join(" "),
            human(timeout)
        )),
        Ok(Err(e @ EngineError::ExecTimeout { .. })) => Verdict::fail(e.to_string()),
        Ok(Err(e)) => Verdict::inconclusive(format!(
            "cannot run `{}` in `{container}`: {e}",
            command.join(" ")
        )),
        Ok(Ok(out)) => judge(expect, &out),
    }
}

/// The verdict on a finished command.
pub(super) fn judge(expect: &Expect<'_>, out: &ExecOutput) -> Verdict {
    let output = out.output.trim_end();
    let quoted = if output.is_empty() {
        "no output".to_string()
    } else {
        format!("last {QUOTE} chars of output: {:?}", tail(output, QUOTE))
    };
    if out.exit_code != expect.exit {
        return Verdict::fail(format!(
            "exit code {}, expected {} ({quoted})",
            out.exit_code, expect.exit
        ));
    }
    match expect.output {
        Some(want) if !out.output.contains(want) => {
            Verdict::fail(format!("output does not contain {want:?} ({quoted})"))
        }
        Some(want) => Verdict::pass(format!(
            "exit code {}, output contains {want:?}",
            out.exit_code
        )),
        None => Verdict::pass(format!("exit code {}", out.exit_code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(exit_code: i64, output: &str) -> ExecOutput {
        ExecOutput {
            exit_code,
            output: output.to_string(),
        }
    }

    #[test]
    fn exit_code_then_output_decide() {
        let expect = Expect {
            exit: 0,
            output: Some("ready"),
        };
        assert_eq!(
            judge(&expect, &out(0, "db ready\n")),
            Verdict::pass("exit code 0, output contains \"ready\"")
        );
        assert_eq!(
            judge(&expect, &out(1, "db: connection refused\n")),
            Verdict::fail(
                "exit code 1, expected 0 (last 200 chars of output: \"db: connection refused\")"
            )
        );
        assert_eq!(
            judge(&expect, &out(0, "")),
            Verdict::fail("output does not contain \"ready\" (no output)")
        );
        assert_eq!(
            judge(&Expect::success(), &out(0, "")),
            Verdict::pass("exit code 0")
        );
        assert!(
            judge(
                &Expect {
                    exit: 3,
                    output: None
                },
                &out(3, "")
            )
            .passed()
        );
    }

    #[test]
    fn long_output_is_quoted_from_its_end() {
        let long = format!("{}\nFATAL: disk full\n", "noise ".repeat(100));
        match judge(&Expect::success(), &out(2, &long)) {
            Verdict::Fail { reason } => {
                assert!(reason.ends_with("FATAL: disk full\")"), "{reason}");
                assert!(reason.contains("\"…"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
