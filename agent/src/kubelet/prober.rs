//! Probes and lifecycle hooks.
