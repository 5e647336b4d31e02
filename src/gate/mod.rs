//! Gates: what must be true before production is touched. Decided in pure functions of the
//! playbook, the plan and `now`.

pub mod window;
