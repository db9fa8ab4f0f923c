//! `EmbeddedStore`: the store in one redb file (`<root>/state.redb`), for a server
//! without etcd. Tables:
//!
//! - `kv`: key → create revision, mod revision, value;
//! - `history`: revision → the event written at it, with its wall-clock time, so a
//!   watch can replay from a revision even after a restart;
//! - `meta`: the current and the compacted revision.
//!
//! Each write is one redb write transaction, committed durably before the caller or
//! any watcher hears of it. Writes are serialized by one lock, which is also held
//! while a watch reads its replay and registers, so the replay and the live events
//! join without a gap or a duplicate. The history keeps at least the last
//! `KEEP_REVISIONS` revisions and at least `KEEP_FOR` of time.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use super::memory::{check, Expect};
use super::watchers::{self, Watchers};
use super::{
    EventKind, KeyValue, ListPage, Result, Revision, Store, StoreError, WatchEvent, WatchStream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const HISTORY: TableDefinition<i64, &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// How many writes pass between two looks for history to compact.
const COMPACT_EVERY: u32 = 100;

struct Writer {
    watchers: Watchers,
    revision: Revision,
    compacted: Revision,
    since_compaction: u32,
}

struct Inner {
    db: Database,
    path: PathBuf,
    writer: Mutex<Writer>,
}

/// A store in one redb database file; clones share it.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// The database's own cache: hot pages of a small cluster's objects.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

impl EmbeddedStore {
    /// Opens (creating when missing) the database at `path`. Fails, naming the file,
    /// when another process has it open.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        // redb's own page cache is anonymous memory (1 GiB at most by default); the
        // kernel's page cache of the file serves reads past it at no RSS cost.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                    "{shown}: the database is already open in another process"
                )),
                e => StoreError::Internal(format!("{shown}: {e}")),
            })?;
        let fail = |e: &dyn std::fmt::Display| StoreError::Internal(format!("{shown}: {e}"));
        let txn = db.begin_write().map_err(|e| fail(&e))?;
        let (revision, compacted) = {
            txn.open_table(KV).map_err(|e| fail(&e))?;
            txn.open_table(HISTORY).map_err(|e| fail(&e))?;
            let meta = txn.open_table(META).map_err(|e| fail(&e))?;
            let get = |name| -> Result<i64> {
                Ok(meta
                    .get(name)
                    .map_err(|e| fail(&e))?
                    .map_or(0, |v| v.value()))
            };
            (get(META_REVISION)?, get(META_COMPACTED)?)
        };
        txn.commit().map_err(|e| fail(&e))?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                writer: Mutex::new(Writer {
                    watchers: Watchers::default(),
                    revision,
                    compacted,
                    since_compaction: 0,
                }),
            }),
        })
    }

    /// Drops the history up to and including `revision`: watches from before it then
    /// fail with Compacted.
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut w = inner.lock();
            let upto = revision.min(w.revision);
            if upto <= w.compacted {
                return Ok(());
            }
            let txn = inner.db.begin_write().map_err(|e| inner.fail(e))?;
            inner.compact_in(&txn, upto)?;
            txn.commit().map_err(|e| inner.fail(e))?;
            w.compacted = upto;
            Ok(())
        })
        .await
    }
}

/// Runs redb work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Internal(format!("store task: {e}")))?
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Writer> {
        // The writer's fields are updated only after a commit succeeds.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Internal(format!("{}: {e}", self.path.display()))
    }

    fn corrupt(&self, what: &str) -> StoreError {
        StoreError::Internal(format!("{}: corrupt {what}", self.path.display()))
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(KV).map_err(|e| self.fail(e))?;
        let found = table.get(key).map_err(|e| self.fail(e))?;
        found
            .map(|v| decode_kv(key, v.value()).ok_or_else(|| self.corrupt("kv entry")))
            .transpose()
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> Result<ListPage> {
        // One read transaction: the keys and the history are of one moment.
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let meta = txn.open_table(META).map_err(|e| self.fail(e))?;
        let meta_value = |name| -> Result<i64> {
            Ok(meta
                .get(name)
                .map_err(|e| self.fail(e))?
                .map_or(0, |v| v.value()))
        };
        let revision = meta_value(META_REVISION)?;
        let compacted = meta_value(META_COMPACTED)?;
        let table = txn.open_table(KV).map_err(|e| self.fail(e))?;
        let range = table
            .range::<&str>((super::list_start(prefix, start_after), Bound::Unbounded))
            .map_err(|e| self.fail(e))?;
        if let Some(rev) = at.filter(|r| *r < revision) {
            if rev < compacted {
                return Err(StoreError::Compacted {
                    requested: rev,
                    compacted,
                });
            }
            let mut current = Vec::new();
            for entry in range {
                let (k, v) = entry.map_err(|e| self.fail(e))?;
                let key = k.value();
                if !key.starts_with(prefix) {
                    break;
                }
                current.push(decode_kv(key, v.value()).ok_or_else(|| self.corrupt("kv entry"))?);
            }
            let history = txn.open_table(HISTORY).map_err(|e| self.fail(e))?;
            let mut later = Vec::new();
            for entry in history
                .range::<i64>((Bound::Excluded(rev), Bound::Unbounded))
                .map_err(|e| self.fail(e))?
            {
                let (_, v) = entry.map_err(|e| self.fail(e))?;
                later.push(decode_event(v.value()).ok_or_else(|| self.corrupt("history entry"))?);
            }
            return Ok(watchers::page_at(
                current.into_iter(),
                later.into_iter(),
                prefix,
                start_after,
                limit,
                rev,
            ));
        }
        let limit = limit.unwrap_or(usize::MAX);
        let mut items = Vec::new();
        let mut remaining = 0i64;
        for entry in range {
            let (k, v) = entry.map_err(|e| self.fail(e))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if items.len() < limit {
                items.push(decode_kv(key, v.value()).ok_or_else(|| self.corrupt("kv entry"))?);
            } else {
                remaining += 1;
            }
        }
        Ok(ListPage {
            items,
            revision,
            remaining,
        })
    }

    /// One write: `make` sees the key's current value and returns the event to commit.
    fn write(
        &self,
        key: &str,
        expect: Expect,
        make: impl FnOnce(Option<KeyValue>, Revision) -> WatchEvent,
    ) -> Result<KeyValue> {
        let mut w = self.lock();
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        let event = {
            let mut kv = txn.open_table(KV).map_err(|e| self.fail(e))?;
            let current = kv
                .get(key)
                .map_err(|e| self.fail(e))?
                .map(|v| decode_kv(key, v.value()).ok_or_else(|| self.corrupt("kv entry")))
                .transpose()?;
            check(key, current.as_ref(), expect)?;
            let revision = w.revision + 1;
            let event = make(current, revision);
            match event.kind {
                EventKind::Put => {
                    kv.insert(key, encode_kv(&event.kv).as_slice())
                        .map_err(|e| self.fail(e))?;
                }
                EventKind::Delete => {
                    kv.remove(key).map_err(|e| self.fail(e))?;
                }
            }
            let mut history = txn.open_table(HISTORY).map_err(|e| self.fail(e))?;
            history
                .insert(revision, encode_event(now_ms(), &event).as_slice())
                .map_err(|e| self.fail(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.fail(e))?;
            meta.insert(META_REVISION, revision)
                .map_err(|e| self.fail(e))?;
            event
        };
        let revision = event.kv.mod_revision;
        let mut compacted = w.compacted;
        w.since_compaction += 1;
        let look = w.since_compaction >= COMPACT_EVERY;
        if look {
            if let Some(upto) = self.compactable(&txn, revision)? {
                self.compact_in(&txn, upto)?;
                compacted = upto;
            }
        }
        txn.commit().map_err(|e| self.fail(e))?;
        if look {
            w.since_compaction = 0;
        }
        w.revision = revision;
        w.compacted = compacted;
        w.watchers.notify(&event);
        Ok(event.kv)
    }

    fn compactable(&self, txn: &WriteTransaction, current: Revision) -> Result<Option<Revision>> {
        let history = txn.open_table(HISTORY).map_err(|e| self.fail(e))?;
        let now = now_ms();
        let mut entries = Vec::new();
        // Only the oldest entries can qualify; stop at the first that is recent enough.
        for entry in history.iter().map_err(|e| self.fail(e))? {
            let (rev, v) = entry.map_err(|e| self.fail(e))?;
            let at = v
                .value()
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_be_bytes)
                .ok_or_else(|| self.corrupt("history entry"))?;
            let age = Duration::from_millis(now.saturating_sub(at).max(0) as u64);
            if rev.value() > current - watchers::KEEP_REVISIONS || age < watchers::KEEP_FOR {
                break;
            }
            entries.push((rev.value(), age));
        }
        Ok(watchers::compactable(entries.into_iter(), current))
    }

    fn compact_in(&self, txn: &WriteTransaction, upto: Revision) -> Result<()> {
        let mut history = txn.open_table(HISTORY).map_err(|e| self.fail(e))?;
        history
            .retain_in::<i64, _>(..=upto, |_, _| false)
            .map_err(|e| self.fail(e))?;
        let mut meta = txn.open_table(META).map_err(|e| self.fail(e))?;
        meta.insert(META_COMPACTED, upto)
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let mut w = self.lock();
        if after < w.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: w.compacted,
            });
        }
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let history = txn.open_table(HISTORY).map_err(|e| self.fail(e))?;
        let mut replay = Vec::new();
        for entry in history
            .range::<i64>((Bound::Excluded(after), Bound::Unbounded))
            .map_err(|e| self.fail(e))?
        {
            let (_, v) = entry.map_err(|e| self.fail(e))?;
            let event = decode_event(v.value()).ok_or_else(|| self.corrupt("history entry"))?;
            if event.kv.key.starts_with(prefix) {
                replay.push(event);
            }
        }
        Ok(w.watchers.register(prefix, replay))
    }
}

fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_be_bytes());
    out.extend_from_slice(&kv.mod_revision.to_be_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode_kv(key: &str, bytes: &[u8]) -> Option<KeyValue> {
    let mut r = Reader(bytes);
    let create_revision = r.i64()?;
    let mod_revision = r.i64()?;
    Some(KeyValue {
        key: key.to_string(),
        value: r.0.to_vec(),
        create_revision,
        mod_revision,
    })
}

/// time (ms), kind, key, kv, then the previous kv when there is one.
fn encode_event(at_ms: i64, event: &WatchEvent) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&at_ms.to_be_bytes());
    out.push(match event.kind {
        EventKind::Put => 0,
        EventKind::Delete => 1,
    });
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u64).to_be_bytes());
        out.extend_from_slice(b);
    };
    bytes(&mut out, event.kv.key.as_bytes());
    bytes(&mut out, &encode_kv(&event.kv));
    if let Some(prev) = &event.prev {
        bytes(&mut out, &encode_kv(prev));
    }
    out
}

fn decode_event(bytes: &[u8]) -> Option<WatchEvent> {
    let mut r = Reader(bytes);
    r.i64()?;
    let kind = match r.take(1)?[0] {
        0 => EventKind::Put,
        1 => EventKind::Delete,
        _ => return None,
    };
    let key = std::str::from_utf8(r.bytes()?).ok()?;
    let kv = decode_kv(key, r.bytes()?)?;
    let prev = if r.0.is_empty() {
        None
    } else {
        Some(decode_kv(key, r.bytes()?)?)
    };
    Some(WatchEvent { kind, kv, prev })
}

/// Bounds-checked reads of the encodings above.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(u64::from_be_bytes(self.take(8)?.try_into().ok()?)).ok()?;
        self.take(len)
    }
}

impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        let inner = self.inner.clone();
        let key = key.to_string();
        Box::pin(blocking(move || inner.get(&key)))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> BoxFuture<'a, Result<ListPage>> {
        let inner = self.inner.clone();
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        Box::pin(blocking(move || {
            inner.list(&prefix, start_after.as_deref(), limit, at)
        }))
    }

    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<KeyValue>> {
        let inner = self.inner.clone();
        let key = key.to_string();
        Box::pin(blocking(move || {
            inner.write(&key, Expect::Absent, |_, revision| WatchEvent {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: key.clone(),
                    value,
                    create_revision: revision,
                    mod_revision: revision,
                },
                prev: None,
            })
        }))
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: Revision,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        let inner = self.inner.clone();
        let key = key.to_string();
        Box::pin(blocking(move || {
            inner.write(&key, Expect::Exists(Some(expected)), |prev, revision| {
                WatchEvent {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: key.clone(),
                        value,
                        create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                        mod_revision: revision,
                    },
                    prev,
                }
            })
        }))
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        let inner = self.inner.clone();
        let key = key.to_string();
        Box::pin(blocking(move || {
            inner.write(&key, Expect::Exists(expected), |prev, revision| {
                // `check` has made sure the key exists.
                let last = prev.clone().unwrap_or_else(|| KeyValue {
                    key: key.clone(),
                    value: Vec::new(),
                    create_revision: revision,
                    mod_revision: revision,
                });
                WatchEvent {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        mod_revision: revision,
                        ..last
                    },
                    prev,
                }
            })
        }))
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: Revision) -> BoxFuture<'a, Result<WatchStream>> {
        let inner = self.inner.clone();
        let prefix = prefix.to_string();
        Box::pin(blocking(move || inner.watch(&prefix, after)))
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision>> {
        Box::pin(async move { Ok(self.inner.lock().revision) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compactor(store: &EmbeddedStore) -> impl Fn(Revision) -> BoxFuture<'static, ()> {
        let store = store.clone();
        move |rev| {
            let s = store.clone();
            Box::pin(async move { s.compact(rev).await.expect("compact") })
        }
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("state.redb")).expect("open");
        super::super::testsuite::run_all(&store, compactor(&store)).await;
    }

    #[tokio::test]
    async fn survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let store = EmbeddedStore::open(&path).expect("open");
        let a = store.create("/r/a", b"1".to_vec()).await.expect("create");
        let a2 = store
            .update("/r/a", b"2".to_vec(), a.mod_revision)
            .await
            .expect("update");
        let b = store.create("/r/b", b"3".to_vec()).await.expect("create");
        store.delete("/r/b", None).await.expect("delete");
        store.compact(a.mod_revision).await.expect("compact");
        let revision = store.revision().await.expect("revision");
        drop(store);

        let store = EmbeddedStore::open(&path).expect("reopen");
        assert_eq!(store.revision().await.expect("revision"), revision);
        assert_eq!(store.get("/r/a").await.expect("get"), Some(a2.clone()));
        assert_eq!(store.get("/r/b").await.expect("get"), None);
        // The history survives too: a watch replays from before the restart.
        let mut w = store.watch("/r/", a.mod_revision).await.expect("watch");
        let e = w.recv().await.expect("event").expect("ok");
        assert_eq!(e.kv, a2);
        let e = w.recv().await.expect("event").expect("ok");
        assert_eq!(e.kv, b);
        let e = w.recv().await.expect("event").expect("ok");
        assert_eq!(e.kind, EventKind::Delete);
        assert!(matches!(
            store.watch("/r/", 0).await,
            Err(StoreError::Compacted { .. })
        ));
        // New writes continue the revision sequence.
        let c = store.create("/r/c", b"4".to_vec()).await.expect("create");
        assert_eq!(c.mod_revision, revision + 1);
    }

    #[test]
    fn second_open_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let _first = EmbeddedStore::open(&path).expect("open");
        match EmbeddedStore::open(&path) {
            Err(e) => assert!(e.to_string().contains("state.redb"), "{e}"),
            Ok(_) => panic!("the database was opened twice"),
        }
    }

    #[test]
    fn event_encoding_round_trips_and_rejects_truncation() {
        let kv = KeyValue {
            key: "/k".into(),
            value: b"v".to_vec(),
            create_revision: 3,
            mod_revision: 7,
        };
        let event = WatchEvent {
            kind: EventKind::Delete,
            kv: kv.clone(),
            prev: Some(KeyValue {
                mod_revision: 5,
                ..kv
            }),
        };
        let bytes = encode_event(42, &event);
        assert_eq!(decode_event(&bytes), Some(event));
        for cut in 0..bytes.len() - 1 {
            // Every strict prefix is either rejected or decodes without the prev value.
            if let Some(e) = decode_event(&bytes[..cut]) {
                assert!(e.prev.is_none());
            }
        }
    }

    #[tokio::test]
    #[ignore = "a measurement, not a check: cargo test -- --ignored --nocapture"]
    async fn measure_creates_per_second() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("state.redb")).expect("open");
        let n = 500;
        let start = std::time::Instant::now();
        for i in 0..n {
            store
                .create(&format!("/bench/{i}"), vec![0; 512])
                .await
                .expect("create");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "embedded: {n} creates in {secs:.2}s: {:.0}/s",
            n as f64 / secs
        );
    }
}
