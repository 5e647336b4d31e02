//! The command line surface: every command of SPEC.md exists, and unbuilt ones say so.

use crate::support::Project;

#[test]
fn help_lists_every_command_of_the_spec() {
    let out = Project::new().run(&["--help"]).code(0);
    for cmd in [
        "plan", "promote", "rollback", "status", "history", "test-env", "rehearse", "approve",
        "report", "proxy", "daemon",
    ] {
        assert!(
            out.stdout.lines().any(|l| l.trim_start().starts_with(cmd)),
            "--help lacks `{cmd}`\n{out}"
        );
    }
}

#[test]
fn command_flags_match_the_spec() {
    let p = Project::new();
    p.run(&["plan", "--help"])
        .code(0)
        .stdout_has("--env <ENV>")
        .stdout_has("--playbook <PLAYBOOK>")
        .stdout_has("--output <OUTPUT>");
    p.run(&["promote", "--help"])
        .code(0)
        .stdout_has("--yes")
        .stdout_has("--playbook");
    p.run(&["rollback", "--help"])
        .code(0)
        .stdout_has("--to <REVISION>");
    p.run(&["test-env", "--help"])
        .code(0)
        .stdout_has("up")
        .stdout_has("down")
        .stdout_has("list");
    p.run(&["approve", "--help"])
        .code(0)
        .stdout_has("<RUN>")
        .stdout_has("--by <ROLE>")
        .stdout_has("--note <TEXT>");
    p.run(&["report", "--help"])
        .code(0)
        .stdout_has("md")
        .stdout_has("html")
        .stdout_has("json");
}

#[test]
fn daemon_without_settings_or_tokens_fails_in_one_clear_line() {
    let p = Project::new();
    let out = p.run(&["daemon"]).code(1);
    assert!(out.stdout.is_empty(), "no fake output on stdout\n{out}");
    assert_eq!(out.stderr.lines().count(), 1, "one line\n{out}");
    assert!(out.stderr.contains("needs a `daemon:` section"), "{out}");
    let p = p.file(
        "rollout.yaml",
        "daemon:\n  tokens:\n    - { name: ops, fromEnv: ROLLOUT_TEST_UNSET_TOKEN, clients: [acme], may: [read] }\n",
    );
    let out = p.run(&["daemon"]).code(1);
    assert!(out.stderr.contains("no daemon token is usable"), "{out}");
}

#[test]
fn missing_project_folder() {
    let p = Project::new();
    std::fs::remove_dir_all(p.path()).expect("remove the project folder");
    p.run(&["plan"]).code(1).stderr_has("does not exist");
}

#[test]
fn no_manifest() {
    Project::new()
        .run(&["plan"])
        .code(1)
        .stderr_has("no environment found");
}

/// Runs `rollout ARGS` under a pseudo-terminal (util-linux `script`), as a person would.
fn on_a_terminal(project: &Project, args: &str, no_color: bool) -> String {
    let bin = env!("CARGO_BIN_EXE_rollout");
    let cmd = format!("{bin} -C {} {args}", project.path().display());
    let mut c = std::process::Command::new("script");
    c.args(["-qec", &cmd, "/dev/null"]).env_remove("NO_COLOR");
    if no_color {
        c.env("NO_COLOR", "1");
    }
    let out = c.output().expect("script (util-linux) runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colour_on_a_terminal_only_and_never_with_no_color() {
    let env = crate::support::unique("tty");
    let project = Project::new().manifest(
        &env,
        &crate::support::one_service(&env, "rollout-never-built:1"),
    );
    let tty = on_a_terminal(&project, "plan", false);
    assert!(
        tty.contains("\x1b[32m+\x1b[0m"),
        "a terminal gets colour: {tty:?}"
    );
    let no_color = on_a_terminal(&project, "plan", true);
    assert!(
        no_color.contains("+ web") && !no_color.contains('\x1b'),
        "NO_COLOR: {no_color:?}"
    );
    let piped = project.run(&["plan"]).code(2);
    assert!(
        !piped.stdout.contains('\x1b'),
        "piped output has no colour\n{piped}"
    );
}

/// Issue 23: every flag of every command says what it does in `--help`.
#[test]
fn every_help_line_is_filled() {
    let p = Project::new();
    let commands: [&[&str]; 18] = [
        &["plan"],
        &["promote"],
        &["rollback"],
        &["status"],
        &["history"],
        &["runs"],
        &["down"],
        &["rehearse"],
        &["approve"],
        &["report"],
        &["test-env", "up"],
        &["test-env", "down"],
        &["test-env", "list"],
        &["audit", "list"],
        &["audit", "verify"],
        &["daemon"],
        &["proxy"],
        &["demo"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = p.run(&args).code(0);
        // A flag line whose help column is empty: `  -p, --playbook <PLAYBOOK>` and nothing after.
        let empty: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                (t.starts_with("--") || (t.starts_with('-') && t.get(2..4) == Some(", ")))
                    && !t.trim_end().contains("  ")
                    && l.starts_with("  ")
            })
            .collect();
        assert!(
            empty.is_empty(),
            "{command:?}: flags without help: {empty:?}"
        );
    }
}
