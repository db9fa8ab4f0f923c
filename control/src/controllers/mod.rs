//! Controllers that run inside `podrun server`: reconcile loops that are idempotent and
//! look at the state, not at what changed.

pub mod client;
pub mod csr;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod gc;
pub mod leader;
pub mod manager;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podgc;
pub mod replicaset;
pub mod scheduler;
pub mod shared;
pub mod tokencleaner;
