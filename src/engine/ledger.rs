//! The run ledger: a capability ([`crate::engine::Engine::ledger`]) of the platforms that keep
//! the environments' run records themselves (kubernetes: a ConfigMap per run), so every machine
//! managing an environment there sees the same runs. The record types are the store's
//! (`engine` depends on `store`, never the other way).

use async_trait::async_trait;

use super::EngineError;

/// A platform's own record of an environment's runs, shared by every machine that manages it
/// there (kubernetes: a ConfigMap per run, [`super::kube::ledger`]). The local store is a cache of it:
/// see `store::ledger`.
#[async_trait]
pub trait RunLedger: Send + Sync {
    /// Writes one run's whole record (its revision and journal), replacing what was there.
    async fn push(&self, doc: &crate::store::RunDoc) -> Result<(), EngineError>;
    /// Every run recorded for `env`, oldest revision first.
    async fn pull(&self, env: &str) -> Result<Vec<crate::store::RunDoc>, EngineError>;
    /// Where the records are, for messages.
    fn describe(&self, env: &str) -> String;
    /// Where the gates are, for messages.
    fn describe_gates(&self, env: &str) -> String;
    /// The environment's gates (the run parked at a gate, and its grants), as every machine
    /// sees them; `None` when none were ever written.
    async fn pull_gates(&self, env: &str) -> Result<Option<crate::store::GatesDoc>, EngineError>;
    /// Rewrites the environment's gates as `change` makes them from what is there (`None` when
    /// nothing ever was); `change` answering `None` writes nothing. A concurrent write makes it
    /// read them again and ask `change` again. The doc as written, if one was.
    async fn update_gates(
        &self,
        env: &str,
        change: &(
             dyn for<'d> Fn(Option<&'d crate::store::GatesDoc>) -> Option<crate::store::GatesDoc>
                 + Send
                 + Sync
         ),
    ) -> Result<Option<crate::store::GatesDoc>, EngineError>;
}
