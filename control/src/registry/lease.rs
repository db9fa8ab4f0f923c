//! coordination.k8s.io/v1 Leases: node heartbeats and leader election.

use k8s_openapi::api::coordination::v1::Lease;

use super::generic::{self, Def};
use super::ResourceInfo;

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    decode: generic::decode::<Lease>,
    default: generic::no_defaults,
    validate: generic::no_checks,
    validate_update: generic::no_update_checks,
    status: false,
    generation: false,
    initial_status: generic::empty_status,
    fields: &[],
};
