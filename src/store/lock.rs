//! The per-environment lock: one promotion or rollback at a time. A row names its holder (the
//! process as `host:pid:start`, the user, the run, the command) and is a lease: the holder renews
//! it while it works, and a lock whose holder is dead (same host, pid gone or reused) or whose
//! lease ran out is taken over, atomically, by the next command, which is told whom it replaced.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, ts_from_sql, ts_to_sql};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockHolder {
    pub environment: String,
    pub run: String,
    /// `host:pid:start` of the holding process.
    pub owner: String,
    pub user: String,
    /// What the holder is doing: `promote`, `rollback`…
    pub command: String,
    pub acquired: Timestamp,
    pub renewed: Timestamp,
    pub expires: Timestamp,
}

impl LockHolder {
    /// The host and pid parts of the owner, for messages.
    pub fn host_pid(&self) -> (String, String) {
        crate::owner::host_pid(&self.owner)
    }

    /// One line naming the holder: who, where, which run, since when.
    pub fn describe(&self) -> String {
        let (host, pid) = self.host_pid();
        format!(
            "run {} ({}) by {} on {host}, pid {pid}, since {}",
            self.run,
            self.command,
            self.user,
            self.acquired.strftime("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// What asking for the lock gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Ours; `replaced` is a dead or expired holder we took it over from.
    Granted { replaced: Option<LockHolder> },
    /// Someone alive holds it.
    Held(LockHolder),
}

/// Who wants the lock.
#[derive(Debug, Clone)]
pub struct Claim {
    pub environment: String,
    pub run: String,
    pub owner: String,
    pub user: String,
    pub command: String,
}

impl Store {
    /// Takes the lock of `claim.environment` for `lease`, or says who holds it. A holder for
    /// which `is_dead` is true, or whose lease ended before `now`, is replaced. Taking a lock
    /// this run already holds renews it.
    pub fn acquire_lock(
        &self,
        claim: &Claim,
        lease: Duration,
        now: Timestamp,
        is_dead: impl Fn(&LockHolder) -> bool,
    ) -> Result<Acquired, StoreError> {
        let expires = now + SignedDuration::try_from(lease).unwrap_or(SignedDuration::MAX);
        self.write(|tx| {
            let current = self.holder_in(tx, &claim.environment)?;
            let replaced = match current {
                Some(h) if h.run == claim.run && h.owner == claim.owner => None,
                Some(h) if h.expires < now || is_dead(&h) => Some(h),
                Some(h) => return Ok(Acquired::Held(h)),
                None => None,
            };
            tx.execute(
                "INSERT OR REPLACE INTO locks
                    (environment, run, owner, user, command, acquired, renewed, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                params![
                    claim.environment,
                    claim.run,
                    claim.owner,
                    claim.user,
                    claim.command,
                    ts_to_sql(now),
                    ts_to_sql(expires),
                ],
            )
            .map_err(|e| self.err(e))?;
            Ok(Acquired::Granted { replaced })
        })
    }

    /// Extends the lease of `run`'s lock; `false` if the run no longer holds it (it was taken
    /// over after its lease ran out).
    pub fn renew_lock(
        &self,
        env: &str,
        run: &str,
        lease: Duration,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let expires = now + SignedDuration::try_from(lease).unwrap_or(SignedDuration::MAX);
        let n = self.execute(
            "UPDATE locks SET renewed = ?3, expires = ?4
             WHERE environment = ?1 AND run = ?2",
            params![env, run, ts_to_sql(now), ts_to_sql(expires)],
        )?;
        Ok(n == 1)
    }

    /// Gives up `run`'s lock of `env`; nothing happens if it does not hold it.
    pub fn release_lock(&self, env: &str, run: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM locks WHERE environment = ?1 AND run = ?2",
            params![env, run],
        )?;
        Ok(())
    }

    /// Who holds the lock of `env`, if anyone (alive or not).
    pub fn lock_holder(&self, env: &str) -> Result<Option<LockHolder>, StoreError> {
        self.read(|conn| self.holder_in(conn, env))
    }

    fn holder_in(
        &self,
        conn: &rusqlite::Connection,
        env: &str,
    ) -> Result<Option<LockHolder>, StoreError> {
        let row: Option<(String, String, String, String, String, String, String)> = self.row(
            conn,
            "SELECT run, owner, user, command, acquired, renewed, expires FROM locks
             WHERE environment = ?1",
            [env],
            |r| r.try_into(),
        )?;
        let Some((run, owner, user, command, acquired, renewed, expires)) = row else {
            return Ok(None);
        };
        Ok(Some(LockHolder {
            environment: env.to_string(),
            run,
            owner,
            user,
            command,
            acquired: ts_from_sql(self, &acquired)?,
            renewed: ts_from_sql(self, &renewed)?,
            expires: ts_from_sql(self, &expires)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::store;

    fn claim(run: &str, owner: &str) -> Claim {
        Claim {
            environment: "shop".into(),
            run: run.into(),
            owner: owner.into(),
            user: "ana".into(),
            command: "promote".into(),
        }
    }

    const LEASE: Duration = Duration::from_secs(15);

    /// A store whose `shop` lock run r1 (process `h:1:1`) took at the instant returned.
    fn held_by_r1() -> (tempfile::TempDir, Store, Timestamp) {
        let (dir, store) = store();
        let now = Timestamp::now();
        store
            .acquire_lock(&claim("r1", "h:1:1"), LEASE, now, |_| false)
            .unwrap();
        (dir, store, now)
    }

    #[test]
    fn a_live_holder_keeps_the_lock_and_is_named() {
        let (_dir, store) = store();
        let now = Timestamp::now();
        let got = store
            .acquire_lock(&claim("r1", "h:1:1"), LEASE, now, |_| false)
            .unwrap();
        assert_eq!(got, Acquired::Granted { replaced: None });
        let second = store
            .acquire_lock(&claim("r2", "h:2:2"), LEASE, now, |_| false)
            .unwrap();
        let Acquired::Held(h) = second else {
            panic!("{second:?}")
        };
        assert_eq!(h.run, "r1");
        assert_eq!(h.host_pid(), ("h".into(), "1".into()));
        assert!(h.describe().contains("run r1 (promote) by ana on h, pid 1"));
        // Releasing by another run does nothing; by the holder frees it.
        store.release_lock("shop", "r2").unwrap();
        assert!(store.lock_holder("shop").unwrap().is_some());
        store.release_lock("shop", "r1").unwrap();
        assert!(store.lock_holder("shop").unwrap().is_none());
    }

    #[test]
    fn a_dead_or_expired_holder_is_replaced_and_reported() {
        let (_dir, store, now) = held_by_r1();
        let got = store
            .acquire_lock(&claim("r2", "h:2:2"), LEASE, now, |h| h.owner == "h:1:1")
            .unwrap();
        let Acquired::Granted {
            replaced: Some(old),
        } = got
        else {
            panic!("{got:?}")
        };
        assert_eq!(old.run, "r1");
        // r1 lost it: it cannot renew.
        assert!(!store.renew_lock("shop", "r1", LEASE, now).unwrap());
        assert!(store.renew_lock("shop", "r2", LEASE, now).unwrap());

        let later = now + SignedDuration::from_secs(16);
        let got = store
            .acquire_lock(&claim("r3", "elsewhere:3:3"), LEASE, later, |_| false)
            .unwrap();
        assert!(
            matches!(&got, Acquired::Granted { replaced: Some(h) } if h.run == "r2"),
            "an expired lease is taken over: {got:?}"
        );
    }

    #[test]
    fn renewing_extends_the_lease() {
        let (_dir, store, now) = held_by_r1();
        let later = now + SignedDuration::from_secs(10);
        assert!(store.renew_lock("shop", "r1", LEASE, later).unwrap());
        let h = store.lock_holder("shop").unwrap().unwrap();
        assert_eq!(h.expires, later + SignedDuration::from_secs(15));
        // Still held at now+20 (the old lease would have ended at now+15).
        let got = store
            .acquire_lock(
                &claim("r2", "h:2:2"),
                LEASE,
                now + SignedDuration::from_secs(20),
                |_| false,
            )
            .unwrap();
        assert!(matches!(got, Acquired::Held(_)), "{got:?}");
    }
}
