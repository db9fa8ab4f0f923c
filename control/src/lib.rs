//! podrun's control plane: a Kubernetes API server that real kubectl drives, on an
//! embedded store or etcd, in the shape of kube-apiserver in miniature.
//!
//! - `api`: HTTP, discovery, OpenAPI, watch, patch, admission, authentication;
//! - `registry`: one file per resource: defaults, validation, strategy;
//! - `printers`: the Table columns `kubectl get` shows for each resource;
//! - `store`: the storage trait, the embedded backend and the etcd backend.

pub mod api;
pub mod client;
pub mod controllers;
pub mod printers;
pub mod registry;
pub mod server;
pub mod store;
