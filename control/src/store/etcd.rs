//! `EtcdStore`: the store on an etcd v3 cluster, spoken to over gRPC with clients
//! generated from the subset of etcd's API in control/proto/. Conditional writes are
//! etcd transactions on the key's create and mod revisions, so etcd's revision is the
//! store's revision and `resourceVersion`s mean what they mean to kube-apiserver.
//!
//! Several endpoints may be given: a call that finds its member unreachable is tried
//! on the next one, so the server keeps working while a member is down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use super::{
    EventKind, KeyValue, ListPage, Result, Revision, Store, StoreError, WatchEvent, WatchStream,
};

/// Generated from control/proto/.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::kv_client::KvClient;
use pb::watch_client::WatchClient;
use proto::etcdserverpb as pb;
use proto::mvccpb;

/// The largest gRPC message accepted from etcd (a big list).
const MAX_MESSAGE: usize = 256 << 20;
/// Room for events a watcher has not read yet; past it the watch ends with an error.
const WATCH_BUFFER: usize = 1024;

/// How long one request may wait for a member's answer before the next member is asked.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A store on etcd; clones share the connections.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<(String, Channel)>,
    /// The endpoint that answered last: calls start there.
    current: AtomicUsize,
}

fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// The end of the key range holding every key with `prefix`: the prefix with its last
/// byte incremented (trailing 0xff bytes dropped), or "\0" (no end) for an all-0xff one.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The first key of the range holding every key with `prefix`: etcd rejects an empty
/// key, and "\0" with an end of "\0" means the whole key space.
fn prefix_start(prefix: &str) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    }
}

fn string_key(key: Vec<u8>) -> Result<String> {
    String::from_utf8(key).map_err(|e| StoreError::Internal(format!("etcd key is not UTF-8: {e}")))
}

fn from_pb(kv: mvccpb::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: string_key(kv.key)?,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
    })
}

fn status_error(endpoint: &str, status: &tonic::Status) -> StoreError {
    let what = format!("etcd {endpoint}: {}", status.message());
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            StoreError::Unavailable(what)
        }
        _ => StoreError::Internal(what),
    }
}

fn compare(
    key: &[u8],
    result: CompareResult,
    target: CompareTarget,
    value: TargetUnion,
) -> pb::Compare {
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: key.to_vec(),
        target_union: Some(value),
        range_end: Vec::new(),
    }
}

/// The key exists: its create revision is above 0.
fn exists(key: &[u8]) -> pb::Compare {
    compare(
        key,
        CompareResult::Greater,
        CompareTarget::Create,
        TargetUnion::CreateRevision(0),
    )
}

fn header_revision(header: Option<pb::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision)
        .ok_or_else(|| StoreError::Internal("etcd answer without a header".to_string()))
}

impl EtcdStore {
    /// Connects to the etcd members at `endpoints` (`http://host:port`, or `host:port`),
    /// checking that at least one answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable(
                "no etcd endpoints given".to_string(),
            ));
        }
        let mut channels = Vec::new();
        for e in endpoints {
            let url = endpoint_url(e);
            let channel = Endpoint::from_shared(url.clone())
                .map_err(|err| StoreError::Unavailable(format!("etcd endpoint {e:?}: {err}")))?
                .connect_timeout(Duration::from_secs(3))
                .tcp_keepalive(Some(Duration::from_secs(30)))
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                .connect_lazy();
            channels.push((url, channel));
        }
        let store = EtcdStore {
            inner: Arc::new(Inner {
                endpoints: channels,
                current: AtomicUsize::new(0),
            }),
        };
        store.current_revision().await?;
        Ok(store)
    }

    /// Runs `call` on the current endpoint, moving on to the next ones while they are
    /// unreachable.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let n = self.inner.endpoints.len();
        let first = self.inner.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let index = (first + i) % n;
            let (url, channel) = &self.inner.endpoints[index];
            // A member that has lost its quorum may hold a request without answering:
            // give up on it after a while and ask the next one.
            match tokio::time::timeout(REQUEST_TIMEOUT, call(channel.clone())).await {
                Ok(Ok(v)) => {
                    self.inner.current.store(index, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(status)) => {
                    let err = status_error(url, &status);
                    if !matches!(err, StoreError::Unavailable(_)) {
                        return Err(err);
                    }
                    tracing::warn!(endpoint = %url, error = %status.message(), "etcd member unavailable");
                    last = Some(err);
                }
                Err(_) => {
                    tracing::warn!(endpoint = %url, "etcd member did not answer within {REQUEST_TIMEOUT:?}");
                    last = Some(StoreError::Unavailable(format!(
                        "etcd {url}: no answer within {REQUEST_TIMEOUT:?}"
                    )));
                }
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Unavailable("no etcd endpoint".to_string())))
    }

    fn kv(channel: Channel) -> KvClient<Channel> {
        KvClient::new(channel).max_decoding_message_size(MAX_MESSAGE)
    }

    async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse> {
        self.call(|ch| {
            let req = req.clone();
            async move { Self::kv(ch).range(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse> {
        self.call(|ch| {
            let req = req.clone();
            async move { Self::kv(ch).txn(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    async fn current_revision(&self) -> Result<Revision> {
        let resp = self
            .range(pb::RangeRequest {
                key: vec![0],
                count_only: true,
                ..Default::default()
            })
            .await?;
        header_revision(resp.header)
    }

    async fn get_now(&self, key: &str) -> Result<Option<KeyValue>> {
        let resp = self
            .range(pb::RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await?;
        resp.kvs.into_iter().next().map(from_pb).transpose()
    }

    /// Why a conditional write on `key` failed: NotFound or Conflict.
    async fn failure(&self, key: &str) -> StoreError {
        match self.get_now(key).await {
            Ok(None) => StoreError::NotFound {
                key: key.to_string(),
            },
            Ok(Some(kv)) => StoreError::Conflict {
                key: key.to_string(),
                current: kv.mod_revision,
            },
            Err(e) => e,
        }
    }

    async fn list_now(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> Result<ListPage> {
        let start = match start_after {
            Some(after) if after >= prefix => {
                let mut k = after.as_bytes().to_vec();
                k.push(0);
                k
            }
            _ => prefix_start(prefix),
        };
        let resp = self
            .range(pb::RangeRequest {
                key: start,
                range_end: prefix_end(prefix.as_bytes()),
                limit: limit.map_or(0, |l| i64::try_from(l).unwrap_or(i64::MAX)),
                revision: at.unwrap_or(0),
                ..Default::default()
            })
            .await
            .map_err(|e| match (e, at) {
                // etcd's words for a read below its compaction.
                (StoreError::Internal(m), Some(requested)) if m.contains("compacted") => {
                    StoreError::Compacted {
                        requested,
                        compacted: 0,
                    }
                }
                (e, _) => e,
            })?;
        let revision = match at {
            Some(rev) => rev,
            None => header_revision(resp.header)?,
        };
        let items = resp
            .kvs
            .into_iter()
            .map(from_pb)
            .collect::<Result<Vec<_>>>()?;
        Ok(ListPage {
            remaining: (resp.count - items.len() as i64).max(0),
            items,
            revision,
        })
    }

    async fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        conditions: Vec<pb::Compare>,
    ) -> Result<Option<KeyValue>> {
        let put = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.clone(),
                prev_kv: true,
                ..Default::default()
            })),
        };
        let resp = self
            .txn(pb::TxnRequest {
                compare: conditions,
                success: vec![put],
                failure: Vec::new(),
            })
            .await?;
        if !resp.succeeded {
            return Ok(None);
        }
        let revision = header_revision(resp.header)?;
        let prev_create = resp.responses.into_iter().find_map(|r| match r.response {
            Some(pb::response_op::Response::ResponsePut(p)) => {
                p.prev_kv.map(|kv| kv.create_revision)
            }
            _ => None,
        });
        Ok(Some(KeyValue {
            key: key.to_string(),
            value,
            create_revision: prev_create.unwrap_or(revision),
            mod_revision: revision,
        }))
    }

    async fn create_now(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        let absent = compare(
            key.as_bytes(),
            CompareResult::Equal,
            CompareTarget::Create,
            TargetUnion::CreateRevision(0),
        );
        self.put_if(key, value, vec![absent])
            .await?
            .ok_or_else(|| StoreError::AlreadyExists {
                key: key.to_string(),
            })
    }

    async fn update_now(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        let conditions = vec![
            exists(key.as_bytes()),
            compare(
                key.as_bytes(),
                CompareResult::Equal,
                CompareTarget::Mod,
                TargetUnion::ModRevision(expected),
            ),
        ];
        match self.put_if(key, value, conditions).await? {
            Some(kv) => Ok(kv),
            None => Err(self.failure(key).await),
        }
    }

    async fn delete_now(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let mut conditions = vec![exists(key.as_bytes())];
        if let Some(rev) = expected {
            conditions.push(compare(
                key.as_bytes(),
                CompareResult::Equal,
                CompareTarget::Mod,
                TargetUnion::ModRevision(rev),
            ));
        }
        let delete = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestDeleteRange(
                pb::DeleteRangeRequest {
                    key: key.as_bytes().to_vec(),
                    range_end: Vec::new(),
                    prev_kv: true,
                },
            )),
        };
        let resp = self
            .txn(pb::TxnRequest {
                compare: conditions,
                success: vec![delete],
                failure: Vec::new(),
            })
            .await?;
        if !resp.succeeded {
            return Err(self.failure(key).await);
        }
        let revision = header_revision(resp.header)?;
        let prev = resp
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(pb::response_op::Response::ResponseDeleteRange(d)) => {
                    d.prev_kvs.into_iter().next()
                }
                _ => None,
            })
            .ok_or_else(|| StoreError::Internal(format!("{key}: etcd deleted nothing")))?;
        Ok(KeyValue {
            mod_revision: revision,
            ..from_pb(prev)?
        })
    }

    /// Compacts etcd's history up to `revision` (what kube-apiserver does every 5
    /// minutes): watches from before it then fail with Compacted.
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        self.call(|ch| async move {
            Self::kv(ch)
                .compact(pb::CompactionRequest {
                    revision,
                    physical: true,
                })
                .await
                .map(|_| ())
        })
        .await
    }

    async fn watch_now(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: prefix_start(prefix),
                    range_end: prefix_end(prefix.as_bytes()),
                    start_revision: after + 1,
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        };
        // The request stream stays open for the life of the watch: closing it would
        // end the watch on etcd's side.
        let (req_tx, responses) = self
            .call(|ch| {
                let create = create.clone();
                async move {
                    let (req_tx, req_rx) = mpsc::channel(1);
                    let _ = req_tx.send(create).await;
                    let resp = WatchClient::new(ch)
                        .max_decoding_message_size(MAX_MESSAGE)
                        .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
                        .await?;
                    Ok((req_tx, resp.into_inner()))
                }
            })
            .await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(forward_watch(responses, req_tx, tx, after));
        Ok(rx)
    }
}

/// Turns etcd's watch responses into store events until the watch ends or its reader
/// goes away.
async fn forward_watch(
    mut responses: tonic::Streaming<pb::WatchResponse>,
    _requests: mpsc::Sender<pb::WatchRequest>,
    tx: mpsc::Sender<Result<WatchEvent>>,
    after: Revision,
) {
    loop {
        let resp = tokio::select! {
            _ = tx.closed() => return,
            r = responses.message() => r,
        };
        let resp = match resp {
            Ok(Some(r)) => r,
            Ok(None) => {
                let _ = tx.try_send(Err(StoreError::Unavailable(
                    "etcd closed the watch".to_string(),
                )));
                return;
            }
            Err(status) => {
                let _ = tx.try_send(Err(StoreError::Unavailable(format!(
                    "etcd watch: {}",
                    status.message()
                ))));
                return;
            }
        };
        if resp.compact_revision > 0 {
            let _ = tx.try_send(Err(StoreError::Compacted {
                requested: after,
                compacted: resp.compact_revision,
            }));
            return;
        }
        if resp.canceled {
            let _ = tx.try_send(Err(StoreError::Unavailable(format!(
                "etcd canceled the watch: {}",
                resp.cancel_reason
            ))));
            return;
        }
        for event in resp.events {
            let item = convert_event(event);
            let failed = item.is_err();
            // The last free slot is kept for the error that ends a slow watch.
            if tx.capacity() <= 1 {
                let _ = tx.try_send(Err(StoreError::Unavailable("watcher too slow".to_string())));
                return;
            }
            if tx.try_send(item).is_err() || failed {
                return;
            }
        }
    }
}

fn convert_event(event: mvccpb::Event) -> Result<WatchEvent> {
    let kv = event
        .kv
        .ok_or_else(|| StoreError::Internal("etcd event without a key".to_string()))?;
    let prev = event.prev_kv.map(from_pb).transpose()?;
    if event.r#type == mvccpb::event::EventType::Delete as i32 {
        let revision = kv.mod_revision;
        // etcd sends the deleted key without its value; the last value is in prev_kv.
        let last = match &prev {
            Some(p) => p.clone(),
            None => from_pb(kv)?,
        };
        Ok(WatchEvent {
            kind: EventKind::Delete,
            kv: KeyValue {
                mod_revision: revision,
                ..last
            },
            prev,
        })
    } else {
        Ok(WatchEvent {
            kind: EventKind::Put,
            kv: from_pb(kv)?,
            prev,
        })
    }
}

impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(self.get_now(key))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> BoxFuture<'a, Result<ListPage>> {
        Box::pin(self.list_now(prefix, start_after, limit, at))
    }

    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(self.create_now(key, value))
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: Revision,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(self.update_now(key, value, expected))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(self.delete_now(key, expected))
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: Revision) -> BoxFuture<'a, Result<WatchStream>> {
        Box::pin(self.watch_now(prefix, after))
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision>> {
        Box::pin(self.current_revision())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/registry/pods/"), b"/registry/pods0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        // The whole key space.
        assert_eq!((prefix_start(""), prefix_end(b"")), (vec![0], vec![0]));
    }

    #[test]
    fn endpoints_without_a_scheme_are_http() {
        assert_eq!(endpoint_url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(endpoint_url("https://e:2379"), "https://e:2379");
    }

    #[test]
    fn a_delete_event_carries_the_last_value() {
        let event = mvccpb::Event {
            r#type: mvccpb::event::EventType::Delete as i32,
            kv: Some(mvccpb::KeyValue {
                key: b"/k".to_vec(),
                mod_revision: 9,
                ..Default::default()
            }),
            prev_kv: Some(mvccpb::KeyValue {
                key: b"/k".to_vec(),
                value: b"v".to_vec(),
                create_revision: 2,
                mod_revision: 5,
                ..Default::default()
            }),
        };
        let e = convert_event(event).expect("convert");
        assert_eq!(e.kind, EventKind::Delete);
        assert_eq!(e.kv.value, b"v".to_vec());
        assert_eq!((e.kv.create_revision, e.kv.mod_revision), (2, 9));
        assert_eq!(e.prev.map(|p| p.mod_revision), Some(5));
    }
}
