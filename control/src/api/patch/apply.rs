//! Server-side apply and managedFields: which manager owns which fields (the FieldsV1
//! sets: `f:<field>`, `k:<keys>` for items of keyed lists, `v:<value>` for set items, `.`
//! for an item itself), conflicts when an apply would change a field another manager
//! owns, and the fields a manager stops applying going away when nobody else owns them.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::{FieldMeta, PatchSchema};

/// A path in FieldsV1 form, one token per step.
type Path = Vec<String>;
type FieldSet = BTreeSet<Path>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// The manager's operation, "Apply" or "Update": an updater is named with the
    /// apiVersion it wrote, as kube-apiserver names it.
    pub operation: String,
    pub api_version: String,
    /// `.spec.replicas`, `.spec.containers[name="nginx"].image`.
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("Apply failed with {} conflict{}: {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, conflicts_text(.0))]
    Conflicts(Vec<Conflict>),
    #[error("{0}")]
    Invalid(String),
}

/// `"kubectl-edit" using apps/v1` for an updater, `"kubectl"` for an applier: the
/// manager identity kube-apiserver keeps (never the time) as it prints it.
fn manager_text(c: &Conflict) -> String {
    if c.operation == "Update" {
        format!("{:?} using {}", c.manager, c.api_version)
    } else {
        format!("{:?}", c.manager)
    }
}

/// One conflict on one line; several grouped by manager, managers sorted, a line per field.
fn conflicts_text(c: &[Conflict]) -> String {
    if let [one] = c {
        return format!("conflict with {}: {}", manager_text(one), one.field);
    }
    let mut managers: Vec<String> = c.iter().map(manager_text).collect();
    managers.sort();
    managers.dedup();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {m}:"));
        lines.extend(
            c.iter()
                .filter(|x| manager_text(x) == m)
                .map(|x| format!("- {}", x.field)),
        );
    }
    lines.join("\n")
}

/// Fields no manager owns: identity and server-set metadata.
const UNTRACKED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

fn meta_of(schema: &dyn PatchSchema, ty: Option<&str>, f: &str) -> FieldMeta {
    ty.and_then(|t| schema.field(t, f)).unwrap_or_default()
}

/// The keys that identify an item of a keyed list.
fn item_keys(meta: &FieldMeta) -> Vec<String> {
    if !meta.list_map_keys.is_empty() {
        meta.list_map_keys.clone()
    } else {
        meta.merge_key.iter().cloned().collect()
    }
}

fn is_set(meta: &FieldMeta) -> bool {
    meta.list_type.as_deref() == Some("set")
        || (meta.list_type.is_none()
            && meta.merge_key.is_none()
            && meta.strategies.iter().any(|s| s == "merge"))
}

fn key_token(item: &Value, keys: &[String]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k)?.clone());
    }
    Some(format!("k:{}", Value::Object(m)))
}

fn walk(
    v: &Value,
    schema: &dyn PatchSchema,
    ty: Option<&str>,
    path: &mut Path,
    out: &mut FieldSet,
    top: bool,
) {
    let Value::Object(m) = v else {
        out.insert(path.clone());
        return;
    };
    if m.is_empty() && !top {
        out.insert(path.clone());
        return;
    }
    for (k, child) in m {
        if top && (k == "apiVersion" || k == "kind" || k == "status") {
            continue;
        }
        if path.len() == 1 && path[0] == "f:metadata" && UNTRACKED_META.contains(&k.as_str()) {
            continue;
        }
        let meta = meta_of(schema, ty, k);
        path.push(format!("f:{k}"));
        match child {
            Value::Array(items)
                if !item_keys(&meta).is_empty() && meta.list_type.as_deref() != Some("atomic") =>
            {
                let keys = item_keys(&meta);
                for item in items {
                    match key_token(item, &keys) {
                        Some(t) => {
                            path.push(t);
                            let mut dot = path.clone();
                            dot.push(".".into());
                            out.insert(dot);
                            walk(item, schema, meta.type_name.as_deref(), path, out, false);
                            path.pop();
                        }
                        None => {
                            out.insert(path.clone());
                        }
                    }
                }
                if items.is_empty() {
                    out.insert(path.clone());
                }
            }
            Value::Array(items) if is_set(&meta) => {
                for item in items {
                    let mut p = path.clone();
                    p.push(format!("v:{item}"));
                    out.insert(p);
                }
                if items.is_empty() {
                    out.insert(path.clone());
                }
            }
            Value::Object(_) if child.as_object().is_some_and(|o| !o.is_empty()) => {
                let next = if meta.is_map {
                    None
                } else {
                    meta.type_name.as_deref()
                };
                walk(child, schema, next, path, out, false);
            }
            _ => {
                out.insert(path.clone());
            }
        }
        path.pop();
    }
}

/// The set of fields an object sets.
fn fields_of(obj: &Value, schema: &dyn PatchSchema, ty: &str) -> FieldSet {
    let mut out = FieldSet::new();
    walk(obj, schema, Some(ty), &mut Vec::new(), &mut out, true);
    out
}

/// The FieldsV1 tree of a set.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for tok in path {
            node = node
                .entry(tok.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("nodes are objects");
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value) -> FieldSet {
    fn rec(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() && !path.is_empty() {
            out.insert(path.clone());
        }
        for (k, child) in m {
            path.push(k.clone());
            rec(child, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    rec(v, &mut Vec::new(), &mut out);
    out
}

/// The value a path names in an object.
fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for tok in path {
        if tok == "." {
            continue;
        }
        if let Some(f) = tok.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else if let Some(k) = tok.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur = cur
                .as_array()?
                .iter()
                .find(|item| keys.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))?;
        } else if let Some(v) = tok.strip_prefix("v:") {
            let want: Value = serde_json::from_str(v).ok()?;
            cur = cur.as_array()?.iter().find(|item| **item == want)?;
        }
    }
    Some(cur)
}

/// `.spec.containers[name="nginx"].image`, as kube-apiserver writes a conflicting field.
fn display(path: &[String]) -> String {
    let mut s = String::new();
    for tok in path {
        if let Some(f) = tok.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = tok.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = tok.strip_prefix("v:") {
            s.push_str(&format!("[{v}]"));
        }
    }
    s
}

/// Removes the value a path names.
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    if last == "." {
        remove_at(obj, parent);
        return;
    }
    let mut cur = obj;
    for tok in parent {
        let next = if let Some(f) = tok.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = tok.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|item| keys.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(o) = cur.as_object_mut() {
            o.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
        if let Some(a) = cur.as_array_mut() {
            a.retain(|item| !keys.iter().all(|(kk, kv)| item.get(kk) == Some(kv)));
        }
    } else if let Some(v) = last.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).unwrap_or(Value::Null);
        if let Some(a) = cur.as_array_mut() {
            a.retain(|item| *item != want);
        }
    }
}

/// Merges an applied configuration into the live object: maps field by field, keyed
/// lists item by item, sets as unions, everything else replaced.
fn merge(live: &mut Value, applied: &Value, schema: &dyn PatchSchema, ty: Option<&str>) {
    let (Some(l), Some(a)) = (live.as_object_mut(), applied.as_object()) else {
        *live = applied.clone();
        return;
    };
    for (k, av) in a {
        let meta = meta_of(schema, ty, k);
        match (l.get_mut(k), av) {
            (Some(lv @ Value::Object(_)), Value::Object(_)) => {
                let next = if meta.is_map {
                    None
                } else {
                    meta.type_name.as_deref()
                };
                merge(lv, av, schema, next);
            }
            (Some(Value::Array(litems)), Value::Array(aitems))
                if meta.list_type.as_deref() != Some("atomic") && !item_keys(&meta).is_empty() =>
            {
                let keys = item_keys(&meta);
                for ai in aitems {
                    let pos = litems.iter().position(|li| {
                        keys.iter()
                            .all(|k| li.get(k).is_some() && li.get(k) == ai.get(k))
                    });
                    match pos {
                        Some(i) => merge(&mut litems[i], ai, schema, meta.type_name.as_deref()),
                        None => litems.push(ai.clone()),
                    }
                }
            }
            (Some(Value::Array(litems)), Value::Array(aitems)) if is_set(&meta) => {
                for ai in aitems {
                    if !litems.contains(ai) {
                        litems.push(ai.clone());
                    }
                }
            }
            _ => {
                l.insert(k.clone(), av.clone());
            }
        }
    }
}

struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    set: FieldSet,
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or("").to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or("").to_string(),
            time: e["time"].as_str().unwrap_or("").to_string(),
            set: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

fn store_entries(obj: &mut Value, list: Vec<Entry>) {
    let v: Vec<Value> = list
        .into_iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| json!({ "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version, "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.set) }))
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("managedFields".into(), Value::Array(v));
    }
}

/// Whether an apply changes the field a path names. A list item itself (`.`) changes only
/// by coming or going: a change inside it is the change of the field inside.
fn differs(live: &Value, applied: &Value, p: &[String]) -> bool {
    let (a, b) = (value_at(live, p), value_at(applied, p));
    if p.last().is_some_and(|t| t == ".") {
        a.is_some() != b.is_some()
    } else {
        a != b
    }
}

/// `[.., k:{"name":"side"}, f:name]` while another manager owns something in that item.
fn is_key_of_held_item(p: &[String], held: &FieldSet) -> bool {
    let [item @ .., last] = p else {
        return false;
    };
    let (Some(field), Some(k)) = (
        last.strip_prefix("f:"),
        item.last().and_then(|t| t.strip_prefix("k:")),
    ) else {
        return false;
    };
    let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
    keys.contains_key(field) && held.contains(item)
}

/// `[.., k:{..}, .]`: the item itself, kept while another manager owns a field of it.
fn held_item_itself(p: &[String], held: &FieldSet) -> bool {
    match p.split_last() {
        Some((last, item)) if last == "." => held.contains(item),
        _ => false,
    }
}

/// Server-side apply of `applied` by `manager` onto `live` (None: a create).
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    schema: &dyn PatchSchema,
    type_name: &str,
    now: &str,
) -> Result<Value, ApplyError> {
    if !applied.is_object() {
        return Err(ApplyError::Invalid(
            "the applied configuration must be an object".into(),
        ));
    }
    let api_version = applied["apiVersion"].as_str().unwrap_or("").to_string();
    let applied_set = fields_of(applied, schema, type_name);
    let Some(live) = live else {
        let mut out = applied.clone();
        store_entries(
            &mut out,
            vec![Entry {
                manager: manager.into(),
                operation: "Apply".into(),
                api_version,
                time: now.into(),
                set: applied_set,
            }],
        );
        return Ok(out);
    };
    let mut list = entries(live);
    let mine = |e: &Entry| e.manager == manager && e.operation == "Apply";
    let mut conflicts = Vec::new();
    for e in list.iter_mut().filter(|e| !mine(e)) {
        let clash: Vec<Path> = e
            .set
            .intersection(&applied_set)
            .filter(|p| differs(live, applied, p))
            .cloned()
            .collect();
        if force {
            for p in &clash {
                e.set.remove(p);
            }
        } else {
            conflicts.extend(clash.iter().map(|p| Conflict {
                manager: e.manager.clone(),
                operation: e.operation.clone(),
                api_version: e.api_version.clone(),
                field: display(p),
            }));
        }
    }
    if !conflicts.is_empty() {
        return Err(ApplyError::Conflicts(conflicts));
    }
    let previous: FieldSet = list
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    let mut out = live.clone();
    if let Some(m) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    merge(&mut out, applied, schema, Some(type_name));
    // What this manager applied before and applies no more goes, unless another owns it.
    let others: FieldSet = list
        .iter()
        .filter(|e| !mine(e))
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    // As structured-merge-diff adds back what others own: every step on the way to a
    // field another manager owns stays, a list item with its key fields.
    let mut held: FieldSet = FieldSet::new();
    for o in &others {
        for n in 1..=o.len() {
            held.insert(o[..n].to_vec());
        }
    }
    for p in previous.difference(&applied_set) {
        if !held.contains(p) && !is_key_of_held_item(p, &held) && !held_item_itself(p, &held) {
            remove_at(&mut out, p);
        }
    }
    list.retain(|e| !mine(e));
    list.push(Entry {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version,
        time: now.into(),
        set: applied_set,
    });
    store_entries(&mut out, list);
    Ok(out)
}

/// managedFields after an ordinary write by `manager`: it takes the fields whose values it
/// set or changed; others keep the rest.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    now: &str,
    schema: &dyn PatchSchema,
    type_name: &str,
) {
    let new_set = fields_of(new, schema, type_name);
    let changed: FieldSet = match old {
        None => new_set.clone(),
        Some(o) => new_set
            .iter()
            .filter(|p| value_at(o, p) != value_at(new, p))
            .cloned()
            .collect(),
    };
    let mut list = entries(new);
    // Fields that are gone leave every set.
    for e in list.iter_mut() {
        e.set.retain(|p| new_set.contains(p));
        if e.manager != manager || e.operation != "Update" {
            for p in &changed {
                e.set.remove(p);
            }
        }
    }
    if !changed.is_empty() {
        match list
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update")
        {
            Some(e) => {
                e.set.extend(changed);
                e.time = now.into();
                e.api_version = api_version.into();
            }
            None => list.push(Entry {
                manager: manager.into(),
                operation: "Update".into(),
                api_version: api_version.into(),
                time: now.into(),
                set: changed,
            }),
        }
    }
    store_entries(new, list);
}

#[cfg(test)]
mod tests {
    use super::super::strategic::tests::TestSchema;
    use super::*;

    /// An apply against the test schema's Deployment.
    fn apply_as(
        live: Option<&Value>,
        applied: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApplyError> {
        apply(
            live,
            applied,
            manager,
            force,
            &TestSchema,
            "Deployment",
            "t",
        )
    }

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "d", "labels": { "app": "d" } },
                "spec": { "replicas": replicas, "template": { "spec": { "containers": [{ "name": "nginx", "image": image }] } } } })
    }

    #[test]
    fn apply_creates_with_ownership_and_detects_conflicts() {
        let live = apply_as(None, &deploy(1, "nginx:1"), "mgr-a", false).unwrap();
        let mf = &live["metadata"]["managedFields"][0];
        assert_eq!(
            (mf["manager"].as_str(), mf["operation"].as_str()),
            (Some("mgr-a"), Some("Apply"))
        );
        assert!(
            mf["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
                ["k:{\"name\":\"nginx\"}"]["f:image"]
                .is_object(),
            "{mf}"
        );
        assert!(mf["fieldsV1"]["f:metadata"].get("f:name").is_none());

        let err = apply_as(Some(&live), &deploy(3, "nginx:1"), "mgr-b", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"mgr-a\": .spec.replicas"
        );
        // The same value is shared ownership, not a conflict.
        let shared = apply_as(Some(&live), &deploy(1, "nginx:1"), "mgr-b", false).unwrap();
        assert_eq!(
            shared["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let forced = apply_as(Some(&live), &deploy(3, "nginx:2"), "mgr-b", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let a = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "mgr-a")
            .unwrap();
        assert!(
            a["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
            "ownership moved"
        );
    }

    #[test]
    fn fields_no_longer_applied_are_removed_unless_someone_else_owns_them() {
        let mut first = deploy(1, "nginx:1");
        first["metadata"]["labels"]["extra"] = json!("yes");
        let live = apply_as(None, &first, "mgr-a", false).unwrap();
        let out = apply_as(Some(&live), &deploy(1, "nginx:1"), "mgr-a", false).unwrap();
        assert!(out["metadata"]["labels"].get("extra").is_none());
        assert_eq!(out["metadata"]["labels"]["app"], "d");
    }

    #[test]
    fn ordinary_updates_take_the_fields_they_change() {
        let live = apply_as(None, &deploy(1, "nginx:1"), "mgr-a", false).unwrap();
        let mut new = live.clone();
        new["spec"]["replicas"] = json!(5);
        record_update(
            Some(&live),
            &mut new,
            "kubectl-scale",
            "apps/v1",
            "t2",
            &TestSchema,
            "Deployment",
        );
        let mf = new["metadata"]["managedFields"].as_array().unwrap();
        let scale = mf.iter().find(|e| e["manager"] == "kubectl-scale").unwrap();
        assert_eq!(scale["fieldsV1"], json!({ "f:spec": { "f:replicas": {} } }));
        let a = mf.iter().find(|e| e["manager"] == "mgr-a").unwrap();
        assert!(a["fieldsV1"]["f:spec"].get("f:replicas").is_none());
    }
}
