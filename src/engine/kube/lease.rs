//! One change at a time per environment, on a cluster: the lock as a `coordination.k8s.io/v1`
//! Lease named [`LEASE_NAME`] in the environment's namespace.
//!
//! [`decide`] is pure (the Lease as read, who asks, `now`); [`LeaseLock`] does the I/O, as the
//! engine's [`SharedLock`]. Writes
//! carry the `resourceVersion` that was read, so two processes deciding at once cannot both win:
//! the API server answers the slower one 409, which is reported as the lock being held.
//! `promote` and `rollback` take it through `exec::lock::acquire_shared`, after the local
//! store's lock, and renew it every third of its duration while they run.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};

use super::{FIELD_MANAGER, namespace};
use crate::engine::shared_lock::{Acquired, SharedLock, SharedLockError, holder_owner};

/// The Lease's name in `rollout-<env>`.
pub const LEASE_NAME: &str = "rollout-lock";

/// What to do with the Lease as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it.
    Create,
    /// It is ours: renew it.
    Renew,
    /// Its holder let it expire, released it, or is a process of this host that is gone: take
    /// it over.
    TakeOver { from: Option<String> },
    /// Someone else holds it until `until`.
    Refuse { holder: String, until: Timestamp },
}

/// When the Lease expires: its last renewal (or acquisition) plus its duration.
pub fn expiry(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    let since = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let secs = spec.lease_duration_seconds?;
    since
        .checked_add(jiff::SignedDuration::from_secs(i64::from(secs)))
        .ok()
}

/// What `me` may do with `lease` at `now`; `gone` tells whether a holder's process is known to
/// be gone (only a process of this host can be).
pub fn decide(
    lease: Option<&Lease>,
    me: &str,
    now: Timestamp,
    gone: &dyn Fn(&str) -> bool,
) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    match holder {
        None => Decision::TakeOver { from: None },
        Some(h) if h == me => Decision::Renew,
        Some(h) if gone(&h) => Decision::TakeOver { from: Some(h) },
        Some(h) => match expiry(lease) {
            Some(until) if until > now => Decision::Refuse { holder: h, until },
            // Expired, or never said how long: a lease nobody renews is not held.
            _ => Decision::TakeOver { from: Some(h) },
        },
    }
}

/// A [`SharedLock`] as a Lease in the environment's namespace.
pub struct LeaseLock {
    api: Api<Lease>,
    env: String,
    namespace: String,
    holder: String,
    duration_secs: i32,
}

impl LeaseLock {
    /// The lock of `env` for `holder` (a run id with its host and pid), held for `duration_secs`
    /// past each renewal.
    pub fn new(client: kube::Client, env: &str, holder: &str, duration_secs: i32) -> Self {
        let ns = namespace(env);
        LeaseLock {
            api: Api::namespaced(client, &ns),
            env: env.to_string(),
            namespace: ns,
            holder: holder.to_string(),
            duration_secs,
        }
    }

    /// What and where the lock is, for messages.
    fn lock(&self) -> String {
        format!("Lease {LEASE_NAME} in {}", self.namespace)
    }

    fn api_err(&self, action: &'static str, e: kube::Error) -> SharedLockError {
        SharedLockError::Call {
            action,
            lock: self.lock(),
            reason: e.to_string(),
        }
    }

    fn held(&self, holder: String, until: String) -> SharedLockError {
        SharedLockError::Held {
            env: self.env.clone(),
            lock: self.lock(),
            holder,
            until,
        }
    }
}

#[async_trait::async_trait]
impl SharedLock for LeaseLock {
    /// How often a holder renews: a third of the duration, so two renewals may fail in a row.
    fn renew_every(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::try_from(self.duration_secs / 3).unwrap_or(1).max(1))
    }

    /// Takes the lock, renews it if ours, or takes over an expired one; refuses a held one.
    async fn acquire(&self, now: Timestamp) -> Result<Acquired, SharedLockError> {
        let found = self
            .api
            .get_opt(LEASE_NAME)
            .await
            .map_err(|e| self.api_err("read", e))?;
        let gone = |h: &str| {
            holder_owner(h)
                .is_some_and(|o| crate::owner::liveness(o) == crate::owner::Liveness::Dead)
        };
        let decision = decide(found.as_ref(), &self.holder, now, &gone);
        let stamp = MicroTime(now);
        match (decision, found) {
            (Decision::Refuse { holder, until }, _) => Err(self.held(holder, until.to_string())),
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.to_string()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.holder.clone()),
                        lease_duration_seconds: Some(self.duration_secs),
                        acquire_time: Some(stamp.clone()),
                        renew_time: Some(stamp),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..Default::default()
                };
                match self.api.create(&pp, &lease).await {
                    Ok(_) => Ok(Acquired::Created),
                    Err(kube::Error::Api(s)) if s.code == 409 => Err(self.held(
                        "another process (it created the Lease just now)".into(),
                        "it is released".into(),
                    )),
                    Err(e) => Err(self.api_err("create", e)),
                }
            }
            (decision, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                let outcome = match decision {
                    Decision::Renew => Acquired::Renewed,
                    Decision::TakeOver { from } => {
                        spec.holder_identity = Some(self.holder.clone());
                        spec.acquire_time = Some(stamp.clone());
                        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                        Acquired::TookOver { from }
                    }
                    Decision::Create | Decision::Refuse { .. } => unreachable!("handled above"),
                };
                spec.renew_time = Some(stamp);
                spec.lease_duration_seconds = Some(self.duration_secs);
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..Default::default()
                };
                // `lease` carries the resourceVersion read above: a concurrent writer makes it 409.
                match self.api.replace(LEASE_NAME, &pp, &lease).await {
                    Ok(_) => Ok(outcome),
                    Err(kube::Error::Api(s)) if s.code == 409 => Err(self.held(
                        "another process (it changed the Lease just now)".into(),
                        "it is released".into(),
                    )),
                    Err(e) => Err(self.api_err("update", e)),
                }
            }
            (_, None) => unreachable!("decide returns Create when there is no lease"),
        }
    }

    /// Who holds the lock at `now` and until when, without touching it; `None` when nobody
    /// does (no Lease, released, or run out).
    async fn holder_at(
        &self,
        now: Timestamp,
    ) -> Result<Option<(String, Timestamp)>, SharedLockError> {
        let found = self
            .api
            .get_opt(LEASE_NAME)
            .await
            .map_err(|e| self.api_err("read", e))?;
        Ok(
            match decide(found.as_ref(), &self.holder, now, &|_| false) {
                Decision::Refuse { holder, until } => Some((holder, until)),
                Decision::Renew => found
                    .as_ref()
                    .and_then(expiry)
                    .map(|u| (self.holder.clone(), u)),
                Decision::Create | Decision::TakeOver { .. } => None,
            },
        )
    }

    /// Gives the lock up if we hold it; a lock held by someone else is left alone.
    async fn release(&self) -> Result<bool, SharedLockError> {
        let Some(lease) = self
            .api
            .get_opt(LEASE_NAME)
            .await
            .map_err(|e| self.api_err("read", e))?
        else {
            return Ok(false);
        };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.holder.as_str());
        if !ours {
            return Ok(false);
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: lease.metadata.resource_version.clone(),
                uid: None,
            }),
            ..Default::default()
        };
        match self.api.delete(LEASE_NAME, &dp).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
            Err(e) => Err(self.api_err("delete", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: &str, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                renew_time: Some(MicroTime(renewed.parse().unwrap())),
                lease_duration_seconds: Some(secs),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn decisions() {
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let alive = |_: &str| false;
        assert_eq!(decide(None, "me", now, &alive), Decision::Create);
        let mine = lease("me", "2026-01-01T11:00:00Z", 10);
        assert_eq!(decide(Some(&mine), "me", now, &alive), Decision::Renew);
        let held = lease("other", "2026-01-01T11:59:55Z", 30);
        assert_eq!(
            decide(Some(&held), "me", now, &|h| h == "someone else"),
            Decision::Refuse {
                holder: "other".into(),
                until: "2026-01-01T12:00:25Z".parse().unwrap()
            }
        );
        // Within its duration, but its process (on this host) is gone.
        assert_eq!(
            decide(Some(&held), "me", now, &|h| h == "other"),
            Decision::TakeOver {
                from: Some("other".into())
            }
        );
        let expired = lease("other", "2026-01-01T11:59:00Z", 30);
        assert_eq!(
            decide(Some(&expired), "me", now, &alive),
            Decision::TakeOver {
                from: Some("other".into())
            }
        );
        let released = lease("", "2026-01-01T11:59:59Z", 30);
        assert_eq!(
            decide(Some(&released), "me", now, &alive),
            Decision::TakeOver { from: None }
        );
    }
}
