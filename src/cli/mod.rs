//! The command line: clap types (data only), output settings and exit statuses.

pub mod output;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// How a command ended. `main` turns this into the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Done, or nothing to do.
    Success,
    /// Failed (and rolled back where something had changed), or bad input.
    Failure,
    /// `plan` only: there are changes to carry out.
    Changes,
    /// Refused: outside the change window, awaiting an approval, or locked.
    Refused,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Changes => 2,
            ExitStatus::Refused => 3,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "rollout",
    version,
    about = "Staged rollouts without outages: test version, checks, gates, zero-downtime promotion, automatic rollback",
    propagate_version = true
)]
pub struct Cli {
    /// The project folder (holding rollout.yaml, manifests/ and playbooks/).
    #[arg(
        short = 'C',
        long = "dir",
        global = true,
        default_value = ".",
        value_name = "DIR"
    )]
    pub dir: PathBuf,
    /// Diagnostics on stderr (-v info, -vv debug); user output is unaffected.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compare the manifest with what runs and print the changes and the steps that would carry
    /// them out; changes nothing (exit 0 no change, 2 changes, 1 error).
    Plan(PlanArgs),
    /// Carry out the plan: test version, checks, gates, traffic shift, promotion; roll back on failure.
    Promote(PromoteArgs),
    /// Put the previous (or named) revision back, with no interruption.
    Rollback(RollbackArgs),
    /// What runs, which revision, health, any rollout in flight.
    Status(ReadArgs),
    /// Revisions with time, who, what changed, outcome.
    History(ReadArgs),
    /// Every run, newest first: promotions, rollbacks, rehearsals, test versions, failed and
    /// parked ones included.
    Runs(ReadArgs),
    /// Remove an environment's production: its containers, networks and edge proxy (its test
    /// versions too); its data volumes only with --volumes. Audited and reported.
    Down(DownArgs),
    /// The test version by hand.
    TestEnv(TestEnvArgs),
    /// The whole playbook against a test version only, then tear it down; writes a report.
    Rehearse(RehearseArgs),
    /// Record an approval or a third-party authorization for a run.
    Approve(ApproveArgs),
    /// The change document of a run: plan, checks, timings, approvals, outcome.
    Report(ReportArgs),
    /// The edge proxy that holds public ports and shifts traffic (normally started for you).
    Proxy(ProxyArgs),
    /// GitOps controller, scheduled rehearsals, HTTP API, metrics.
    Daemon(DaemonArgs),
    /// Build the demo client's images on the local Docker engine and show what rollout would do.
    Demo(DemoArgs),
    /// The tamper-evident audit trail: list its entries (the default), or verify its hash chain.
    Audit(AuditArgs),
}

/// Which environment: `-e NAME` among manifests/, or a file with `-m` (a rollout manifest or a
/// docker-compose file).
#[derive(Debug, Args, Clone, Default)]
pub struct EnvArgs {
    /// The environment (may be left out when the project has one).
    #[arg(short = 'e', long = "env", value_name = "ENV")]
    pub env: Option<String>,
    /// A manifest file to use instead of manifests/ (a compose.yaml works too).
    #[arg(short = 'm', long = "manifest", value_name = "FILE")]
    pub manifest: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    /// The playbook (default: the only one, else `default`, else the built-in safe default).
    #[arg(short = 'p', long = "playbook", value_name = "PLAYBOOK")]
    pub playbook: Option<String>,
    /// Text for people, or one JSON document for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    /// The playbook (default: the only one, else `default`, else the built-in safe default); a
    /// run parked at a gate resumes with the playbook it was parked with.
    #[arg(short = 'p', long = "playbook", value_name = "PLAYBOOK")]
    pub playbook: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Override the change window; needs --reason and is recorded.
    #[arg(long, requires = "reason")]
    pub emergency: bool,
    /// Why this change: recorded in the revision and the report.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// If another run holds the environment's lock, wait for it this long (e.g. 5m) instead of
    /// refusing at once.
    #[arg(long, value_name = "DURATION", value_parser = crate::manifest::duration::parse)]
    pub wait: Option<std::time::Duration>,
    /// Replace a run parked at a gate that already has approvals or authorizations recorded
    /// (they are lost with it); without it such a run is never superseded.
    #[arg(long)]
    pub supersede: bool,
    /// Text for people, or one JSON document for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    /// Do not ask for confirmation (needed without a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Remove the data volumes too (and the edge proxy's routing table); kept otherwise.
    #[arg(long)]
    pub volumes: bool,
    /// Print the run's report as one JSON document instead of text.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    /// The revision to put back (default: the previous one).
    #[arg(long = "to", value_name = "REVISION")]
    pub to: Option<u64>,
    /// If another run holds the environment's lock, wait for it this long instead of refusing.
    #[arg(long, value_name = "DURATION", value_parser = crate::manifest::duration::parse)]
    pub wait: Option<std::time::Duration>,
    /// Text for people, or one JSON document for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    /// Text for people, or one JSON document for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct TestEnvArgs {
    #[command(subcommand)]
    pub action: TestEnvAction,
}

#[derive(Debug, Subcommand)]
pub enum TestEnvAction {
    /// Start a test version of the environment; it stays until `down` or its TTL.
    Up(TestEnvUpArgs),
    /// Remove the environment's test versions (or one, by run id).
    Down(TestEnvDownArgs),
    /// List test versions.
    List(ReadArgs),
}

#[derive(Debug, Args)]
pub struct TestEnvUpArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    /// Take the TTL and `copyData` from this playbook's `testEnv` step.
    #[arg(short = 'p', long = "playbook", value_name = "PLAYBOOK")]
    pub playbook: Option<String>,
    /// How long it may live before the next command removes it (e.g. 30m; default 2h).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Text for people, or one JSON document for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct TestEnvDownArgs {
    #[command(flatten)]
    pub env: EnvArgs,
    /// Only this run's test version.
    #[arg(value_name = "RUN")]
    pub run: Option<String>,
}

/// `rehearse` picks its environment and playbook as `plan` does.
pub type RehearseArgs = PlanArgs;

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The run waiting at its gate (or `latest`: the run parked in the environment).
    #[arg(value_name = "RUN")]
    pub run: String,
    /// The role the playbook's `approve` step names, or the third party authorizing.
    #[arg(long, value_name = "ROLE")]
    pub by: String,
    /// A note kept with the approval or authorization, shown in the run's report.
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
    /// A third party's own reference for its authorization (ticket, change number); required
    /// for an authorization.
    #[arg(long, value_name = "REF")]
    pub reference: Option<String>,
    /// When a third party's authorization stops counting: a duration from now (`24h`) or a
    /// time (`2026-12-01T18:00:00Z`, `2026-12-01T18:00[Europe/Paris]`).
    #[arg(long, value_name = "WHEN")]
    pub expires: Option<String>,
    #[command(flatten)]
    pub env: EnvArgs,
    /// Text for people, or one JSON document for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Md,
    Html,
    Json,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run id (the first line a run prints; also in `rollout history`), or `latest`.
    #[arg(value_name = "RUN")]
    pub run: String,
    /// md: GitHub-flavoured Markdown; html: one self-contained, printable file; json: the data.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ReportFormat::Md)]
    pub output: ReportFormat,
    /// Write the document to FILE instead of stdout.
    #[arg(long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The environment: needed for `latest` when the project has several; checked against the
    /// run's otherwise.
    #[arg(short = 'e', long = "env", value_name = "ENV")]
    pub env: Option<String>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Admin API address. It has no authentication: keep it on loopback, or (in the proxy's
    /// container) bind 0.0.0.0 and publish it on 127.0.0.1 only.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7481")]
    pub admin: String,
    /// Where the routing table is kept.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/rollout-proxy")]
    pub state: PathBuf,
    /// The address public ports are bound on.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,
    /// On SIGTERM/SIGINT, how long in-flight requests get to finish (e.g. 10s).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub drain: String,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Listen address for the HTTP API (default from rollout.yaml, else 127.0.0.1:7480).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Only build the demo images.
    #[arg(long)]
    pub build_only: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub action: Option<AuditAction>,
    #[command(flatten)]
    pub list: AuditListArgs,
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Show the entries (runs, approvals, authorizations, overrides, lock takeovers).
    List(AuditListArgs),
    /// Check the hash chain; exit 0 intact, 1 tampered with (naming the entry).
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Args, Default)]
pub struct AuditListArgs {
    /// Only entries about this environment.
    #[arg(short = 'e', long = "env", value_name = "ENV")]
    pub env: Option<String>,
    /// Only entries about this run.
    #[arg(long, value_name = "RUN")]
    pub run: Option<String>,
    /// Text for people, or one JSON document for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// A head printed by an earlier verify (`#N sha256:HEX`), kept where the log's writers
    /// cannot reach: the log must still hold that entry with that hash. Repeatable.
    #[arg(long, value_name = "HEAD")]
    pub expect: Vec<String>,
    /// Text for people, or one JSON document for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}
