//! Bodies in and out: request decoding (JSON, YAML or Kubernetes protobuf, bounded), content negotiation of
//! the response (plain objects, Table, PartialObjectMetadata), and response building.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use serde_json::Value;

use super::status::ApiError;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// kube-apiserver's limit on a request body (3 MiB), with room for the JSON around a
/// 1.5 MiB object, which etcd's request limit bounds.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(format!(
                "Request entity too large: limit is {MAX_BODY}"
            )))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The request's body as JSON: application/json, application/yaml (one document), or
/// application/vnd.kubernetes.protobuf.
pub fn decode_object(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let mt = media_type(headers);
    let v: Value = match mt.as_str() {
        "application/json" | "" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_norway::from_slice(body)
            .map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
        })?,
        super::protobuf::CONTENT_TYPE => super::protobuf::decode(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid protobuf: {e}"))
        })?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    Ok(v)
}

/// The patch types of a PATCH request's Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

pub fn patch_kind(headers: &HeaderMap) -> Result<PatchKind, ApiError> {
    match media_type(headers).as_str() {
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        "application/apply-patch+yaml" => Ok(PatchKind::Apply),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

/// The form the client asked for in Accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Object,
    Yaml,
    Table,
    PartialMetadata,
}

/// Picks the first acceptable media type of Accept, in the client's order, as
/// kube-apiserver's negotiation does for the types podrun serves.
pub fn negotiate(headers: &HeaderMap) -> Result<Output, ApiError> {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if accept.trim().is_empty() {
        return Ok(Output::Object);
    }
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let mt = parts.next().unwrap_or("").to_ascii_lowercase();
        let params: Vec<(String, String)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let param = |k: &str| {
            params
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.as_str())
        };
        let json_like = matches!(mt.as_str(), "application/json" | "*/*" | "application/*");
        if json_like || mt == "application/yaml" {
            match param("as") {
                None => {
                    return Ok(if mt == "application/yaml" {
                        Output::Yaml
                    } else {
                        Output::Object
                    })
                }
                Some(kind) => {
                    let meta_v1 =
                        param("g") == Some("meta.k8s.io") && matches!(param("v"), Some("v1"));
                    match kind {
                        "Table" if meta_v1 => return Ok(Output::Table),
                        "PartialObjectMetadata" | "PartialObjectMetadataList" if meta_v1 => {
                            return Ok(Output::PartialMetadata)
                        }
                        _ => continue,
                    }
                }
            }
        }
    }
    Err(ApiError::not_acceptable(&accept))
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("static headers are valid")
}

pub fn yaml_response(code: StatusCode, v: &Value) -> Response<Body> {
    let body = serde_norway::to_string(v).unwrap_or_default();
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/yaml")
        .body(full(body))
        .expect("static headers are valid")
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

pub fn text_response(code: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(text.to_string()))
        .expect("static headers are valid")
}

/// A streaming body from a channel of chunks: the watch stream.
pub fn stream_body(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, std::io::Error>(hyper::body::Frame::data(b)));
    BodyExt::boxed(StreamBody::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, v.parse().unwrap());
        h
    }

    #[test]
    fn kubectl_get_asks_for_a_table_first() {
        let h = accept("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json");
        assert_eq!(negotiate(&h).unwrap(), Output::Table);
        let h = accept("application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json");
        assert_eq!(negotiate(&h).unwrap(), Output::Object);
        assert_eq!(negotiate(&HeaderMap::new()).unwrap(), Output::Object);
    }

    #[test]
    fn protobuf_only_is_not_acceptable_and_falls_back_when_json_is_listed() {
        assert!(negotiate(&accept("application/vnd.kubernetes.protobuf")).is_err());
        let h = accept("application/vnd.kubernetes.protobuf, application/json");
        assert_eq!(negotiate(&h).unwrap(), Output::Object);
    }

    #[test]
    fn bodies_decode_as_json_or_yaml_and_must_be_objects() {
        let mut h = HeaderMap::new();
        assert!(decode_object(&h, b"{\"a\":1}").is_ok());
        assert_eq!(decode_object(&h, b"[1]").unwrap_err().code, 400);
        h.insert(header::CONTENT_TYPE, "application/yaml".parse().unwrap());
        assert_eq!(decode_object(&h, b"a: 1\n").unwrap()["a"], 1);
        h.insert(header::CONTENT_TYPE, "text/html".parse().unwrap());
        assert_eq!(decode_object(&h, b"x").unwrap_err().code, 415);
    }
}
