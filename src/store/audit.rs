//! The audit trail's anchor: the sequence number and hash of the last entry appended to
//! `<state>/audit.log` (see [`crate::audit`]). Kept apart from the log, so that cutting entries
//! off the log's end shows as a log shorter than its anchor; and appends run under the store's
//! write lock, which serializes them across processes.

use rusqlite::TransactionBehavior;

use super::{Store, StoreError};

/// The last entry the audit log is known to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    pub seq: u64,
    /// Hex SHA-256 of the entry.
    pub hash: String,
}

impl Store {
    /// The anchored head of the audit log, if anything was ever appended.
    pub fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        self.read(|conn| self.head_in(conn))
    }

    /// Runs `append` holding the store's write lock (so appenders in several processes take
    /// turns), gives it the current head, and records the head it returns. `append` does the
    /// file write; if it fails, or the process dies before the commit, the head is unchanged.
    pub fn audit_append<T, E: From<StoreError>>(
        &self,
        append: impl FnOnce(Option<&AuditHead>) -> Result<(AuditHead, T), E>,
    ) -> Result<T, E> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let head = self.head_in(&tx)?;
        let (new, value) = append(head.as_ref())?;
        tx.execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            rusqlite::params![new.seq as i64, new.hash],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(value)
    }

    fn head_in(&self, conn: &rusqlite::Connection) -> Result<Option<AuditHead>, StoreError> {
        self.row(
            conn,
            "SELECT seq, hash FROM audit_head WHERE id = 1",
            [],
            |r| {
                Ok(AuditHead {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::store;

    #[test]
    fn the_head_is_recorded_only_when_the_append_succeeds() {
        let (_dir, store) = store();
        assert_eq!(store.audit_head().unwrap(), None);
        let first = AuditHead {
            seq: 1,
            hash: "ab".repeat(32),
        };
        let seen = store
            .audit_append(|head| Ok::<_, StoreError>((first.clone(), head.cloned())))
            .unwrap();
        assert_eq!(seen, None);
        assert_eq!(store.audit_head().unwrap(), Some(first.clone()));
        let failed: Result<(), StoreError> = store.audit_append(|head| {
            assert_eq!(head, Some(&first));
            Err(StoreError::Cancelled {
                path: store.path().to_path_buf(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(store.audit_head().unwrap(), Some(first));
    }
}
