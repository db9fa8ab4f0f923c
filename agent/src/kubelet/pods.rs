//! Pod sync.
