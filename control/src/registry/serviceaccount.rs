//! ServiceAccounts.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::generic::{self, Def};
use super::ResourceInfo;

pub static DEF: Def = Def {
    info: ResourceInfo {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        namespaced: true,
        short_names: &["sa"],
        categories: &[],
        subresources: &[],
    },
    decode: generic::decode::<ServiceAccount>,
    default: generic::no_defaults,
    validate: generic::no_checks,
    validate_update: generic::no_update_checks,
    status: false,
    generation: false,
    initial_status: generic::empty_status,
    prepare_status_update: generic::no_prepare,
    prepare_update: generic::no_prepare,
    field_value: generic::field_value,
    fields: &[],
};
