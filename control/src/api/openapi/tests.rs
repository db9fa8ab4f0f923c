use std::collections::BTreeSet;

use prost::Message;
use serde_json::Value;

use super::proto::{self, additional_properties_item::Oneof};
use super::*;

fn extension<'a>(schema: &'a proto::Schema, name: &str) -> Option<&'a str> {
    schema
        .vendor_extension
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_ref())
        .map(|a| a.yaml.as_str())
}

fn definition<'a>(doc: &'a proto::Document, name: &str) -> &'a proto::Schema {
    doc.definitions
        .as_ref()
        .unwrap()
        .additional_properties
        .iter()
        .find(|d| d.name == name)
        .and_then(|d| d.value.as_ref())
        .unwrap_or_else(|| panic!("no definition {name}"))
}

fn property<'a>(schema: &'a proto::Schema, name: &str) -> &'a proto::Schema {
    schema
        .properties
        .as_ref()
        .unwrap()
        .additional_properties
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| p.value.as_ref())
        .unwrap_or_else(|| panic!("no property {name}"))
}

#[test]
fn v2_protobuf_decodes_with_schema_facts() {
    let api = OpenApi::load().unwrap();
    let doc = proto::Document::decode(api.v2_protobuf()).unwrap();
    assert_eq!(doc.swagger, "2.0");
    assert_eq!(doc.info.as_ref().unwrap().title, "Kubernetes");

    let containers = property(definition(&doc, "io.k8s.api.core.v1.PodSpec"), "containers");
    assert_eq!(containers.r#type.as_ref().unwrap().value, ["array"]);
    let items = &containers.items.as_ref().unwrap().schema;
    assert_eq!(items[0].r#ref, "#/definitions/io.k8s.api.core.v1.Container");
    let key: Value =
        serde_norway::from_str(extension(containers, "x-kubernetes-patch-merge-key").unwrap())
            .unwrap();
    assert_eq!(key, "name");

    let deployment = definition(&doc, "io.k8s.api.apps.v1.Deployment");
    let gvk: Value =
        serde_norway::from_str(extension(deployment, "x-kubernetes-group-version-kind").unwrap())
            .unwrap();
    assert_eq!(
        gvk,
        serde_json::json!([{"group": "apps", "kind": "Deployment", "version": "v1"}])
    );

    let labels = property(
        definition(&doc, "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
        "labels",
    );
    match labels
        .additional_properties
        .as_ref()
        .and_then(|a| a.oneof.as_ref())
    {
        Some(Oneof::Schema(s)) => assert_eq!(s.r#type.as_ref().unwrap().value, ["string"]),
        other => panic!("labels additionalProperties: {other:?}"),
    }
}

#[test]
fn v2_protobuf_has_every_json_definition() {
    let api = OpenApi::load().unwrap();
    let doc = proto::Document::decode(api.v2_protobuf()).unwrap();
    let json: Value = serde_json::from_slice(&api.v2_json()).unwrap();
    let from_json: BTreeSet<&str> = json["definitions"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let from_proto: BTreeSet<&str> = doc
        .definitions
        .as_ref()
        .unwrap()
        .additional_properties
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(from_json, from_proto);
    // Re-encoding the decoded message gives the same bytes: no field was dropped as unknown.
    assert_eq!(doc.encode_to_vec(), api.v2_protobuf().to_vec());
}

#[test]
fn patch_schema_walks_pod_to_container_ports() {
    let api = OpenApi::load().unwrap();
    let spec = api.field("io.k8s.api.core.v1.Pod", "spec").unwrap();
    assert_eq!(
        spec.type_name.as_deref(),
        Some("io.k8s.api.core.v1.PodSpec")
    );
    assert!(!spec.is_list && !spec.is_map);

    let containers = api
        .field("io.k8s.api.core.v1.PodSpec", "containers")
        .unwrap();
    assert!(containers.is_list);
    assert_eq!(
        containers.type_name.as_deref(),
        Some("io.k8s.api.core.v1.Container")
    );
    assert_eq!(containers.merge_key.as_deref(), Some("name"));
    assert_eq!(containers.strategies, ["merge"]);
    assert_eq!(containers.list_type.as_deref(), Some("map"));
    assert_eq!(containers.list_map_keys, ["name"]);

    let ports = api.field("io.k8s.api.core.v1.Container", "ports").unwrap();
    assert!(ports.is_list);
    assert_eq!(
        ports.type_name.as_deref(),
        Some("io.k8s.api.core.v1.ContainerPort")
    );
    assert_eq!(ports.merge_key.as_deref(), Some("containerPort"));
    assert_eq!(ports.list_map_keys, ["containerPort", "protocol"]);

    let volumes = api.field("io.k8s.api.core.v1.PodSpec", "volumes").unwrap();
    assert_eq!(volumes.strategies, ["merge", "retainKeys"]);

    let labels = api
        .field("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", "labels")
        .unwrap();
    assert!(labels.is_map && !labels.is_list);
    assert_eq!(labels.type_name, None);

    assert_eq!(api.field("io.k8s.api.core.v1.PodSpec", "noSuchField"), None);
    assert_eq!(api.field("io.k8s.api.core.v1.NoSuchType", "spec"), None);
}

#[test]
fn definition_names_by_group_version_kind() {
    let api = OpenApi::load().unwrap();
    assert_eq!(
        api.definition_name("apps", "v1", "Deployment"),
        Some("io.k8s.api.apps.v1.Deployment")
    );
    assert_eq!(
        api.definition_name("", "v1", "Pod"),
        Some("io.k8s.api.core.v1.Pod")
    );
    assert_eq!(
        api.definition_name("autoscaling", "v1", "Scale"),
        Some("io.k8s.api.autoscaling.v1.Scale")
    );
    assert_eq!(
        api.definition_name("policy", "v1", "Eviction"),
        Some("io.k8s.api.policy.v1.Eviction")
    );
    assert_eq!(api.definition_name("apps", "v1", "StatefulSet"), None);
}

fn collect_refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(list) => list.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn v3_index_lists_served_group_versions_and_refs_resolve() {
    let api = OpenApi::load().unwrap();
    let index: Value = serde_json::from_slice(&api.v3_index()).unwrap();
    let paths = index["paths"].as_object().unwrap();
    let listed: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let want = BTreeSet::from([
        "api/v1",
        "apis/apps/v1",
        "apis/certificates.k8s.io/v1",
        "apis/coordination.k8s.io/v1",
        "apis/discovery.k8s.io/v1",
        "apis/policy/v1",
    ]);
    assert_eq!(listed, want);

    for (path, entry) in paths {
        let hash = api.v3_hash(path).unwrap();
        assert_eq!(
            entry["serverRelativeURL"],
            format!("/openapi/v3/{path}?hash={hash}")
        );
        let body = api.v3_group_version(path).unwrap();
        assert_eq!(hash, super::hash(&body));
        let doc: Value = serde_json::from_slice(&body).unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty(), "{path}: no $ref");
        for r in refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{path}: $ref {r} is not a component schema"));
            assert!(
                schemas.contains_key(name),
                "{path}: $ref {r} does not resolve"
            );
        }
        // Every path is of this group-version, and writes say they take fieldValidation.
        let doc_paths = doc["paths"].as_object().unwrap();
        assert!(doc_paths
            .keys()
            .all(|p| p.starts_with(&format!("/{path}/"))));
        let validated = doc_paths.values().any(|item| {
            item.get("post")
                .and_then(|op| op["parameters"].as_array())
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "fieldValidation"))
        });
        assert!(validated, "{path}: no POST takes fieldValidation");
    }
    assert_eq!(api.v3_group_version("apis/batch/v1"), None);
}

#[test]
fn apps_v1_document_describes_deployments() {
    let api = OpenApi::load().unwrap();
    let doc: Value =
        serde_json::from_slice(&api.v3_group_version("apis/apps/v1").unwrap()).unwrap();
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    let names: BTreeSet<&str> = patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for want in ["dryRun", "fieldManager", "fieldValidation", "force"] {
        assert!(names.contains(want), "patch lacks {want}: {names:?}");
    }
    assert!(patch["requestBody"]["content"]
        .as_object()
        .unwrap()
        .contains_key("application/strategic-merge-patch+json"));
    let deployment = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        deployment["x-kubernetes-group-version-kind"][0]["kind"],
        "Deployment"
    );
}

#[test]
fn etag_is_a_quoted_hash_of_the_json() {
    let api = OpenApi::load().unwrap();
    let etag = api.etag_v2();
    assert_eq!(etag, format!("\"{}\"", super::hash(&api.v2_json())));
    assert_eq!(etag.len(), 128 + 2);
}

#[test]
fn accept_header_picks_the_v2_encoding() {
    assert!(wants_v2_protobuf(
        "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
    ));
    assert!(wants_v2_protobuf(V2_PROTOBUF_CONTENT_TYPE));
    assert!(!wants_v2_protobuf("application/json"));
    assert!(!wants_v2_protobuf("application/json, */*"));
    assert!(!wants_v2_protobuf(""));
}

#[test]
fn v2_protobuf_paths_carry_query_parameters_and_the_kind_of_each_operation() {
    let api = get();
    let doc = proto::Document::decode(api.v2_protobuf()).unwrap();
    let item = doc
        .paths
        .as_ref()
        .unwrap()
        .path
        .iter()
        .find(|p| p.name == "/api/v1/namespaces/{namespace}/configmaps/{name}")
        .and_then(|p| p.value.as_ref())
        .expect("the configmap path");
    let patch = item.patch.as_ref().expect("a patch operation");
    // What kubectl's dry-run check looks for: the kind, and a dryRun query parameter.
    let gvk = patch
        .vendor_extension
        .iter()
        .find(|e| e.name == "x-kubernetes-group-version-kind")
        .and_then(|e| e.value.as_ref())
        .map(|a| a.yaml.as_str())
        .unwrap();
    assert!(gvk.contains("kind: ConfigMap"), "{gvk}");
    let names: Vec<&str> = patch
        .parameters
        .iter()
        .filter_map(|p| match &p.oneof {
            Some(proto::parameters_item::Oneof::Parameter(p)) => p
                .non_body_parameter
                .as_ref()?
                .query_parameter_sub_schema
                .as_ref()
                .map(|q| q.name.as_str()),
            _ => None,
        })
        .collect();
    assert!(names.contains(&"dryRun"), "{names:?}");
    assert!(
        !item.parameters.is_empty(),
        "shared parameters by reference"
    );
}
