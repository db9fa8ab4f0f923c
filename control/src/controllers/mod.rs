//! Controllers that run inside `podrun server`: reconcile loops that are idempotent and
//! look at the state, not at what changed.

pub mod csr;
pub mod namespace;
pub mod tokencleaner;
