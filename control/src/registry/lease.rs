//! coordination.k8s.io/v1 Leases: node heartbeats and leader election.

use k8s_openapi::api::coordination::v1::Lease;

use super::generic::{self, Def};
use serde_json::Value;

use super::meta::invalid;
use super::{Cause, ResourceInfo};

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
    validate,
    validate_update: generic::no_update_checks,
    status: false,
    generation: false,
    initial_status: generic::empty_status,
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value: generic::field_value,
    fields: &[],
};

/// ValidateLeaseSpec: a positive duration, a non-negative transition count.
fn validate(obj: &Value) -> Vec<Cause> {
    let spec = &obj["spec"];
    let mut causes = Vec::new();
    let d = &spec["leaseDurationSeconds"];
    if d.as_i64().is_some_and(|d| d <= 0) {
        causes.push(invalid(
            "spec.leaseDurationSeconds",
            d,
            "must be greater than 0",
        ));
    }
    let t = &spec["leaseTransitions"];
    if t.as_i64().is_some_and(|t| t < 0) {
        causes.push(invalid(
            "spec.leaseTransitions",
            t,
            "must be greater than or equal to 0",
        ));
    }
    causes
}
