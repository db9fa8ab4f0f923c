//! Watch: the store's events of one resource, filtered by the request's selectors and
//! written as a stream of JSON WatchEvents, as kube-apiserver streams them: ADDED,
//! MODIFIED, DELETED, BOOKMARK, and ERROR (410 Gone for a compacted resourceVersion).

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http::{header, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::debug;

use super::codec::{self, Body, Output};
use super::handlers::{partial, ListOptions};
use super::request::Query;
use super::status::ApiError;
use super::storage::{self, api_version};
use super::Api;
use crate::printers;
use crate::registry::Strategy;
use crate::store::{EventKind, StoreError, WatchEvent};

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// kube-apiserver's --min-request-timeout: a watch without timeoutSeconds ends after a
/// random time between this and twice it, so clients spread their re-watches.
const MIN_REQUEST_TIMEOUT: u64 = 1800;

struct Encoder {
    group: &'static str,
    kind: &'static str,
    output: Output,
    include: printers::IncludeObject,
    sent_columns: bool,
}

impl Encoder {
    fn event(&mut self, kind: &str, obj: Value) -> Bytes {
        let object = match self.output {
            Output::Table if kind != "ERROR" && kind != "BOOKMARK" => {
                let rv = obj["metadata"]["resourceVersion"].clone();
                let mut t = printers::table(
                    self.group,
                    self.kind,
                    &[obj],
                    json!({ "resourceVersion": rv }),
                    self.include,
                    Utc::now(),
                );
                // Only the first event carries the column definitions.
                if self.sent_columns {
                    t["columnDefinitions"] = json!([]);
                }
                self.sent_columns = true;
                t
            }
            Output::PartialMetadata if kind != "ERROR" => partial(&obj),
            _ => obj,
        };
        let mut line =
            serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

impl Api {
    pub(super) async fn watch(
        self: &std::sync::Arc<Self>,
        s: &dyn Strategy,
        ns: Option<&str>,
        opts: ListOptions,
        output: Output,
        q: &Query,
    ) -> Result<Response<Body>, ApiError> {
        let info = s.info();
        let prefix = storage::prefix(info, ns);
        let rv = q.get("resourceVersion");
        let send_initial = q.flag("sendInitialEvents");
        let bookmarks = q.flag("allowWatchBookmarks");
        let timeout = match q.int("timeoutSeconds")? {
            Some(t) if t > 0 => Duration::from_secs(t as u64),
            _ => Duration::from_secs(
                MIN_REQUEST_TIMEOUT + rand::random_range(0..MIN_REQUEST_TIMEOUT),
            ),
        };
        let include = match q.get("includeObject") {
            Some("None") => printers::IncludeObject::None,
            Some("Object") => printers::IncludeObject::Object,
            _ => printers::IncludeObject::Metadata,
        };
        let mut enc = Encoder {
            group: info.group,
            kind: info.kind,
            output,
            include,
            sent_columns: false,
        };
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        // Unset or "0": the current state as ADDED events first, then what follows.
        let mut initial = Vec::new();
        let start = match rv {
            Some(v) if v != "0" && !send_initial => v
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
            _ => {
                let all = ListOptions {
                    labels: opts.labels.clone(),
                    fields: opts.fields.clone(),
                    ..Default::default()
                };
                let (items, rev, _, _) = self.list_objects(s, ns, &all).await?;
                initial = items;
                rev
            }
        };
        let stream = match self.store.watch(&prefix, start).await {
            Ok(st) => Some(st),
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => {
                let gone = ApiError::gone(format!(
                    "too old resource version: {requested} ({compacted})"
                ));
                let _ = tx.try_send(enc.event("ERROR", gone.to_status()));
                None
            }
            Err(e) => return Err(ApiError::unavailable(e.to_string())),
        };
        if let Some(mut events) = stream {
            let api = self.clone();
            let group = info.group;
            let plural = info.plural;
            let av = api_version(info);
            let kind = info.kind;
            let mut shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                let Some(s) = api.strategy(group, plural) else {
                    return;
                };
                api.metrics
                    .watches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                struct Open<'a>(&'a std::sync::atomic::AtomicI64);
                impl Drop for Open<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                let _open = Open(&api.metrics.watches);
                for obj in initial {
                    if tx.send(enc.event("ADDED", obj)).await.is_err() {
                        return;
                    }
                }
                let bookmark = |rev: i64, initial_end: bool| {
                    let mut meta = json!({ "resourceVersion": rev.to_string() });
                    if initial_end {
                        meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
                    }
                    json!({ "kind": kind, "apiVersion": av, "metadata": meta })
                };
                if send_initial && bookmarks {
                    let _ = tx.send(enc.event("BOOKMARK", bookmark(start, true))).await;
                }
                let mut last = start;
                let deadline = tokio::time::sleep(timeout);
                tokio::pin!(deadline);
                let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
                ticker.tick().await;
                loop {
                    tokio::select! {
                        ev = events.recv() => {
                            let Some(ev) = ev else { break };
                            let ev = match ev {
                                Ok(ev) => ev,
                                Err(StoreError::Compacted { requested, compacted }) => {
                                    let gone = ApiError::gone(format!("too old resource version: {requested} ({compacted})"));
                                    let _ = tx.send(enc.event("ERROR", gone.to_status())).await;
                                    break;
                                }
                                Err(e) => {
                                    debug!(error = %e, "watch ended by the store");
                                    break;
                                }
                            };
                            last = ev.kv.mod_revision;
                            if let Some((t, obj)) = translate(s, &opts, &ev) {
                                if tx.send(enc.event(t, obj)).await.is_err() {
                                    break;
                                }
                            }
                        }
                        _ = ticker.tick(), if bookmarks => {
                            if tx.send(enc.event("BOOKMARK", bookmark(last, false))).await.is_err() {
                                break;
                            }
                        }
                        _ = &mut deadline => break,
                        _ = shutdown.changed() => break,
                        _ = tx.closed() => break,
                    }
                }
            });
        }
        let content_type = "application/json";
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-cache, private")
            .body(codec::stream_body(rx))
            .expect("static headers are valid"))
    }
}

/// A store event as the watcher sees it through its selectors: an object that starts
/// matching is ADDED, one that stops matching is DELETED.
fn translate(
    s: &dyn Strategy,
    opts: &ListOptions,
    ev: &WatchEvent,
) -> Option<(&'static str, Value)> {
    let info = s.info();
    let decode = |kv| storage::decode(info, kv).ok();
    match ev.kind {
        EventKind::Delete => {
            let obj = decode(&ev.kv)?;
            opts.matches(s, &obj).then_some(("DELETED", obj))
        }
        EventKind::Put => {
            let obj = decode(&ev.kv)?;
            let now = opts.matches(s, &obj);
            let before = ev
                .prev
                .as_ref()
                .and_then(decode)
                .map(|p| opts.matches(s, &p));
            match (before, now) {
                (None | Some(false), true) => Some(("ADDED", obj)),
                (Some(true), true) => Some(("MODIFIED", obj)),
                (Some(true), false) => Some(("DELETED", obj)),
                (_, false) => None,
            }
        }
    }
}
