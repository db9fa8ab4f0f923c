//! podrun's node agent: the Kubernetes CRI v1 gRPC server (RuntimeService and
//! ImageService) on a unix socket, and the streaming server for exec, attach and
//! port-forward. It does no raw syscalls of its own: pods and containers are run by
//! `podrun-runtime` and their monitors.

pub mod agent;
pub mod dns;
pub mod image_service;
pub mod kubelet;
pub mod network;
pub mod proxy;
pub mod server;
pub mod store;
pub mod streaming;
pub mod transport;

pub use agent::{run, AgentConfig};
