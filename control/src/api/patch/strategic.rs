//! Strategic merge patch: a JSON merge patch that knows, from the schema, which lists
//! merge by a key (containers by name), which merge as sets, and which are replaced, with
//! the directives kubectl sends: `$patch` (replace, delete, merge), `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>`.

use serde_json::{Map, Value};

use super::{parse, FieldMeta, PatchError, PatchSchema};

const PATCH: &str = "$patch";
const RETAIN: &str = "$retainKeys";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";
const ORDER: &str = "$setElementOrder/";

pub fn strategic_merge_patch(
    doc: &Value,
    patch: &[u8],
    schema: &dyn PatchSchema,
    type_name: &str,
) -> Result<Value, PatchError> {
    let p = parse(patch)?;
    let Value::Object(p) = p else {
        return Err(PatchError::Invalid(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let mut out = doc.as_object().cloned().unwrap_or_default();
    match merge_map(&mut out, &p, schema, Some(type_name), "")? {
        Merged::Kept => Ok(Value::Object(out)),
        Merged::Deleted => Ok(Value::Object(Map::new())),
    }
}

enum Merged {
    Kept,
    Deleted,
}

fn is_directive(k: &str) -> bool {
    k == PATCH || k == RETAIN || k.starts_with(DELETE_PRIMITIVE) || k.starts_with(ORDER)
}

/// A value with every directive removed, for inserting where nothing was.
fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !is_directive(k))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|x| {
                    !(x.is_object()
                        && x.get(PATCH).is_some()
                        && x.as_object().is_some_and(|o| o.len() == 1))
                })
                .map(strip)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn field_meta(schema: &dyn PatchSchema, ty: Option<&str>, field: &str) -> FieldMeta {
    ty.and_then(|t| schema.field(t, field)).unwrap_or_default()
}

fn merge_map(
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    schema: &dyn PatchSchema,
    ty: Option<&str>,
    at: &str,
) -> Result<Merged, PatchError> {
    match patch.get(PATCH).and_then(Value::as_str) {
        Some("replace") => {
            *orig = strip(&Value::Object(patch.clone()))
                .as_object()
                .cloned()
                .unwrap_or_default();
            return Ok(Merged::Kept);
        }
        Some("delete") => return Ok(Merged::Deleted),
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Invalid(format!(
                "{at}: unknown patch directive {other:?}"
            )))
        }
    }
    if let Some(retain) = patch.get(RETAIN) {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| PatchError::Invalid(format!("{at}: $retainKeys must be a list")))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        // Upstream refuses a patch that sets a field its `$retainKeys` does not name.
        if let Some(k) = patch
            .iter()
            .find(|(k, v)| !v.is_null() && !is_directive(k) && !keep.contains(&k.as_str()))
            .map(|(k, _)| k)
        {
            let field = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            return Err(PatchError::Invalid(format!(
                "{field}: invalid patch format of retainKeys"
            )));
        }
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVE) {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                list.retain(|x| !remove.contains(x));
            }
        }
    }
    // The lists as they were, which `$setElementOrder` places server-only items by.
    let server_order: Map<String, Value> = patch
        .keys()
        .filter_map(|k| k.strip_prefix(ORDER))
        .filter_map(|f| Some((f.to_string(), orig.get(f)?.clone())))
        .collect();
    for (k, v) in patch {
        if is_directive(k) {
            continue;
        }
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        if v.is_null() {
            orig.remove(k);
            continue;
        }
        let meta = field_meta(schema, ty, k);
        let replace = meta.strategies.iter().any(|s| s == "replace");
        match (orig.get_mut(k), v) {
            (Some(Value::Object(o)), Value::Object(p)) if !replace => {
                let child = if meta.is_map {
                    None
                } else {
                    meta.type_name.as_deref()
                };
                // `$patch: delete` in a map leaves it empty, as upstream's mergeMap returns.
                if let Merged::Deleted = merge_map(o, p, schema, child, &path)? {
                    o.clear();
                }
            }
            (Some(Value::Array(o)), Value::Array(p))
                if meta.strategies.iter().any(|s| s == "merge") =>
            {
                let merged = merge_list(o, p, &meta, schema, &path)?;
                *o = merged;
            }
            (_, Value::Array(p))
                if p.iter()
                    .any(|x| x.get(PATCH).and_then(Value::as_str) == Some("replace")) =>
            {
                orig.insert(k.clone(), strip(v));
            }
            _ => {
                orig.insert(k.clone(), strip(v));
            }
        }
    }
    for (k, order) in patch {
        if let Some(field) = k.strip_prefix(ORDER) {
            let key = field_meta(schema, ty, field).merge_key;
            if let (Some(Value::Array(list)), Some(order)) = (orig.get_mut(field), order.as_array())
            {
                let server = server_order
                    .get(field)
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                reorder(list, order, server, key.as_deref());
            }
        }
    }
    Ok(Merged::Kept)
}

fn key_of<'a>(item: &'a Value, key: &str) -> Option<&'a Value> {
    item.get(key)
}

/// A merge-strategy list: by the merge key for objects, as a set for primitives.
fn merge_list(
    orig: &[Value],
    patch: &[Value],
    meta: &FieldMeta,
    schema: &dyn PatchSchema,
    at: &str,
) -> Result<Vec<Value>, PatchError> {
    if patch
        .iter()
        .any(|x| x.get(PATCH).and_then(Value::as_str) == Some("replace"))
    {
        return Ok(strip(&Value::Array(patch.to_vec()))
            .as_array()
            .cloned()
            .unwrap_or_default());
    }
    let mut out = orig.to_vec();
    match &meta.merge_key {
        Some(key) => {
            for p in patch {
                let Value::Object(pm) = p else {
                    return Err(PatchError::Invalid(format!(
                        "{at}: an item of a list merged by {key:?} must be an object"
                    )));
                };
                let Some(kv) = key_of(p, key) else {
                    return Err(PatchError::Invalid(format!(
                        "{at}: map: {p} does not contain declared merge key: {key}"
                    )));
                };
                let idx = out.iter().position(|o| key_of(o, key) == Some(kv));
                match (pm.get(PATCH).and_then(Value::as_str), idx) {
                    (Some("delete"), Some(i)) => {
                        out.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (Some("replace"), Some(i)) => out[i] = strip(p),
                    (_, Some(i)) => {
                        let mut m = out[i].as_object().cloned().unwrap_or_default();
                        match merge_map(
                            &mut m,
                            pm,
                            schema,
                            meta.type_name.as_deref(),
                            &format!("{at}[{key}={kv}]"),
                        )? {
                            Merged::Kept => out[i] = Value::Object(m),
                            Merged::Deleted => {
                                out.remove(i);
                            }
                        }
                    }
                    (_, None) => out.push(strip(p)),
                }
            }
        }
        None => {
            for p in patch {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
    }
    Ok(out)
}

/// `$setElementOrder`, as upstream's normalizeElementOrder: the listed items in that
/// order; the items the order does not name (the server's own) in their old order, each
/// put before the first listed item that came after it in the old list.
fn reorder(list: &mut Vec<Value>, order: &[Value], server: &[Value], key: Option<&str>) {
    let same = |a: &Value, b: &Value| match key {
        Some(k) => a.get(k).is_some() && a.get(k) == b.get(k),
        None => a == b,
    };
    let pos_in = |l: &[Value], item: &Value| l.iter().position(|o| same(item, o));
    let (mut listed, mut rest): (Vec<Value>, Vec<Value>) = std::mem::take(list)
        .into_iter()
        .partition(|item| pos_in(order, item).is_some());
    listed.sort_by_key(|item| pos_in(order, item));
    // A stable sort by the old position; items the server did not have keep their place
    // after those it had.
    rest.sort_by_key(|item| pos_in(server, item).unwrap_or(usize::MAX));
    let (mut i, mut j) = (0, 0);
    while i < rest.len() || j < listed.len() {
        let take_rest = if i >= rest.len() {
            false
        } else if j >= listed.len() {
            true
        } else {
            match (pos_in(server, &rest[i]), pos_in(server, &listed[j])) {
                (Some(a), Some(b)) => a < b,
                _ => false,
            }
        };
        if take_rest {
            list.push(rest[i].clone());
            i += 1;
        } else {
            list.push(listed[j].clone());
            j += 1;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The slice of the Pod/Deployment schema the tests need.
    pub struct TestSchema;

    impl PatchSchema for TestSchema {
        fn field(&self, t: &str, f: &str) -> Option<FieldMeta> {
            let obj = |n: &str| FieldMeta {
                type_name: Some(n.into()),
                ..Default::default()
            };
            let keyed = |n: &str, key: &str| FieldMeta {
                type_name: Some(n.into()),
                is_list: true,
                merge_key: Some(key.into()),
                strategies: vec!["merge".into()],
                list_type: Some("map".into()),
                list_map_keys: vec![key.into()],
                is_map: false,
            };
            Some(match (t, f) {
                ("Deployment", "spec") => obj("DeploymentSpec"),
                ("Deployment" | "Pod" | "PodTemplateSpec", "metadata") => obj("ObjectMeta"),
                ("DeploymentSpec", "template") => obj("PodTemplateSpec"),
                ("DeploymentSpec", "strategy") => FieldMeta {
                    type_name: Some("DeploymentStrategy".into()),
                    strategies: vec!["retainKeys".into()],
                    ..Default::default()
                },
                ("PodTemplateSpec" | "Pod", "spec") => obj("PodSpec"),
                ("PodSpec", "containers") => keyed("Container", "name"),
                ("PodSpec", "volumes") => keyed("Volume", "name"),
                ("Container", "ports") => keyed("ContainerPort", "containerPort"),
                ("Container", "env") => keyed("EnvVar", "name"),
                ("Container", "args") => FieldMeta {
                    is_list: true,
                    list_type: Some("atomic".into()),
                    ..Default::default()
                },
                ("ObjectMeta", "labels") => FieldMeta {
                    is_map: true,
                    ..Default::default()
                },
                ("ObjectMeta", "finalizers") => FieldMeta {
                    is_list: true,
                    strategies: vec!["merge".into()],
                    list_type: Some("set".into()),
                    ..Default::default()
                },
                _ => return None,
            })
        }
    }

    fn smp(doc: Value, patch: Value, t: &str) -> Value {
        strategic_merge_patch(&doc, patch.to_string().as_bytes(), &TestSchema, t).unwrap()
    }

    fn deployment() -> Value {
        json!({ "metadata": { "name": "d", "labels": { "a": "1" }, "finalizers": ["x"] },
                "spec": { "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": "25%" } },
                          "template": { "spec": { "containers": [
                              { "name": "nginx", "image": "nginx:1.25", "ports": [{ "containerPort": 80 }], "args": ["a", "b"] },
                              { "name": "side", "image": "busybox" }] } } } })
    }

    #[test]
    fn kubectl_set_image_merges_containers_by_name() {
        let p = json!({ "spec": { "template": { "spec": {
            "$setElementOrder/containers": [{ "name": "nginx" }, { "name": "side" }],
            "containers": [{ "image": "nginx:1.26", "name": "nginx" }] } } } });
        let out = smp(deployment(), p, "Deployment");
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["image"], "nginx:1.26");
        assert_eq!(
            cs[0]["ports"][0]["containerPort"], 80,
            "the rest of the container is kept"
        );
        assert_eq!(cs[1]["name"], "side");
    }

    #[test]
    fn directives_delete_replace_retain_and_order() {
        let p = json!({ "spec": { "template": { "spec": { "containers": [{ "name": "side", "$patch": "delete" }] } } } });
        let out = smp(deployment(), p, "Deployment");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        let p = json!({ "spec": { "strategy": { "$retainKeys": ["type"], "type": "Recreate" } } });
        let out = smp(deployment(), p, "Deployment");
        assert_eq!(out["spec"]["strategy"], json!({ "type": "Recreate" }));

        let p = json!({ "metadata": { "labels": { "a": null, "b": "2" }, "finalizers": ["y"] } });
        let out = smp(deployment(), p, "Deployment");
        assert_eq!(out["metadata"]["labels"], json!({ "b": "2" }));
        assert_eq!(
            out["metadata"]["finalizers"],
            json!(["x", "y"]),
            "a set merges"
        );

        let p = json!({ "metadata": { "$deleteFromPrimitiveList/finalizers": ["x"] } });
        assert_eq!(
            smp(deployment(), p, "Deployment")["metadata"]["finalizers"],
            json!([])
        );

        let p = json!({ "spec": { "template": { "spec": { "containers": [{ "name": "nginx", "args": ["c"] }] } } } });
        assert_eq!(
            smp(deployment(), p, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["c"]),
            "atomic lists are replaced"
        );

        let p = json!({ "spec": { "template": { "spec": {
            "$setElementOrder/containers": [{ "name": "side" }, { "name": "nginx" }, { "name": "new" }],
            "containers": [{ "name": "new", "image": "x" }] } } } });
        let out = smp(deployment(), p, "Deployment");
        let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["side", "nginx", "new"]);

        let p = json!({ "spec": { "template": { "spec": { "containers": [{ "name": "only", "image": "x" }, { "$patch": "replace" }] } } } });
        let out = smp(deployment(), p, "Deployment");
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{ "name": "only", "image": "x" }])
        );
    }

    #[test]
    fn bad_patches_are_errors() {
        let bad = |p: Value| {
            strategic_merge_patch(
                &deployment(),
                p.to_string().as_bytes(),
                &TestSchema,
                "Deployment",
            )
            .is_err()
        };
        assert!(bad(json!([1])));
        assert!(bad(
            json!({ "spec": { "template": { "spec": { "containers": [{ "image": "no-name" }] } } } })
        ));
        assert!(bad(json!({ "$patch": "explode" })));
        assert!(strategic_merge_patch(&deployment(), b"{", &TestSchema, "Deployment").is_err());
    }
}
