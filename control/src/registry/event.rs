//! core/v1 Events, with the field selectors `kubectl describe` uses to find an object's.

use k8s_openapi::api::core::v1::Event;
use serde_json::Value;

use super::generic::{self, Def};
use super::meta::required;
use super::{Cause, ResourceInfo};

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
    },
    decode: generic::decode::<Event>,
    default: generic::no_defaults,
    validate,
    validate_update: generic::no_update_checks,
    status: false,
    generation: false,
    initial_status: generic::empty_status,
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value,
    fields: &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ],
};

fn validate(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if obj["involvedObject"].is_null() {
        causes.push(required("involvedObject"));
    }
    causes
}

/// EventToSelectableFields: `source` is the reporting component, the rest are paths.
fn field_value(obj: &Value, path: &str) -> String {
    match path {
        "source" => generic::field_value(obj, "source.component"),
        _ => generic::field_value(obj, path),
    }
}
