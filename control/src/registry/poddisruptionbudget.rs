//! policy/v1 PodDisruptionBudgets, which evictions honour.

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{json, Value};

use super::generic::{self, Def};
use super::meta::invalid;
use super::{Cause, ResourceInfo};

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "policy",
        version: "v1",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        namespaced: true,
        short_names: &["pdb"],
        categories: &[],
        subresources: &["status"],
    },
    decode: generic::decode::<PodDisruptionBudget>,
    default: generic::no_defaults,
    validate,
    validate_update: generic::no_update_checks,
    status: true,
    generation: true,
    initial_status: |_| json!({ "disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0 }),
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value: generic::field_value,
    fields: &[],
};

fn validate(obj: &Value) -> Vec<Cause> {
    let spec = &obj["spec"];
    if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
        return vec![invalid(
            "spec",
            spec,
            "minAvailable and maxUnavailable cannot be both set",
        )];
    }
    Vec::new()
}
