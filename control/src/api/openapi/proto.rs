//! The OpenAPI v2 document in the protobuf encoding kubectl asks for
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`): the messages of gnostic's
//! `openapiv2/OpenAPIv2.proto`, as far as kubectl reads them: the definitions (validation
//! and `explain` look types up by their group-version-kind) and the operations of the paths
//! with their query parameters (kubectl 1.20 looks for `dryRun` there before a server-side
//! dry run), and the conversion from the JSON document.

use serde_json::{Map, Value};

/// `openapi.v2.Document`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Document {
    #[prost(string, tag = "1")]
    pub swagger: String,
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    pub paths: Option<Paths>,
    #[prost(message, optional, tag = "9")]
    pub definitions: Option<Definitions>,
    #[prost(message, repeated, tag = "16")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.Paths`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Paths {
    #[prost(message, repeated, tag = "2")]
    pub path: Vec<NamedPathItem>,
}

/// `openapi.v2.NamedPathItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedPathItem {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<PathItem>,
}

/// `openapi.v2.PathItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PathItem {
    #[prost(message, optional, tag = "2")]
    pub get: Option<Operation>,
    #[prost(message, optional, tag = "3")]
    pub put: Option<Operation>,
    #[prost(message, optional, tag = "4")]
    pub post: Option<Operation>,
    #[prost(message, optional, tag = "5")]
    pub delete: Option<Operation>,
    #[prost(message, optional, tag = "8")]
    pub patch: Option<Operation>,
    #[prost(message, repeated, tag = "9")]
    pub parameters: Vec<ParametersItem>,
}

/// `openapi.v2.Operation`, without responses and security.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Operation {
    #[prost(string, repeated, tag = "1")]
    pub tags: Vec<String>,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "5")]
    pub operation_id: String,
    #[prost(string, repeated, tag = "6")]
    pub produces: Vec<String>,
    #[prost(string, repeated, tag = "7")]
    pub consumes: Vec<String>,
    #[prost(message, repeated, tag = "8")]
    pub parameters: Vec<ParametersItem>,
    #[prost(message, repeated, tag = "13")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `openapi.v2.ParametersItem`: a parameter, or a reference to a shared one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ParametersItem {
    #[prost(oneof = "parameters_item::Oneof", tags = "1, 2")]
    pub oneof: Option<parameters_item::Oneof>,
}

/// The alternatives of [`ParametersItem`] and the parameter kinds written.
pub mod parameters_item {
    /// `ParametersItem.oneof`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        #[prost(message, tag = "1")]
        Parameter(super::Parameter),
        #[prost(message, tag = "2")]
        JsonReference(super::JsonReference),
    }
}

/// `openapi.v2.Parameter`, holding a non-body parameter.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Parameter {
    #[prost(message, optional, tag = "2")]
    pub non_body_parameter: Option<NonBodyParameter>,
}

/// `openapi.v2.NonBodyParameter`, holding a query parameter.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NonBodyParameter {
    #[prost(message, optional, tag = "3")]
    pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
}

/// `openapi.v2.QueryParameterSubSchema`, without bounds and enums.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryParameterSubSchema {
    #[prost(bool, tag = "1")]
    pub required: bool,
    #[prost(string, tag = "2")]
    pub r#in: String,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "6")]
    pub r#type: String,
    #[prost(bool, tag = "20")]
    pub unique_items: bool,
}

/// `openapi.v2.JsonReference`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JsonReference {
    #[prost(string, tag = "1")]
    pub r#ref: String,
}

/// `openapi.v2.Info`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Info {
    #[prost(string, tag = "1")]
    pub title: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(string, tag = "3")]
    pub description: String,
}

/// `openapi.v2.Definitions`: the named schemas.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Definitions {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

/// `openapi.v2.NamedSchema`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedSchema {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Schema>,
}

/// `openapi.v2.Any`: values of no fixed schema travel as YAML text.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    #[prost(string, tag = "2")]
    pub yaml: String,
}

/// `openapi.v2.NamedAny`: a vendor extension (`x-kubernetes-...`) and its value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedAny {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Any>,
}

/// `openapi.v2.TypeItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeItem {
    #[prost(string, repeated, tag = "1")]
    pub value: Vec<String>,
}

/// `openapi.v2.ItemsItem`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ItemsItem {
    #[prost(message, repeated, tag = "1")]
    pub schema: Vec<Schema>,
}

/// `openapi.v2.Properties`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Properties {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

/// `openapi.v2.AdditionalPropertiesItem`: a schema or a boolean.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdditionalPropertiesItem {
    #[prost(oneof = "additional_properties_item::Oneof", tags = "1, 2")]
    pub oneof: Option<additional_properties_item::Oneof>,
}

/// The alternatives of [`AdditionalPropertiesItem`].
pub mod additional_properties_item {
    /// `AdditionalPropertiesItem.oneof`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Oneof {
        #[prost(message, tag = "1")]
        Schema(Box<super::Schema>),
        #[prost(bool, tag = "2")]
        Boolean(bool),
    }
}

/// `openapi.v2.Schema`, without `xml`, `externalDocs` and the numeric bounds, which the
/// served definitions do not use.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Schema {
    #[prost(string, tag = "1")]
    pub r#ref: String,
    #[prost(string, tag = "2")]
    pub format: String,
    #[prost(string, tag = "3")]
    pub title: String,
    #[prost(string, tag = "4")]
    pub description: String,
    #[prost(message, optional, tag = "5")]
    pub default: Option<Any>,
    #[prost(bool, tag = "16")]
    pub unique_items: bool,
    #[prost(string, repeated, tag = "19")]
    pub required: Vec<String>,
    #[prost(message, repeated, tag = "20")]
    pub r#enum: Vec<Any>,
    #[prost(message, optional, boxed, tag = "21")]
    pub additional_properties: Option<Box<AdditionalPropertiesItem>>,
    #[prost(message, optional, tag = "22")]
    pub r#type: Option<TypeItem>,
    #[prost(message, optional, tag = "23")]
    pub items: Option<ItemsItem>,
    #[prost(message, repeated, tag = "24")]
    pub all_of: Vec<Schema>,
    #[prost(message, optional, tag = "25")]
    pub properties: Option<Properties>,
    #[prost(string, tag = "26")]
    pub discriminator: String,
    #[prost(bool, tag = "27")]
    pub read_only: bool,
    #[prost(message, optional, tag = "30")]
    pub example: Option<Any>,
    #[prost(message, repeated, tag = "31")]
    pub vendor_extension: Vec<NamedAny>,
}

/// What cannot be converted: the JSON path of the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{0}: expected a JSON object")]
    NotObject(String),
    #[error("{0}: cannot be written as YAML: {1}")]
    Yaml(String, String),
}

fn any(path: &str, value: &Value) -> Result<Any, ConvertError> {
    let yaml = serde_norway::to_string(value)
        .map_err(|e| ConvertError::Yaml(path.into(), e.to_string()))?;
    Ok(Any { yaml })
}

fn extensions(path: &str, obj: &Map<String, Value>) -> Result<Vec<NamedAny>, ConvertError> {
    obj.iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(k, v)| {
            Ok(NamedAny {
                name: k.clone(),
                value: Some(any(&format!("{path}.{k}"), v)?),
            })
        })
        .collect()
}

fn string(obj: &Map<String, Value>, key: &str) -> String {
    obj.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn named_schemas(path: &str, value: &Value) -> Result<Vec<NamedSchema>, ConvertError> {
    let obj = value
        .as_object()
        .ok_or_else(|| ConvertError::NotObject(path.into()))?;
    obj.iter()
        .map(|(name, v)| {
            Ok(NamedSchema {
                name: name.clone(),
                value: Some(schema(&format!("{path}.{name}"), v)?),
            })
        })
        .collect()
}

/// Converts one JSON schema object.
pub fn schema(path: &str, value: &Value) -> Result<Schema, ConvertError> {
    let obj = value
        .as_object()
        .ok_or_else(|| ConvertError::NotObject(path.into()))?;
    let optional_any = |key: &str| -> Result<Option<Any>, ConvertError> {
        obj.get(key)
            .map(|v| any(&format!("{path}.{key}"), v))
            .transpose()
    };
    let additional_properties = match obj.get("additionalProperties") {
        None => None,
        Some(Value::Bool(b)) => Some(Box::new(AdditionalPropertiesItem {
            oneof: Some(additional_properties_item::Oneof::Boolean(*b)),
        })),
        Some(v) => Some(Box::new(AdditionalPropertiesItem {
            oneof: Some(additional_properties_item::Oneof::Schema(Box::new(schema(
                &format!("{path}.additionalProperties"),
                v,
            )?))),
        })),
    };
    let items = match obj.get("items") {
        None => None,
        Some(Value::Array(list)) => Some(ItemsItem {
            schema: list
                .iter()
                .enumerate()
                .map(|(i, v)| schema(&format!("{path}.items[{i}]"), v))
                .collect::<Result<_, _>>()?,
        }),
        Some(v) => Some(ItemsItem {
            schema: vec![schema(&format!("{path}.items"), v)?],
        }),
    };
    let all_of = match obj.get("allOf") {
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, v)| schema(&format!("{path}.allOf[{i}]"), v))
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    let properties = obj
        .get("properties")
        .map(|v| {
            Ok::<_, ConvertError>(Properties {
                additional_properties: named_schemas(&format!("{path}.properties"), v)?,
            })
        })
        .transpose()?;
    let r#enum = match obj.get("enum") {
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| any(&format!("{path}.enum"), v))
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    let types = strings(obj.get("type"));
    Ok(Schema {
        r#ref: string(obj, "$ref"),
        format: string(obj, "format"),
        title: string(obj, "title"),
        description: string(obj, "description"),
        default: optional_any("default")?,
        unique_items: obj
            .get("uniqueItems")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        required: strings(obj.get("required")),
        r#enum,
        additional_properties,
        r#type: (!types.is_empty()).then_some(TypeItem { value: types }),
        items,
        all_of,
        properties,
        discriminator: string(obj, "discriminator"),
        read_only: obj
            .get("readOnly")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        example: optional_any("example")?,
        vendor_extension: extensions(path, obj)?,
    })
}

/// Query parameters inline, shared ones by reference; inline body and path parameters,
/// which kubectl does not read, are left out.
fn parameters(value: Option<&Value>) -> Vec<ParametersItem> {
    value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .filter_map(|p| {
            let oneof = if let Some(r) = p.get("$ref").and_then(Value::as_str) {
                parameters_item::Oneof::JsonReference(JsonReference { r#ref: r.into() })
            } else if p.get("in").and_then(Value::as_str) == Some("query") {
                parameters_item::Oneof::Parameter(Parameter {
                    non_body_parameter: Some(NonBodyParameter {
                        query_parameter_sub_schema: Some(QueryParameterSubSchema {
                            required: p.get("required").and_then(Value::as_bool).unwrap_or(false),
                            r#in: "query".into(),
                            description: string(p, "description"),
                            name: string(p, "name"),
                            r#type: string(p, "type"),
                            unique_items: p
                                .get("uniqueItems")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                        }),
                    }),
                })
            } else {
                return None;
            };
            Some(ParametersItem { oneof: Some(oneof) })
        })
        .collect()
}

fn operation(path: &str, value: Option<&Value>) -> Result<Option<Operation>, ConvertError> {
    let Some(op) = value.and_then(Value::as_object) else {
        return Ok(None);
    };
    Ok(Some(Operation {
        tags: strings(op.get("tags")),
        description: string(op, "description"),
        operation_id: string(op, "operationId"),
        produces: strings(op.get("produces")),
        consumes: strings(op.get("consumes")),
        parameters: parameters(op.get("parameters")),
        vendor_extension: extensions(path, op)?,
    }))
}

fn path_item(name: &str, value: &Value) -> Result<PathItem, ConvertError> {
    let at = |verb: &str| operation(&format!("paths.{name}.{verb}"), value.get(verb));
    Ok(PathItem {
        get: at("get")?,
        put: at("put")?,
        post: at("post")?,
        delete: at("delete")?,
        patch: at("patch")?,
        parameters: parameters(value.get("parameters")),
    })
}

/// Converts the whole OpenAPI v2 JSON document.
pub fn document(value: &Value) -> Result<Document, ConvertError> {
    let obj = value
        .as_object()
        .ok_or_else(|| ConvertError::NotObject("$".into()))?;
    let info = obj.get("info").and_then(Value::as_object).map(|i| Info {
        title: string(i, "title"),
        version: string(i, "version"),
        description: string(i, "description"),
    });
    let definitions = obj
        .get("definitions")
        .map(|v| {
            Ok::<_, ConvertError>(Definitions {
                additional_properties: named_schemas("definitions", v)?,
            })
        })
        .transpose()?;
    let paths = obj
        .get("paths")
        .and_then(Value::as_object)
        .map(|ps| {
            ps.iter()
                .map(|(name, item)| {
                    Ok(NamedPathItem {
                        name: name.clone(),
                        value: Some(path_item(name, item)?),
                    })
                })
                .collect::<Result<Vec<_>, ConvertError>>()
                .map(|path| Paths { path })
        })
        .transpose()?;
    Ok(Document {
        swagger: string(obj, "swagger"),
        info,
        paths,
        definitions,
        vendor_extension: extensions("$", obj)?,
    })
}
