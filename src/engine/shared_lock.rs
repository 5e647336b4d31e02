//! The platform's own lock on an environment, shared by every machine that manages it there:
//! a capability ([`crate::engine::Engine::shared_lock`]) that only some backends offer
//! (kubernetes: a Lease, [`super::kube::lease`]). Where there is none, the store's lock is the
//! only one. The executor holds and renews it through this trait alone, so no backend type
//! reaches the seam.

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;

/// The holder identity of a run: who, which process (`host:pid:start`), which run.
pub fn holder(user: &str, owner: &str, run: &str) -> String {
    format!("{user} ({owner}, run {run})")
}

/// The process (`host:pid:start`) inside a [`holder`] identity, if it is one.
pub fn holder_owner(holder: &str) -> Option<&str> {
    let inner = holder.rsplit_once(" (")?.1.strip_suffix(')')?;
    Some(inner.split_once(", run ")?.0)
}

/// What acquiring did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    Created,
    Renewed,
    TookOver { from: Option<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum SharedLockError {
    /// Someone else holds it; `lock` says what and where the lock is (kubernetes: its Lease).
    #[error(
        "environment {env} is locked by {holder} until {until} ({lock}); try again after it finishes"
    )]
    Held {
        env: String,
        lock: String,
        holder: String,
        until: String,
    },
    #[error("{action} {lock} failed: {reason}")]
    Call {
        action: &'static str,
        lock: String,
        reason: String,
    },
}

/// One environment's shared lock, for one holder (the identity it was made with).
#[async_trait]
pub trait SharedLock: Send + Sync {
    /// Takes the lock, renews it if ours, or takes over one its holder left; refuses a held one
    /// with [`SharedLockError::Held`].
    async fn acquire(&self, now: Timestamp) -> Result<Acquired, SharedLockError>;

    /// Who holds the lock at `now` and until when, without touching it; `None` when nobody does.
    async fn holder_at(
        &self,
        now: Timestamp,
    ) -> Result<Option<(String, Timestamp)>, SharedLockError>;

    /// Gives the lock up if we hold it; one held by someone else is left alone. Whether it was
    /// ours.
    async fn release(&self) -> Result<bool, SharedLockError>;

    /// How often a holder renews it (with [`SharedLock::acquire`]) so it never runs out.
    fn renew_every(&self) -> Duration;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_identities_carry_their_process() {
        let h = holder("alice (ops)", "box:42:1700000000", "r1a2");
        assert_eq!(h, "alice (ops) (box:42:1700000000, run r1a2)");
        assert_eq!(holder_owner(&h), Some("box:42:1700000000"));
        assert_eq!(holder_owner("some-controller"), None);
    }
}
