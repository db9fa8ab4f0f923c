//! The OpenAPI documents of the served resources: v2 as JSON and as gnostic protobuf
//! (`GET /openapi/v2`), v3 as an index and one document per group-version
//! (`GET /openapi/v3`, `GET /openapi/v3/apis/apps/v1`), and the schema facts strategic
//! merge patch and server-side apply need (merge keys, list types).
//!
//! The data is the upstream Kubernetes spec cut down to what podrun serves by
//! `scripts/openapi-gen.py`; `control/openapi/README.md` says which release.

pub mod proto;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::OnceLock;

use bytes::Bytes;
use prost::Message;
use serde_json::Value;
use sha2::{Digest, Sha512};

use crate::api::patch::{FieldMeta, PatchSchema};

static V2_JSON: &[u8] = include_bytes!("../../../openapi/v2.json");
static V3_JSON_GZ: &[u8] = include_bytes!("../../../openapi/v3.json.gz");

/// The Content-Type of the protobuf `/openapi/v2` response. Clients ask for
/// `...spec.v2@v1.0+protobuf`, but Go's `mime.ParseMediaType` in kubectl rejects the `@` in a
/// response's Content-Type, so kube-apiserver answers with this dotted form.
pub const V2_PROTOBUF_CONTENT_TYPE: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Whether an `Accept` header of `GET /openapi/v2` asks for the protobuf encoding rather
/// than JSON: it names the proto-openapi type (in either spelling) and not JSON.
pub fn wants_v2_protobuf(accept: &str) -> bool {
    accept.contains("com.github.proto-openapi.spec.v2") && !accept.contains("application/json")
}

/// Largest decompressed v3 data accepted: the embedded file is about 1.5 MB.
const V3_MAX_BYTES: u64 = 64 << 20;

/// Why the embedded documents could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error("control/openapi/{file}: {message}")]
    Data { file: &'static str, message: String },
    #[error("control/openapi/v2.json: protobuf conversion: {0}")]
    Protobuf(#[from] proto::ConvertError),
}

fn data_err(file: &'static str, message: impl ToString) -> OpenApiError {
    OpenApiError::Data {
        file,
        message: message.to_string(),
    }
}

/// One OpenAPI v3 group-version document and its hash.
struct V3Document {
    json: Bytes,
    hash: String,
}

/// The OpenAPI documents, built once from the embedded data.
pub struct OpenApi {
    v2_json: Bytes,
    v2_protobuf: Bytes,
    etag_v2: String,
    v3_index: Bytes,
    v3: BTreeMap<String, V3Document>,
    /// (group, version, kind) to definition name.
    gvk: HashMap<(String, String, String), String>,
    /// Definition name to property name to what patching needs of it.
    fields: HashMap<String, HashMap<String, FieldMeta>>,
}

/// The documents, loaded at first use.
///
/// # Panics
/// When the embedded data does not load, which the unit tests rule out.
pub fn get() -> &'static OpenApi {
    static CELL: OnceLock<OpenApi> = OnceLock::new();
    CELL.get_or_init(|| match OpenApi::load() {
        Ok(api) => api,
        Err(e) => panic!("embedded OpenAPI data: {e}"),
    })
}

/// kube-openapi's hash of a document: SHA-512 in upper-case hex.
fn hash(data: &[u8]) -> String {
    hex::encode_upper(Sha512::digest(data))
}

impl OpenApi {
    /// Parses the embedded documents and derives the encodings and indexes.
    pub fn load() -> Result<OpenApi, OpenApiError> {
        let v2: Value = serde_json::from_slice(V2_JSON).map_err(|e| data_err("v2.json", e))?;
        let v2_protobuf = Bytes::from(proto::document(&v2)?.encode_to_vec());
        let definitions = v2
            .get("definitions")
            .and_then(Value::as_object)
            .ok_or_else(|| data_err("v2.json", "no definitions"))?;

        let mut gvk = HashMap::new();
        let mut fields = HashMap::new();
        for (name, def) in definitions {
            if let Some(list) = def
                .get("x-kubernetes-group-version-kind")
                .and_then(Value::as_array)
            {
                for entry in list {
                    let part = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or_default();
                    gvk.entry((
                        part("group").to_string(),
                        part("version").to_string(),
                        part("kind").to_string(),
                    ))
                    .or_insert_with(|| name.clone());
                }
            }
            if let Some(props) = def.get("properties").and_then(Value::as_object) {
                let metas = props
                    .iter()
                    .map(|(field, schema)| (field.clone(), field_meta(schema)))
                    .collect();
                fields.insert(name.clone(), metas);
            }
        }

        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(V3_JSON_GZ)
            .take(V3_MAX_BYTES)
            .read_to_end(&mut raw)
            .map_err(|e| data_err("v3.json.gz", e))?;
        let docs: BTreeMap<String, Value> =
            serde_json::from_slice(&raw).map_err(|e| data_err("v3.json.gz", e))?;
        let mut v3 = BTreeMap::new();
        let mut index = serde_json::Map::new();
        for (path, doc) in docs {
            let json = serde_json::to_vec(&doc).map_err(|e| data_err("v3.json.gz", e))?;
            let hash = hash(&json);
            index.insert(
                path.clone(),
                serde_json::json!({ "serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}") }),
            );
            v3.insert(
                path,
                V3Document {
                    json: Bytes::from(json),
                    hash,
                },
            );
        }
        let v3_index = serde_json::to_vec(&serde_json::json!({ "paths": index }))
            .map_err(|e| data_err("v3.json.gz", e))?;

        Ok(OpenApi {
            v2_json: Bytes::from_static(V2_JSON),
            etag_v2: format!("\"{}\"", hash(V2_JSON)),
            v2_protobuf,
            v3_index: Bytes::from(v3_index),
            v3,
            gvk,
            fields,
        })
    }

    /// `GET /openapi/v2` as `application/json`.
    pub fn v2_json(&self) -> Bytes {
        self.v2_json.clone()
    }

    /// `GET /openapi/v2` as `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`:
    /// gnostic's `openapi.v2.Document`.
    pub fn v2_protobuf(&self) -> Bytes {
        self.v2_protobuf.clone()
    }

    /// The ETag of `/openapi/v2`, quoted, the same for both encodings.
    pub fn etag_v2(&self) -> &str {
        &self.etag_v2
    }

    /// `GET /openapi/v3`: `{"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=..."}}}`.
    pub fn v3_index(&self) -> Bytes {
        self.v3_index.clone()
    }

    /// The group-versions with a v3 document: "api/v1", "apis/apps/v1", ...
    pub fn v3_paths(&self) -> impl Iterator<Item = &str> {
        self.v3.keys().map(String::as_str)
    }

    /// `GET /openapi/v3/<path>` for `path` such as "api/v1" or "apis/apps/v1".
    pub fn v3_group_version(&self, path: &str) -> Option<Bytes> {
        self.v3.get(path).map(|d| d.json.clone())
    }

    /// The `hash` query value of a v3 document; its ETag is this hash in quotes.
    pub fn v3_hash(&self, path: &str) -> Option<&str> {
        self.v3.get(path).map(|d| d.hash.as_str())
    }

    /// The definition carrying `x-kubernetes-group-version-kind` {group, version, kind};
    /// the core group is "".
    /// The definition name of a served resource's kind, which strategic merge patch and
    /// apply look fields up under; the kind itself when the documents do not have it.
    pub fn type_name<'a>(&'a self, info: &'a crate::registry::ResourceInfo) -> &'a str {
        self.definition_name(info.group, info.version, info.kind)
            .unwrap_or(info.kind)
    }

    pub fn definition_name(&self, group: &str, version: &str, kind: &str) -> Option<&str> {
        self.gvk
            .get(&(group.to_string(), version.to_string(), kind.to_string()))
            .map(String::as_str)
    }
}

fn definition_ref(schema: &Value) -> Option<String> {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .map(|r| r.trim_start_matches("#/definitions/").to_string())
}

/// What patching needs to know of one property's schema.
fn field_meta(schema: &Value) -> FieldMeta {
    let text = |k: &str| schema.get(k).and_then(Value::as_str).map(str::to_string);
    let is_list = schema.get("type").and_then(Value::as_str) == Some("array");
    let additional = schema.get("additionalProperties").filter(|v| v.is_object());
    let type_name = if is_list {
        schema.get("items").and_then(definition_ref)
    } else if let Some(values) = additional {
        definition_ref(values)
    } else {
        definition_ref(schema)
    };
    FieldMeta {
        type_name,
        is_list,
        is_map: additional.is_some(),
        merge_key: text("x-kubernetes-patch-merge-key"),
        strategies: text("x-kubernetes-patch-strategy")
            .map(|s| s.split(',').map(|p| p.trim().to_string()).collect())
            .unwrap_or_default(),
        list_type: text("x-kubernetes-list-type"),
        list_map_keys: schema
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

impl PatchSchema for OpenApi {
    fn field(&self, type_name: &str, field: &str) -> Option<FieldMeta> {
        self.fields.get(type_name)?.get(field).cloned()
    }
}

#[cfg(test)]
mod tests;
