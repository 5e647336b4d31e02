//! Holding an environment's lock for the length of a run: taken (or taken over from a dead
//! holder) at the start, renewed in the background while the run works, released at the end —
//! also when the run fails or is stopped by a signal. A process killed outright leaves its row
//! behind; the next command sees its pid gone (or its lease over) and takes over.
//!
//! On a platform several machines manage (kubernetes), the store of one machine cannot see the
//! runs of another: there the platform's own lock ([`crate::engine::Engine::shared_lock`], a
//! Lease) is taken too, after the store's, held and renewed the same way ([`SharedGuard`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::engine::shared_lock::{self, SharedLock, SharedLockError};
use crate::owner::{self, Liveness};
use crate::store::{Acquired, Claim, LockHolder, Store, StoreError};

/// How long a lock stays valid without being renewed.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often the holder renews it.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often `--wait` asks again.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{env} is locked by another run: {}; wait for it, or pass --wait DURATION",
        .holder.describe()
    )]
    Held { env: String, holder: LockHolder },
    #[error(
        "{env} was still locked after waiting {}: {}",
        crate::manifest::duration::format(*.waited),
        .holder.describe()
    )]
    TimedOut {
        env: String,
        holder: LockHolder,
        waited: Duration,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A held lock. Release it with [`LockGuard::release`]; dropping it releases it too.
pub struct LockGuard {
    store: Arc<Store>,
    env: String,
    run: String,
    renewer: tokio::task::JoinHandle<()>,
    released: bool,
    shared: Option<SharedGuard>,
}

/// A dead holder: its process is gone (on this host). Another host's holder only by its lease.
fn is_dead(h: &LockHolder) -> bool {
    owner::liveness(&h.owner) == Liveness::Dead
}

/// Whether `h` still holds its lock at `now`: its lease runs and its process is not known dead.
/// Otherwise the next run takes it over, and a run it left is interrupted.
pub fn holds(h: &LockHolder, now: jiff::Timestamp) -> bool {
    h.expires >= now && !is_dead(h)
}

/// Takes `env`'s lock for `run`, waiting up to `wait` for a live holder to let go. Returns the
/// guard and the dead holder it replaced, if any. `lost` is cancelled if the lock is lost while
/// held (its lease ran out and another process took it).
pub async fn acquire(
    store: &Arc<Store>,
    env: &str,
    run: &str,
    command: &str,
    wait: Option<Duration>,
    lost: CancellationToken,
) -> Result<(LockGuard, Option<LockHolder>), LockError> {
    let claim = Claim {
        environment: env.to_string(),
        run: run.to_string(),
        owner: owner::current(),
        user: crate::report::run::current_user(),
        command: command.to_string(),
    };
    let t0 = Instant::now();
    let replaced = loop {
        let c = claim.clone();
        let got = store
            .call(move |s| s.acquire_lock(&c, LEASE, jiff::Timestamp::now(), is_dead))
            .await?;
        match got {
            Acquired::Granted { replaced } => break replaced,
            Acquired::Held(holder) => match wait {
                None => {
                    return Err(LockError::Held {
                        env: env.to_string(),
                        holder,
                    });
                }
                Some(limit) if t0.elapsed() >= limit => {
                    return Err(LockError::TimedOut {
                        env: env.to_string(),
                        holder,
                        waited: limit,
                    });
                }
                Some(_) => tokio::time::sleep(POLL).await,
            },
        }
    };
    let renewer = {
        let (store, env, run) = (store.clone(), env.to_string(), run.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let (e, r) = (env.clone(), run.clone());
                match store
                    .call(move |s| s.renew_lock(&e, &r, LEASE, jiff::Timestamp::now()))
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(%env, %run, "the lock was taken over by another process");
                        lost.cancel();
                        return;
                    }
                    // A busy or full store: try again at the next tick, within the lease.
                    Err(e) => tracing::warn!(%env, %run, "renewing the lock: {e}"),
                }
            }
        })
    };
    Ok((
        LockGuard {
            store: store.clone(),
            env: env.to_string(),
            run: run.to_string(),
            renewer,
            released: false,
            shared: None,
        },
        replaced,
    ))
}

impl LockGuard {
    /// Holds the platform's lock too, released with this one.
    pub fn share(&mut self, shared: SharedGuard) {
        self.shared = Some(shared);
    }

    pub async fn release(mut self) -> Result<(), StoreError> {
        self.renewer.abort();
        self.released = true;
        if let Some(shared) = self.shared.take() {
            // The Lease runs out by itself if this fails: a warning, not a failed run.
            if let Err(e) = shared.release().await {
                tracing::warn!("releasing the shared lock: {e}");
            }
        }
        let (env, run) = (self.env.clone(), self.run.clone());
        self.store.call(move |s| s.release_lock(&env, &run)).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.renewer.abort();
        if !self.released {
            let _ = self.store.release_lock(&self.env, &self.run);
        }
    }
}

/// How often `--wait` asks the platform's lock again.
const SHARED_POLL: Duration = Duration::from_secs(2);

/// The platform's lock, held: renewed in the background until released.
pub struct SharedGuard {
    lock: Arc<dyn SharedLock>,
    renewer: tokio::task::JoinHandle<()>,
}

/// Takes the platform's lock, waiting up to `wait` for its holder to let go; `lost` is cancelled
/// if it is taken from us while held (we failed to renew it in time and another run took it).
pub async fn acquire_shared(
    lock: Box<dyn SharedLock>,
    wait: Option<Duration>,
    lost: CancellationToken,
) -> Result<(SharedGuard, shared_lock::Acquired), SharedLockError> {
    let t0 = Instant::now();
    let acquired = loop {
        match lock.acquire(jiff::Timestamp::now()).await {
            Ok(a) => break a,
            Err(SharedLockError::Held { .. }) if wait.is_some_and(|w| t0.elapsed() < w) => {
                tokio::time::sleep(SHARED_POLL).await
            }
            Err(e) => return Err(e),
        }
    };
    let lock: Arc<dyn SharedLock> = Arc::from(lock);
    let renewer = {
        let lock = lock.clone();
        let every = lock.renew_every();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match lock.acquire(jiff::Timestamp::now()).await {
                    Ok(_) => {}
                    Err(e @ SharedLockError::Held { .. }) => {
                        tracing::error!("the shared lock was taken over: {e}");
                        lost.cancel();
                        return;
                    }
                    // An API server briefly away: again at the next tick, within the lease.
                    Err(e) => tracing::warn!("renewing the shared lock: {e}"),
                }
            }
        })
    };
    Ok((SharedGuard { lock, renewer }, acquired))
}

impl SharedGuard {
    pub async fn release(self) -> Result<bool, SharedLockError> {
        self.renewer.abort();
        self.lock.release().await
    }
}

impl Drop for SharedGuard {
    fn drop(&mut self) {
        // Not released (a panic, an early return): the Lease runs out by itself.
        self.renewer.abort();
    }
}
