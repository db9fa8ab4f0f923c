//! podrun's runtime library: everything that turns a Pod into running processes on this
//! host. It owns pod specs (`spec`), the image store (`image`), cgroups (`cgroups`),
//! security settings (`security`), CRI-format logs (`logs`), container process creation
//! (`process`, `rootfs`), the per-pod monitor (`monitor`) and the on-disk state (`state`).
//!
//! The crate does not use tokio: callers that are async run it on blocking threads.

pub mod cgroups;
pub mod fault;
pub mod image;
pub mod logs;
pub mod monitor;
pub mod names;
pub mod network;
pub mod oci;
pub mod plan;
pub mod planner;
pub mod pod;
pub mod process;
pub mod procfs;
pub mod rootfs;
pub mod sandbox;
pub mod security;
pub mod spec;
pub mod state;
pub mod status;
pub mod syscall;
