//! What the controller knows and reports: the fetch, each environment's last attempt and
//! drift, the environments that left the repository. Kept in `<state>/gitops/state.json` and
//! served by the API and the dashboard, so these types are its file format and JSON.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// How the last fetch went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum FetchState {
    #[default]
    NotYet,
    Ok,
    /// The remote could not be reached (or refused us); nothing changed.
    Unreachable {
        message: String,
    },
    /// The remote has no such branch (any more); nothing changed.
    BranchMissing {
        message: String,
    },
    /// The checkout could not be brought to the fetched commit.
    Error {
        message: String,
    },
}

/// How a promotion attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Exit 0: promoted, or nothing to do.
    Promoted,
    /// Exit 1 after a run started: failed (and rolled back).
    Failed,
    /// Exit 1 before any run: the manifest or playbook does not load. Nothing changed.
    Invalid,
    /// Exit 3: refused (window, approval, lock); tried again on the next tick.
    Refused,
}

impl Outcome {
    pub(super) fn from_exit(code: Option<i32>, started_a_run: bool) -> Outcome {
        match code {
            Some(0) => Outcome::Promoted,
            Some(3) => Outcome::Refused,
            // Killed by a signal, or failed after its run began.
            None => Outcome::Failed,
            _ if started_a_run => Outcome::Failed,
            _ => Outcome::Invalid,
        }
    }
}

/// Why a promotion was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    /// The manifest changed at the commit.
    Commit,
    /// A manual retry ([`super::Controller::retry`]).
    Retry,
    /// Drift, with `selfHeal: true`.
    SelfHeal,
}

/// One promotion the controller ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub commit: String,
    /// The [`super::promotion_hash`] of what was promoted: the manifest, its playbook, the
    /// settings.
    pub manifest_hash: String,
    pub trigger: Trigger,
    pub outcome: Outcome,
    /// The run id the child printed (`run <id>`), when a run started.
    pub run: Option<String>,
    pub exit: Option<i32>,
    pub at: Timestamp,
    /// The end of the child's stderr when it did not succeed: for an invalid manifest, the
    /// compiler-style error with file:line:column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What runs compared with the manifest at the current commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Drift {
    #[default]
    Unknown,
    InSync,
    /// What runs differs from the manifest (`rollout plan` exits 2).
    Drifted,
    /// The comparison itself failed.
    Error {
        message: String,
    },
}

/// The controller's knowledge of one environment (kept in `<state>/gitops/state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnvStatus {
    /// The manifest file, relative to `<path>`.
    pub manifest: String,
    /// The client the manifest names (the tenant the API and dashboard filter on).
    #[serde(default)]
    pub client: Option<String>,
    #[serde(default)]
    pub self_heal: bool,
    /// The last commit this environment was promoted at.
    pub commit: Option<String>,
    /// The [`super::promotion_hash`] promoted at `commit`.
    pub promoted_hash: Option<String>,
    /// The last promotion attempt, whatever its outcome.
    pub last: Option<Attempt>,
    #[serde(default)]
    pub drift: Drift,
    pub drift_checked: Option<Timestamp>,
}

impl EnvStatus {
    /// Whether the last attempt failed at `commit` (or its manifest did not load there): it is
    /// not tried again on that commit by itself.
    pub fn failed_on(&self, commit: &str) -> bool {
        self.last.as_ref().is_some_and(|a| {
            a.commit == commit && matches!(a.outcome, Outcome::Failed | Outcome::Invalid)
        })
    }

    /// Keeps `attempt` as the last one; a promoted one is what runs now. Whether it promoted.
    pub fn record_attempt(&mut self, attempt: Attempt) -> bool {
        let promoted = attempt.outcome == Outcome::Promoted;
        if promoted {
            self.commit = Some(attempt.commit.clone());
            self.promoted_hash = Some(attempt.manifest_hash.clone());
        }
        self.last = Some(attempt);
        promoted
    }

    /// The attempt that failed at `commit` and waits for a new commit or a manual retry.
    pub fn failed_at(&self, commit: Option<&str>) -> Option<&Attempt> {
        self.last.as_ref().filter(|a| {
            Some(a.commit.as_str()) == commit
                && matches!(a.outcome, Outcome::Failed | Outcome::Invalid)
                && self.promoted_hash.as_deref() != Some(a.manifest_hash.as_str())
        })
    }
}

/// The controller's status, for the API and dashboard.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub repo: String,
    pub branch: String,
    pub path: String,
    pub fetch: FetchState,
    pub commit: Option<String>,
    pub subject: Option<String>,
    pub last_tick: Option<Timestamp>,
    /// When a fetch last succeeded.
    #[serde(default)]
    pub last_fetch_ok: Option<Timestamp>,
    /// Fetches that failed (unreachable remote, missing branch, checkout error), in all.
    #[serde(default)]
    pub fetch_failures: u64,
    pub environments: BTreeMap<String, EnvStatus>,
    /// Environments whose manifest was removed from the repository, newest last (at most
    /// [`REMOVED_KEPT`]); production was left as it is.
    #[serde(default)]
    pub removed: Vec<Removed>,
}

/// How many removals [`Status::removed`] remembers.
pub const REMOVED_KEPT: usize = 20;

/// An environment the controller stopped following because its manifest left the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub environment: String,
    pub client: Option<String>,
    /// The manifest file it had, relative to `<path>`.
    pub manifest: String,
    /// The first commit without it.
    pub commit: String,
    pub at: Timestamp,
    pub message: String,
}

/// What one tick did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TickReport {
    pub at: Timestamp,
    pub fetch: FetchState,
    pub commit: Option<String>,
    /// Promotions started during the tick, by environment.
    pub attempts: Vec<(String, Attempt)>,
    /// Drift found during the tick, by environment.
    pub drift: Vec<(String, Drift)>,
    /// Manifests that could not even be read for their environment name.
    pub errors: Vec<String>,
    /// Environments dropped because their manifest left the repository.
    pub removed: Vec<String>,
}
