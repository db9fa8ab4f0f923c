//! The HTTP API: routing, discovery, OpenAPI, the generic resource handlers, watch,
//! patch, admission and authentication.

pub mod auth;
pub mod openapi;
pub mod patch;
pub mod selector;
