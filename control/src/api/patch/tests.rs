//! The patch types against a hand-written slice of the Pod and Deployment schema: the
//! orders, directives and ownership kube-apiserver gives the patches kubectl sends.

use serde_json::{json, Value};

use super::*;

struct Schema;

fn obj(t: &str) -> FieldMeta {
    FieldMeta {
        type_name: Some(t.into()),
        ..FieldMeta::default()
    }
}

fn keyed(t: &str, key: &str, strategies: &[&str]) -> FieldMeta {
    FieldMeta {
        type_name: Some(t.into()),
        is_list: true,
        merge_key: Some(key.into()),
        strategies: strategies.iter().map(|s| s.to_string()).collect(),
        list_type: Some("map".into()),
        list_map_keys: vec![key.into()],
        ..FieldMeta::default()
    }
}

impl PatchSchema for Schema {
    fn field(&self, t: &str, f: &str) -> Option<FieldMeta> {
        Some(match (t, f) {
            ("Pod" | "Deployment" | "PodTemplateSpec", "metadata") => obj("ObjectMeta"),
            ("Pod" | "PodTemplateSpec", "spec") => obj("PodSpec"),
            ("Deployment", "spec") => obj("DeploymentSpec"),
            ("DeploymentSpec", "template") => obj("PodTemplateSpec"),
            ("DeploymentSpec", "strategy") => FieldMeta {
                type_name: Some("DeploymentStrategy".into()),
                strategies: vec!["retainKeys".into()],
                ..FieldMeta::default()
            },
            ("ObjectMeta", "labels" | "annotations") => FieldMeta {
                is_map: true,
                ..FieldMeta::default()
            },
            ("ObjectMeta", "finalizers") => FieldMeta {
                is_list: true,
                strategies: vec!["merge".into()],
                list_type: Some("set".into()),
                ..FieldMeta::default()
            },
            ("PodSpec", "containers") => keyed("Container", "name", &["merge"]),
            ("PodSpec", "volumes") => keyed("Volume", "name", &["merge", "retainKeys"]),
            ("Container", "ports") => keyed("ContainerPort", "containerPort", &["merge"]),
            ("Container", "env") => keyed("EnvVar", "name", &["merge"]),
            ("Container", "args") => FieldMeta {
                is_list: true,
                list_type: Some("atomic".into()),
                ..FieldMeta::default()
            },
            _ => return None,
        })
    }
}

fn smp(doc: &Value, patch: Value, t: &str) -> Result<Value, PatchError> {
    strategic_merge_patch(doc, patch.to_string().as_bytes(), &Schema, t)
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

fn deployment() -> Value {
    json!({
        "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"spec": {"containers": [
                {"name": "nginx", "image": "nginx:1.24",
                 "ports": [{"containerPort": 80}],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                {"name": "sidecar", "image": "busybox", "args": ["sleep", "1d"]}
            ]}}
        }
    })
}

#[test]
fn json_patch_applies_operations_and_fails_a_test_op() {
    let doc = json!({"a": {"b": 1}, "l": [1, 2]});
    let out = json_patch(
        &doc,
        br#"[{"op":"replace","path":"/a/b","value":2},{"op":"add","path":"/l/-","value":3}]"#,
    )
    .unwrap();
    assert_eq!(out, json!({"a": {"b": 2}, "l": [1, 2, 3]}));
    let err = json_patch(&doc, br#"[{"op":"test","path":"/a/b","value":9}]"#).unwrap_err();
    assert!(matches!(err, PatchError::Invalid(_)), "{err}");
    let err = json_patch(&doc, br#"{"op":"add"}"#).unwrap_err();
    assert!(matches!(err, PatchError::Syntax(_)), "{err}");
}

#[test]
fn merge_patch_merges_deletes_with_null_and_takes_only_objects() {
    let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "l": [1, 2]});
    let out = merge_patch(
        &doc,
        br#"{"metadata":{"labels":{"a":null,"c":"3"}},"l":[9]}"#,
    )
    .unwrap();
    assert_eq!(
        out,
        json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "l": [9]})
    );
    assert!(merge_patch(&doc, b"[1]").is_err());
    assert!(matches!(
        merge_patch(&doc, b"{"),
        Err(PatchError::Syntax(_))
    ));
}

#[test]
fn smp_merges_nested_keyed_lists_and_appends_new_items() {
    let patch = json!({"spec":{"template":{"spec":{"containers":[
        {"name":"nginx","env":[{"name":"B","value":"22"},{"name":"C","value":"3"}],
         "ports":[{"containerPort":443}]},
        {"name":"new","image":"redis"}]}}}});
    let out = smp(&deployment(), patch, "Deployment").unwrap();
    let c = &out["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        c[0]["env"],
        json!([{"name":"A","value":"1"},{"name":"B","value":"22"},{"name":"C","value":"3"}])
    );
    assert_eq!(
        c[0]["ports"],
        json!([{"containerPort":80},{"containerPort":443}])
    );
    assert_eq!(c[1]["args"], json!(["sleep", "1d"]));
    assert_eq!(c[2], json!({"name":"new","image":"redis"}));
}

/// normalizeElementOrder: the patch's items in `$setElementOrder` order, each item the
/// order leaves out placed before the first listed item that followed it on the server.
#[test]
fn smp_set_element_order_interleaves_server_only_items_as_upstream() {
    let doc = json!({"spec":{"containers":[{"name":"a"},{"name":"b"},{"name":"c"}]}});
    let patch = json!({"spec":{"$setElementOrder/containers":[{"name":"c"},{"name":"a"}]}});
    let out = smp(&doc, patch, "Pod").unwrap();
    assert_eq!(names(&out["spec"]["containers"]), ["b", "c", "a"]);

    let doc = json!({"spec":{"containers":[{"name":"a"},{"name":"b"},{"name":"c"},{"name":"d"}]}});
    let patch = json!({"spec":{"$setElementOrder/containers":[{"name":"a"},{"name":"c"},{"name":"new"}],
        "containers":[{"name":"new","image":"x"}]}});
    let out = smp(&doc, patch, "Pod").unwrap();
    assert_eq!(
        names(&out["spec"]["containers"]),
        ["a", "b", "c", "new", "d"],
        "an item the order names but the server lacks stops the merge by server position"
    );
}

#[test]
fn smp_directives_on_maps_replace_or_empty_them() {
    let patch = json!({"spec":{"template":{"spec":{"containers":[
        {"$patch":"replace"},{"name":"only","image":"x"}]}}}});
    let out = smp(&deployment(), patch, "Deployment").unwrap();
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"],
        json!([{"name":"only","image":"x"}])
    );
    let patch = json!({"metadata":{"labels":{"$patch":"replace","x":"y"}}});
    let out = smp(&deployment(), patch, "Deployment").unwrap();
    assert_eq!(out["metadata"]["labels"], json!({"x":"y"}));
    // Upstream's mergeMap returns an empty map for `$patch: delete`, not an absent field.
    let patch = json!({"metadata":{"labels":{"$patch":"delete"}}});
    let out = smp(&deployment(), patch, "Deployment").unwrap();
    assert_eq!(out["metadata"]["labels"], json!({}));
    assert_eq!(out["metadata"]["name"], "web");
}

#[test]
fn smp_retain_keys_refuses_fields_it_does_not_name() {
    let patch = json!({"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate","rollingUpdate":null}}});
    let out = smp(&deployment(), patch, "Deployment").unwrap();
    assert_eq!(out["spec"]["strategy"], json!({"type":"Recreate"}));
    let patch = json!({"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate","other":1}}});
    let err = smp(&deployment(), patch, "Deployment").unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.strategy.other: invalid patch format of retainKeys"
    );
}

#[test]
fn smp_unknown_fields_merge_as_a_json_merge_patch() {
    let doc = json!({"status":{"x":{"a":1,"b":2},"l":[1,2]}});
    let patch = json!({"status":{"x":{"a":null,"c":3},"l":[3]}});
    let out = smp(&doc, patch, "Pod").unwrap();
    assert_eq!(out["status"], json!({"x":{"b":2,"c":3},"l":[3]}));
}

#[test]
fn smp_new_fields_are_stored_without_directives() {
    let patch = json!({"spec":{"containers":[{"name":"a","$patch":"merge","env":[{"name":"X","value":"1"}]}],
        "volumes":[{"name":"v","emptyDir":{}}]}});
    let out = smp(&json!({"metadata":{"name":"p"}}), patch, "Pod").unwrap();
    assert_eq!(
        out["spec"],
        json!({"containers":[{"name":"a","env":[{"name":"X","value":"1"}]}],
               "volumes":[{"name":"v","emptyDir":{}}]})
    );
}

#[test]
fn smp_a_missing_merge_key_names_the_list_and_the_key() {
    let doc = json!({"spec":{"containers":[{"name":"a"}]}});
    let err = smp(&doc, json!({"spec":{"containers":[{"image":"x"}]}}), "Pod").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("spec.containers: "), "{text}");
    assert!(
        text.ends_with("does not contain declared merge key: name"),
        "{text}"
    );
}

/// What kubectl apply sends when the last-applied configuration dropped the sidecar and
/// the tier label, changed an env value and added a volume.
#[test]
fn smp_the_three_way_patch_kubectl_apply_sends() {
    let patch = json!({
        "metadata":{"labels":{"tier":null}},
        "spec":{"template":{"spec":{
            "$setElementOrder/containers":[{"name":"nginx"}],
            "$setElementOrder/volumes":[{"name":"data"}],
            "containers":[
                {"$setElementOrder/env":[{"name":"A"},{"name":"B"}],
                 "env":[{"name":"A","value":"10"}],"name":"nginx"},
                {"$patch":"delete","name":"sidecar"}],
            "volumes":[{"$retainKeys":["emptyDir","name"],"emptyDir":{},"name":"data"}]}}}});
    let out = smp(&deployment(), patch, "Deployment").unwrap();
    assert_eq!(out["metadata"]["labels"], json!({"app":"web"}));
    let spec = &out["spec"]["template"]["spec"];
    assert_eq!(names(&spec["containers"]), ["nginx"]);
    assert_eq!(
        spec["containers"][0]["env"],
        json!([{"name":"A","value":"10"},{"name":"B","value":"2"}])
    );
    assert_eq!(spec["volumes"], json!([{"emptyDir":{},"name":"data"}]));
    assert_eq!(out["spec"]["replicas"], 1);
}

const NOW: &str = "2026-01-01T00:00:00Z";

fn deploy_cfg(replicas: i64, image: &str) -> Value {
    json!({"apiVersion":"apps/v1","kind":"Deployment",
        "metadata":{"name":"web","labels":{"app":"web"}},
        "spec":{"replicas":replicas,"template":{"spec":{"containers":[
            {"name":"nginx","image":image}]}}}})
}

fn entry<'a>(obj: &'a Value, manager: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager)
}

fn apply_as(
    live: Option<&Value>,
    cfg: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, ApplyError> {
    apply(live, cfg, manager, force, &Schema, "Deployment", NOW)
}

fn update_as(old: &Value, new: &mut Value, manager: &str) {
    record_update(
        Some(old),
        new,
        manager,
        "apps/v1",
        NOW,
        &Schema,
        "Deployment",
    );
}

#[test]
fn apply_encodes_fields_keyed_items_and_set_members() {
    let cfg = json!({"apiVersion":"v1","kind":"Pod",
        "metadata":{"name":"p","labels":{"a":"1"},"finalizers":["x"]},
        "spec":{"containers":[{"name":"c","image":"i","args":["a","b"]}]}});
    let out = apply(None, &cfg, "kubectl", false, &Schema, "Pod", NOW).unwrap();
    let e = entry(&out, "kubectl").unwrap();
    assert_eq!(e["operation"], "Apply");
    assert_eq!(e["apiVersion"], "v1");
    assert_eq!(e["fieldsType"], "FieldsV1");
    assert_eq!(
        e["fieldsV1"],
        json!({"f:metadata":{"f:labels":{"f:a":{}},"f:finalizers":{"v:\"x\"":{}}},
               "f:spec":{"f:containers":{"k:{\"name\":\"c\"}":{".":{},"f:args":{},"f:image":{},"f:name":{}}}}})
    );
}

#[test]
fn apply_conflicts_with_an_updater_named_with_its_api_version_unless_forced() {
    let live = apply_as(None, &deploy_cfg(1, "nginx:1"), "kubectl", false).unwrap();
    let mut scaled = live.clone();
    scaled["spec"]["replicas"] = json!(3);
    update_as(&live, &mut scaled, "kubectl-scale");
    assert_eq!(
        entry(&scaled, "kubectl-scale").unwrap()["fieldsV1"],
        json!({"f:spec":{"f:replicas":{}}})
    );

    let err = apply_as(Some(&scaled), &deploy_cfg(1, "nginx:1"), "kubectl", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
    );
    // The value the other manager set is shared, not a conflict.
    let shared = apply_as(Some(&scaled), &deploy_cfg(3, "nginx:1"), "kubectl", false).unwrap();
    assert!(entry(&shared, "kubectl-scale").is_some());

    let forced = apply_as(Some(&scaled), &deploy_cfg(1, "nginx:1"), "kubectl", true).unwrap();
    assert_eq!(forced["spec"]["replicas"], 1);
    assert!(entry(&forced, "kubectl-scale").is_none(), "ownership moved");
}

#[test]
fn apply_lists_several_conflicts_by_manager() {
    let live = apply_as(None, &deploy_cfg(1, "nginx:1"), "a", false).unwrap();
    let err = apply_as(Some(&live), &deploy_cfg(2, "nginx:2"), "b", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 2 conflicts: conflicts with \"a\":\n- .spec.replicas\n\
         - .spec.template.spec.containers[name=\"nginx\"].image"
    );
}

#[test]
fn apply_removes_fields_no_longer_applied_and_keeps_those_of_others() {
    let mut cfg = deploy_cfg(1, "nginx:1");
    cfg["metadata"]["labels"]["tier"] = json!("front");
    let live = apply_as(None, &cfg, "kubectl", false).unwrap();
    let mut other = live.clone();
    other["metadata"]["annotations"] = json!({"note": "x"});
    update_as(&live, &mut other, "kubectl-annotate");

    let out = apply_as(Some(&other), &deploy_cfg(1, "nginx:2"), "kubectl", false).unwrap();
    assert_eq!(out["metadata"]["labels"], json!({"app":"web"}));
    assert_eq!(out["metadata"]["annotations"], json!({"note":"x"}));
    let c = &out["spec"]["template"]["spec"]["containers"];
    assert_eq!(names(c), ["nginx"]);
    assert_eq!(c[0]["image"], "nginx:2");
}

#[test]
fn apply_merges_keyed_lists_with_the_items_of_other_managers() {
    let live = apply_as(None, &deploy_cfg(1, "nginx:1"), "kubectl", false).unwrap();
    let cfg = json!({"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
        "spec":{"template":{"spec":{"containers":[{"name":"side","image":"busybox"}]}}}});
    let out = apply_as(Some(&live), &cfg, "other", false).unwrap();
    assert_eq!(
        names(&out["spec"]["template"]["spec"]["containers"]),
        ["nginx", "side"]
    );
    assert_eq!(out["spec"]["replicas"], 1);
}

/// structured-merge-diff adds back the items other managers own fields of: the item
/// stays, with its key, when its applier stops applying it.
#[test]
fn apply_keeps_an_item_and_its_key_while_another_manager_owns_a_field_of_it() {
    let mut cfg = deploy_cfg(1, "nginx:1");
    cfg["spec"]["template"]["spec"]["containers"] =
        json!([{"name":"nginx","image":"nginx:1"},{"name":"side","image":"busybox:1"}]);
    let live = apply_as(None, &cfg, "kubectl", false).unwrap();
    let mut edited = live.clone();
    edited["spec"]["template"]["spec"]["containers"][1]["image"] = json!("busybox:2");
    update_as(&live, &mut edited, "kubectl-set");

    let out = apply_as(Some(&edited), &deploy_cfg(1, "nginx:1"), "kubectl", false).unwrap();
    let c = &out["spec"]["template"]["spec"]["containers"];
    assert_eq!(names(c), ["nginx", "side"]);
    assert_eq!(c[1], json!({"name":"side","image":"busybox:2"}));

    // Nobody else owns anything of it: the item goes.
    let gone = apply_as(Some(&live), &deploy_cfg(1, "nginx:1"), "kubectl", false).unwrap();
    assert_eq!(
        names(&gone["spec"]["template"]["spec"]["containers"]),
        ["nginx"]
    );
}

#[test]
fn record_update_gives_a_created_object_to_its_manager_and_drops_empty_entries() {
    let mut obj = json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","uid":"u"},
        "spec":{"nodeName":"n"}});
    record_update(None, &mut obj, "kubectl-create", "v1", NOW, &Schema, "Pod");
    let e = entry(&obj, "kubectl-create").unwrap();
    assert_eq!(e["operation"], "Update");
    assert_eq!(e["time"], NOW);
    assert_eq!(
        e["fieldsV1"],
        json!({"f:spec":{"f:nodeName":{}}}),
        "name and uid are never owned"
    );
    let old = obj.clone();
    obj["spec"] = json!({});
    record_update(
        Some(&old),
        &mut obj,
        "kubectl-edit",
        "v1",
        NOW,
        &Schema,
        "Pod",
    );
    assert!(entry(&obj, "kubectl-create").is_none());
}
