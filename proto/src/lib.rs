//! Kubernetes' Container Runtime Interface, package `runtime.v1`, wire-identical to the
//! upstream definition: the messages, the `RuntimeService` and `ImageService` servers
//! and clients.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}
