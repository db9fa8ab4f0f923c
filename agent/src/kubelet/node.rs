//! Node registration.
