//! Request bodies in Kubernetes' protobuf encoding, which kubectl's typed commands send
//! (`create deployment`, `scale`, `drain`'s evictions): a 4-byte magic `k8s\0`, then a
//! `runtime.Unknown` whose `typeMeta` names the kind and whose `raw` is the object.
//!
//! The object is decoded into the JSON that kube-apiserver would see for it, driven by a
//! schema cut from the upstream protobuf definitions and Go types
//! (control/proto/k8s-schema.json, made by scripts/proto-gen.py): field numbers and types
//! from the former, json names, pointers, omitempty and inlining from the latter. Go's
//! marshaller writes non-pointer fields even when zero, so a zero value of an omitempty,
//! non-pointer field is dropped, while a pointer's zero (`replicas: 0`,
//! `automountServiceAccountToken: false`) is kept. Responses stay JSON: kubectl lists JSON
//! next to protobuf in its Accept header.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Number, Value};

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8; 4] = b"k8s\0";
/// Nesting deeper than any served kind needs: bounds the recursion on hostile input.
const MAX_DEPTH: usize = 48;

const TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1";
const QUANTITY: &str = "k8s.io.apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "k8s.io.apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "k8s.io.apimachinery.pkg.runtime.RawExtension";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scalar {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Double,
    Float,
}

impl Scalar {
    fn parse(s: &str) -> Option<Scalar> {
        Some(match s {
            "string" => Scalar::String,
            "bytes" => Scalar::Bytes,
            "bool" => Scalar::Bool,
            "int32" => Scalar::Int32,
            "int64" => Scalar::Int64,
            "uint32" => Scalar::Uint32,
            "uint64" => Scalar::Uint64,
            "sint32" => Scalar::Sint32,
            "sint64" => Scalar::Sint64,
            "fixed32" => Scalar::Fixed32,
            "fixed64" => Scalar::Fixed64,
            "sfixed32" => Scalar::Sfixed32,
            "sfixed64" => Scalar::Sfixed64,
            "double" => Scalar::Double,
            "float" => Scalar::Float,
            _ => return None,
        })
    }

    /// Whether the scalar is written as a varint, and so may come packed.
    fn varint(self) -> bool {
        matches!(
            self,
            Scalar::Bool
                | Scalar::Int32
                | Scalar::Int64
                | Scalar::Uint32
                | Scalar::Uint64
                | Scalar::Sint32
                | Scalar::Sint64
        )
    }
}

#[derive(Clone, Debug)]
enum Ty {
    Scalar(Scalar),
    Message(String),
}

impl Ty {
    fn parse(s: &str) -> Ty {
        Scalar::parse(s).map_or_else(|| Ty::Message(s.to_string()), Ty::Scalar)
    }
}

#[derive(Clone, Debug)]
enum Shape {
    Single(Ty),
    Repeated(Ty),
    Map(Scalar, Ty),
}

#[derive(Debug)]
struct Field {
    json: String,
    shape: Shape,
    pointer: bool,
    omitempty: bool,
    inline: bool,
}

#[derive(Deserialize)]
struct RawSchema {
    kinds: HashMap<String, String>,
    meta_kinds: HashMap<String, String>,
    messages: HashMap<String, Vec<(u32, String, String, String)>>,
}

struct Schema {
    kinds: HashMap<String, String>,
    meta_kinds: HashMap<String, String>,
    messages: HashMap<String, HashMap<u32, Field>>,
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let raw: RawSchema = serde_json::from_str(include_str!("../../proto/k8s-schema.json"))
            .expect("control/proto/k8s-schema.json is valid: it is checked in and unit-tested");
        let messages = raw
            .messages
            .into_iter()
            .map(|(name, rows)| {
                let fields = rows
                    .into_iter()
                    .map(|(number, json, ty, flags)| {
                        let shape = if let Some(t) = ty.strip_prefix("[]") {
                            Shape::Repeated(Ty::parse(t))
                        } else if let Some(kv) = ty.strip_prefix("map:") {
                            let (k, v) = kv.split_once(':').unwrap_or((kv, "string"));
                            Shape::Map(Scalar::parse(k).unwrap_or(Scalar::String), Ty::parse(v))
                        } else {
                            Shape::Single(Ty::parse(&ty))
                        };
                        let field = Field {
                            json,
                            shape,
                            pointer: flags.contains('p'),
                            omitempty: flags.contains('o'),
                            inline: flags.contains('i'),
                        };
                        (number, field)
                    })
                    .collect();
                (name, fields)
            })
            .collect();
        Schema {
            kinds: raw.kinds,
            meta_kinds: raw.meta_kinds,
            messages,
        }
    })
}

/// The protobuf wire format, read with bounds checks everywhere.
struct Reader<'a> {
    buf: &'a [u8],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.buf.is_empty()
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        prost::encoding::decode_varint(&mut self.buf)
            .map_err(|e| DecodeError(format!("varint: {e}")))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return err(format!(
                "a field claims {n} bytes where {} remain",
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn key(&mut self) -> Result<(u32, Wire), DecodeError> {
        let k = self.varint()?;
        let number =
            u32::try_from(k >> 3).map_err(|_| DecodeError("field number out of range".into()))?;
        if number == 0 {
            return err("field number 0");
        }
        let wire = match k & 7 {
            0 => Wire::Varint,
            1 => Wire::Fixed64,
            2 => Wire::Len,
            5 => Wire::Fixed32,
            w => return err(format!("field {number}: unsupported wire type {w}")),
        };
        Ok((number, wire))
    }

    fn value(&mut self, wire: Wire) -> Result<Raw<'a>, DecodeError> {
        Ok(match wire {
            Wire::Varint => Raw::Varint(self.varint()?),
            Wire::Fixed64 => {
                let b = self.take(8)?;
                Raw::Fixed64(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            }
            Wire::Fixed32 => {
                let b = self.take(4)?;
                Raw::Fixed32(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
            }
            Wire::Len => {
                let n = self.varint()?;
                let n =
                    usize::try_from(n).map_err(|_| DecodeError("length out of range".into()))?;
                Raw::Len(self.take(n)?)
            }
        })
    }
}

#[derive(Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

fn scalar(s: Scalar, raw: Raw<'_>, field: &str) -> Result<Value, DecodeError> {
    let wrong = || DecodeError(format!("{field}: wrong wire type for {s:?}"));
    Ok(match (s, raw) {
        (Scalar::String, Raw::Len(b)) => Value::String(
            std::str::from_utf8(b)
                .map_err(|_| DecodeError(format!("{field}: string is not UTF-8")))?
                .to_string(),
        ),
        (Scalar::Bytes, Raw::Len(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Scalar::Bool, Raw::Varint(v)) => Value::Bool(v != 0),
        (Scalar::Int32, Raw::Varint(v)) => Value::from(v as i64 as i32),
        (Scalar::Int64, Raw::Varint(v)) => Value::from(v as i64),
        (Scalar::Uint32, Raw::Varint(v)) => Value::from(v as u32),
        (Scalar::Uint64, Raw::Varint(v)) => Value::from(v),
        (Scalar::Sint32, Raw::Varint(v)) => Value::from(zigzag(v) as i32),
        (Scalar::Sint64, Raw::Varint(v)) => Value::from(zigzag(v)),
        (Scalar::Fixed32, Raw::Fixed32(v)) => Value::from(v),
        (Scalar::Sfixed32, Raw::Fixed32(v)) => Value::from(v as i32),
        (Scalar::Fixed64, Raw::Fixed64(v)) => Value::from(v),
        (Scalar::Sfixed64, Raw::Fixed64(v)) => Value::from(v as i64),
        (Scalar::Double, Raw::Fixed64(v)) => float(f64::from_bits(v), field)?,
        (Scalar::Float, Raw::Fixed32(v)) => float(f64::from(f32::from_bits(v)), field)?,
        _ => return Err(wrong()),
    })
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn float(f: f64, field: &str) -> Result<Value, DecodeError> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| DecodeError(format!("{field}: {f} is not a JSON number")))
}

/// Go's zero value, which omitempty leaves out.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(_) => false,
    }
}

struct Decoder<'s> {
    schema: &'s Schema,
}

impl Decoder<'_> {
    /// A message as its JSON value. None for the zero value of a type that Go writes
    /// as nothing or null (a zero Time, a zero IntOrString), which a non-pointer field
    /// then omits.
    fn message(
        &self,
        name: &str,
        bytes: &[u8],
        path: &str,
        depth: usize,
    ) -> Result<Option<Value>, DecodeError> {
        if depth > MAX_DEPTH {
            return err(format!("{path}: nested deeper than {MAX_DEPTH}"));
        }
        match name {
            TIME | MICRO_TIME => return time(bytes, name == MICRO_TIME, path),
            DURATION => {
                let f = fields(bytes)?;
                let ns = f.varint(1).unwrap_or(0) as i64;
                return Ok(Some(Value::String(go_duration(ns))));
            }
            QUANTITY => {
                let f = fields(bytes)?;
                let s = f.string(1, path)?.unwrap_or_default();
                return Ok(Some(Value::String(if s.is_empty() {
                    "0".into()
                } else {
                    s
                })));
            }
            INT_OR_STRING => {
                let f = fields(bytes)?;
                return Ok(match f.varint(1).unwrap_or(0) {
                    // The zero IntOrString is no value; a pointer field puts 0 back.
                    0 => match f.varint(2).unwrap_or(0) as i64 as i32 {
                        0 => None,
                        v => Some(Value::from(v)),
                    },
                    1 => Some(Value::String(f.string(3, path)?.unwrap_or_default())),
                    t => return err(format!("{path}: IntOrString type {t}")),
                });
            }
            FIELDS_V1 | RAW_EXTENSION => {
                let f = fields(bytes)?;
                let raw = f.bytes(1).unwrap_or_default();
                if raw.is_empty() {
                    return Ok(None);
                }
                return serde_json::from_slice(raw).map(Some).map_err(|e| {
                    DecodeError(format!("{path}: embedded JSON does not parse: {e}"))
                });
            }
            _ => {}
        }
        let Some(schema) = self.schema.messages.get(name) else {
            return err(format!("{path}: no schema for message {name}"));
        };
        let mut out = Map::new();
        let mut reader = Reader { buf: bytes };
        while !reader.done() {
            let (number, wire) = reader.key()?;
            let raw = reader.value(wire)?;
            // Fields this schema does not know are skipped, as Go's unmarshaller does.
            let Some(field) = schema.get(&number) else {
                continue;
            };
            let fpath = if field.json.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{}", field.json)
            };
            match &field.shape {
                Shape::Single(ty) => {
                    let v = match self.single(ty, raw, &fpath, depth)? {
                        None if field.pointer
                            && matches!(ty, Ty::Message(m) if m == INT_OR_STRING) =>
                        {
                            Some(Value::from(0))
                        }
                        v => v,
                    };
                    if field.inline {
                        if let Some(Value::Object(m)) = v {
                            out.extend(m);
                        }
                    } else if let Some(v) = v {
                        out.insert(field.json.clone(), v);
                    }
                }
                Shape::Repeated(ty) => {
                    let list = out
                        .entry(field.json.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    let Value::Array(list) = list else {
                        return err(format!("{fpath}: repeated and single at once"));
                    };
                    match (ty, raw) {
                        // Packed varints: many values in one length-delimited field.
                        (Ty::Scalar(s), Raw::Len(b)) if s.varint() => {
                            let mut r = Reader { buf: b };
                            while !r.done() {
                                list.push(scalar(*s, Raw::Varint(r.varint()?), &fpath)?);
                            }
                        }
                        _ => {
                            let v = self.single(ty, raw, &fpath, depth)?;
                            list.push(v.unwrap_or(Value::Null));
                        }
                    }
                }
                Shape::Map(k, v) => {
                    let Raw::Len(entry) = raw else {
                        return err(format!("{fpath}: a map entry must be length-delimited"));
                    };
                    let f = fields(entry)?;
                    let key = match f.get(1) {
                        Some(r) => scalar(*k, r, &fpath)?,
                        None => scalar(*k, zero_raw(*k), &fpath)?,
                    };
                    let key = match key {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    let value = match (f.get(2), v) {
                        (Some(r), ty) => self.single(ty, r, &format!("{fpath}[{key}]"), depth)?,
                        (None, Ty::Scalar(s)) => Some(scalar(*s, zero_raw(*s), &fpath)?),
                        (None, ty) => self.single(ty, Raw::Len(&[]), &fpath, depth)?,
                    };
                    let map = out
                        .entry(field.json.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(m) = map {
                        m.insert(key, value.unwrap_or(Value::Null));
                    }
                }
            }
        }
        // Drop what Go's JSON encoder would have left out.
        for field in schema.values() {
            if field.inline {
                continue;
            }
            let drop = match out.get(&field.json) {
                Some(v) if matches!(field.shape, Shape::Map(..) | Shape::Repeated(_)) => {
                    is_zero(v) || v.as_object().is_some_and(Map::is_empty)
                }
                Some(v) => field.omitempty && !field.pointer && is_zero(v),
                None => false,
            };
            if drop {
                out.remove(&field.json);
            }
        }
        Ok(Some(Value::Object(out)))
    }

    fn single(
        &self,
        ty: &Ty,
        raw: Raw<'_>,
        path: &str,
        depth: usize,
    ) -> Result<Option<Value>, DecodeError> {
        match ty {
            Ty::Scalar(s) => scalar(*s, raw, path).map(Some),
            Ty::Message(m) => {
                let Raw::Len(b) = raw else {
                    return err(format!("{path}: a message must be length-delimited"));
                };
                self.message(m, b, path, depth + 1)
            }
        }
    }
}

fn zero_raw(s: Scalar) -> Raw<'static> {
    match s {
        Scalar::String | Scalar::Bytes => Raw::Len(&[]),
        Scalar::Fixed64 | Scalar::Sfixed64 | Scalar::Double => Raw::Fixed64(0),
        Scalar::Fixed32 | Scalar::Sfixed32 | Scalar::Float => Raw::Fixed32(0),
        _ => Raw::Varint(0),
    }
}

/// The last value of each field of a small message (later values win, as protobuf says).
struct Fields<'a>(Vec<(u32, Raw<'a>)>);

fn fields(bytes: &[u8]) -> Result<Fields<'_>, DecodeError> {
    let mut r = Reader { buf: bytes };
    let mut out = Vec::new();
    while !r.done() {
        let (n, w) = r.key()?;
        out.push((n, r.value(w)?));
    }
    Ok(Fields(out))
}

impl<'a> Fields<'a> {
    fn get(&self, n: u32) -> Option<Raw<'a>> {
        self.0.iter().rev().find(|(k, _)| *k == n).map(|(_, r)| *r)
    }
    fn varint(&self, n: u32) -> Option<u64> {
        match self.get(n)? {
            Raw::Varint(v) => Some(v),
            _ => None,
        }
    }
    fn bytes(&self, n: u32) -> Option<&'a [u8]> {
        match self.get(n)? {
            Raw::Len(b) => Some(b),
            _ => None,
        }
    }
    fn string(&self, n: u32, path: &str) -> Result<Option<String>, DecodeError> {
        self.bytes(n)
            .map(|b| {
                std::str::from_utf8(b)
                    .map(str::to_string)
                    .map_err(|_| DecodeError(format!("{path}: string is not UTF-8")))
            })
            .transpose()
    }
}

/// metav1.Time as JSON: RFC 3339 in UTC, to the second (MicroTime: to the microsecond).
/// The zero time is no value.
fn time(bytes: &[u8], micro: bool, path: &str) -> Result<Option<Value>, DecodeError> {
    let f = fields(bytes)?;
    let secs = f.varint(1).unwrap_or(0) as i64;
    let nanos = f.varint(2).unwrap_or(0) as i64 as i32;
    if secs == 0 && nanos == 0 {
        return Ok(None);
    }
    let nanos = u32::try_from(nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| DecodeError(format!("{path}: nanos {nanos} out of range")))?;
    let t = chrono::DateTime::from_timestamp(secs, nanos)
        .ok_or_else(|| DecodeError(format!("{path}: time {secs}s out of range")))?;
    let fmt = if micro {
        "%Y-%m-%dT%H:%M:%S%.6fZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    Ok(Some(Value::String(t.format(fmt).to_string())))
}

/// A duration as Go prints it: "1h2m3.5s", "150ms", "0s".
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let mut u = ns.unsigned_abs();
    if u < 1_000_000_000 {
        let (unit, div) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", frac(u, div));
    }
    let h = u / 3_600_000_000_000;
    u %= 3_600_000_000_000;
    let m = u / 60_000_000_000;
    u %= 60_000_000_000;
    let s = frac(u, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    }
}

fn frac(v: u64, div: u64) -> String {
    let whole = v / div;
    let rest = v % div;
    if rest == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A protobuf request body as the JSON object it stands for, apiVersion and kind included.
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return err("it does not start with the k8s protobuf magic");
    };
    let envelope = fields(rest)?;
    let type_meta = fields(envelope.bytes(1).unwrap_or_default())?;
    let api_version = type_meta.string(1, "typeMeta")?.unwrap_or_default();
    let kind = type_meta.string(2, "typeMeta")?.unwrap_or_default();
    if let Some(enc) = envelope.string(3, "contentEncoding")? {
        if !enc.is_empty() {
            return err(format!("content encoding {enc:?} is not supported"));
        }
    }
    if let Some(ct) = envelope.string(4, "contentType")? {
        if !ct.is_empty() && ct != CONTENT_TYPE {
            return err(format!("inner content type {ct:?} is not supported"));
        }
    }
    let s = schema();
    let message = s
        .kinds
        .get(&format!("{api_version}/{kind}"))
        .or_else(|| s.meta_kinds.get(&kind))
        .ok_or_else(|| {
            DecodeError(format!(
                "kind {kind:?} of {api_version:?} has no protobuf schema here; send JSON"
            ))
        })?;
    let raw = envelope.bytes(2).unwrap_or_default();
    let decoder = Decoder { schema: s };
    let mut obj = match decoder.message(message, raw, "", 0)? {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version));
    out.insert("kind".into(), Value::String(kind));
    out.append(&mut obj);
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A minimal protobuf writer for building test bodies.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn varint(&mut self, v: u64) {
            prost::encoding::encode_varint(v, &mut self.0);
        }
        fn int(mut self, n: u32, v: i64) -> Self {
            self.varint(u64::from(n) << 3);
            self.varint(v as u64);
            self
        }
        fn bytes(mut self, n: u32, b: &[u8]) -> Self {
            self.varint((u64::from(n) << 3) | 2);
            self.varint(b.len() as u64);
            self.0.extend_from_slice(b);
            self
        }
        fn str(self, n: u32, s: &str) -> Self {
            self.bytes(n, s.as_bytes())
        }
        fn msg(self, n: u32, m: W) -> Self {
            self.bytes(n, &m.0)
        }
        fn entry(self, n: u32, k: &str, v: W) -> Self {
            self.msg(n, W::default().str(1, k).msg(2, v))
        }
        fn sentry(self, n: u32, k: &str, v: &str) -> Self {
            self.msg(n, W::default().str(1, k).str(2, v))
        }
    }

    fn envelope(api_version: &str, kind: &str, raw: W) -> Vec<u8> {
        let tm = W::default().str(1, api_version).str(2, kind);
        let mut out = MAGIC.to_vec();
        out.extend(
            W::default()
                .msg(1, tm)
                .bytes(2, &raw.0)
                .str(3, "")
                .str(4, "")
                .0,
        );
        out
    }

    /// ObjectMeta as Go writes it: every non-pointer field, zero or not.
    fn meta(name: &str) -> W {
        W::default()
            .str(1, name)
            .str(2, "")
            .str(3, "")
            .str(4, "")
            .str(5, "")
            .str(6, "")
            .int(7, 0)
            .msg(8, W::default())
            .sentry(11, "app", "web")
    }

    #[test]
    fn the_schema_loads_and_knows_the_served_kinds() {
        let s = schema();
        for k in [
            "v1/Pod",
            "v1/Namespace",
            "v1/Service",
            "v1/ConfigMap",
            "v1/Secret",
            "apps/v1/Deployment",
            "apps/v1/ReplicaSet",
            "autoscaling/v1/Scale",
            "policy/v1/Eviction",
            "coordination.k8s.io/v1/Lease",
            "discovery.k8s.io/v1/EndpointSlice",
        ] {
            let m = &s.kinds[k];
            assert!(s.messages.contains_key(m), "{k}: {m}");
        }
        assert!(s.meta_kinds.contains_key("DeleteOptions"));
    }

    #[test]
    fn a_deployment_decodes_as_go_would_marshal_it_to_json() {
        let container = W::default()
            .str(1, "nginx")
            .str(2, "nginx:1.25")
            .msg(6, W::default().str(1, "").int(3, 80).str(4, "TCP"))
            .msg(8, W::default())
            .str(13, "File");
        let pod_spec = W::default().msg(2, container).str(3, "Always");
        let template = W::default().msg(1, meta("")).msg(2, pod_spec);
        let selector = W::default().sentry(1, "app", "web");
        let spec = W::default()
            .int(1, 0)
            .msg(2, selector)
            .msg(3, template)
            .msg(4, W::default())
            .int(5, 0);
        let raw = W::default()
            .msg(1, meta("web"))
            .msg(2, spec)
            .msg(3, W::default());
        let v = decode(&envelope("apps/v1", "Deployment", raw)).unwrap();
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["kind"], "Deployment");
        assert_eq!(
            v["metadata"],
            json!({"name": "web", "labels": {"app": "web"}})
        );
        // replicas is a pointer: its zero is a value; minReadySeconds is not.
        assert_eq!(v["spec"]["replicas"], 0);
        assert!(v["spec"].get("minReadySeconds").is_none());
        assert_eq!(
            v["spec"]["selector"],
            json!({"matchLabels": {"app": "web"}})
        );
        assert_eq!(v["spec"]["strategy"], json!({}));
        let c = &v["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["name"], "nginx");
        assert_eq!(c["image"], "nginx:1.25");
        assert_eq!(
            c["ports"],
            json!([{"containerPort": 80, "protocol": "TCP"}])
        );
        assert_eq!(c["terminationMessagePath"], "File");
        assert_eq!(c["resources"], json!({}));
        assert_eq!(
            v["spec"]["template"]["metadata"],
            json!({"labels": {"app": "web"}})
        );
    }

    #[test]
    fn special_types_become_their_json_forms() {
        // A Service port: targetPort by name, nodePort zero dropped, port kept.
        let port = W::default()
            .str(1, "http")
            .str(2, "TCP")
            .int(3, 80)
            .msg(4, W::default().int(1, 1).int(2, 0).str(3, "web"))
            .int(5, 0);
        let plain = W::default()
            .int(3, 81)
            .msg(4, W::default().int(1, 0).int(2, 0).str(3, ""));
        let raw = W::default()
            .msg(1, meta("svc"))
            .msg(2, W::default().msg(1, port).msg(1, plain));
        let v = decode(&envelope("v1", "Service", raw)).unwrap();
        assert_eq!(
            v["spec"]["ports"],
            json!([{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"}, {"port": 81}])
        );

        // Secret data is bytes: base64 in JSON. Quantities are strings.
        let raw = W::default()
            .msg(1, meta("s"))
            .msg(2, W::default().str(1, "k").bytes(2, b"\x00\xffsecret"));
        let v = decode(&envelope("v1", "Secret", raw)).unwrap();
        assert_eq!(v["data"]["k"], "AP9zZWNyZXQ=");

        let limits = W::default().entry(1, "memory", W::default().str(1, "64Mi"));
        let c = W::default().str(1, "c").msg(8, limits);
        let raw = W::default()
            .msg(
                1,
                meta("p").msg(9, W::default().int(1, 1_700_000_000).int(2, 0)),
            )
            .msg(2, W::default().msg(2, c).int(4, 0));
        let v = decode(&envelope("v1", "Pod", raw)).unwrap();
        assert_eq!(
            v["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "64Mi"
        );
        assert_eq!(v["metadata"]["deletionTimestamp"], "2023-11-14T22:13:20Z");
        // terminationGracePeriodSeconds is a pointer: an explicit 0 is kept.
        assert_eq!(v["spec"]["terminationGracePeriodSeconds"], 0);

        // A Lease's MicroTime keeps microseconds.
        let spec = W::default()
            .str(1, "holder")
            .msg(3, W::default().int(1, 1_700_000_000).int(2, 123_456_000));
        let raw = W::default().msg(1, meta("l")).msg(2, spec);
        let v = decode(&envelope("coordination.k8s.io/v1", "Lease", raw)).unwrap();
        assert_eq!(v["spec"]["acquireTime"], "2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn inlined_fields_merge_into_their_parent() {
        let vol = W::default()
            .str(1, "data")
            .msg(2, W::default().msg(2, W::default().str(1, "Memory")));
        let probe = W::default()
            .msg(
                1,
                W::default().msg(
                    2,
                    W::default()
                        .str(1, "/healthz")
                        .msg(2, W::default().int(1, 0).int(2, 8080)),
                ),
            )
            .int(4, 5);
        let c = W::default().str(1, "c").msg(10, probe);
        let raw = W::default()
            .msg(1, meta("p"))
            .msg(2, W::default().msg(1, vol).msg(2, c));
        let v = decode(&envelope("v1", "Pod", raw)).unwrap();
        assert_eq!(
            v["spec"]["volumes"],
            json!([{"name": "data", "emptyDir": {"medium": "Memory"}}])
        );
        assert_eq!(
            v["spec"]["containers"][0]["livenessProbe"],
            json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5})
        );
    }

    #[test]
    fn delete_options_and_evictions_decode() {
        let opts = W::default()
            .int(1, 0)
            .msg(2, W::default().str(1, "uid-1"))
            .str(4, "Foreground");
        let mut body = MAGIC.to_vec();
        body.extend(
            W::default()
                .msg(1, W::default().str(1, "v1").str(2, "DeleteOptions"))
                .bytes(2, &opts.0)
                .0,
        );
        let v = decode(&body).unwrap();
        assert_eq!(v["gracePeriodSeconds"], 0);
        assert_eq!(v["preconditions"]["uid"], "uid-1");
        assert_eq!(v["propagationPolicy"], "Foreground");

        let raw = W::default().msg(1, meta("web-1")).msg(2, opts);
        let v = decode(&envelope("policy/v1", "Eviction", raw)).unwrap();
        assert_eq!(v["metadata"]["name"], "web-1");
        assert_eq!(v["deleteOptions"]["gracePeriodSeconds"], 0);
    }

    #[test]
    fn hostile_or_foreign_bodies_are_errors_not_panics() {
        assert!(decode(b"{}").is_err());
        assert!(decode(b"k8s\0\x0a\xff").is_err());
        let raw = W::default().msg(1, meta("x"));
        let mut body = envelope("v1", "Pod", raw);
        body.truncate(body.len() - 3);
        assert!(decode(&body).is_err());
        let e = decode(&envelope("example.com/v1", "Widget", W::default())).unwrap_err();
        assert!(e.to_string().contains("Widget"), "{e}");
        // A 10-byte varint that never ends, and a length past the end.
        assert!(decode(&[
            b'k', b'8', b's', 0, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x01
        ])
        .is_err());
        assert!(decode(&[b'k', b'8', b's', 0, 0x12, 0x7f, 0x00]).is_err());
        // Deep nesting stops at the bound.
        let mut m = W::default();
        for _ in 0..200 {
            m = W::default().msg(1, m);
        }
        let mut body = MAGIC.to_vec();
        body.extend(
            W::default()
                .msg(1, W::default().str(1, "v1").str(2, "Pod"))
                .bytes(2, &W::default().msg(2, W::default().msg(1, m)).0)
                .0,
        );
        // Unknown field numbers are skipped, so this is either an error or a value, never a panic.
        let _ = decode(&body);
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(90 * 1_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000 + 500_000_000), "1h0m0.5s");
        assert_eq!(go_duration(-2_000_000_000), "-2s");
    }
}
