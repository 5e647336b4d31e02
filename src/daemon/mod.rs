pub mod gitops;
pub mod schedule;
