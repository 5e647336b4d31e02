//! Gates: what must be true before production is touched. Decided in pure functions of the
//! playbook, the plan, the recorded grants and `now`.

pub mod evaluate;
pub mod window;

pub use evaluate::{Decision, Request, approval, evaluate, resume_command};
