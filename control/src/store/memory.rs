//! `MemoryStore`: the store in a map, for tests and for a throwaway server. It keeps
//! the same history and compaction rules as the embedded backend.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures_util::future::BoxFuture;

use super::watchers::{self, History, Watchers};
use super::{
    EventKind, KeyValue, ListPage, Result, Revision, Store, StoreError, WatchEvent, WatchStream,
};

struct State {
    kvs: BTreeMap<String, KeyValue>,
    revision: Revision,
    compacted: Revision,
    history: History,
    watchers: Watchers,
}

/// An in-memory store; clones share it.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        MemoryStore {
            state: Arc::new(Mutex::new(State {
                kvs: BTreeMap::new(),
                revision: 0,
                compacted: 0,
                history: History::new(),
                watchers: Watchers::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data: every mutation is
        // a few infallible steps.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the history up to and including `revision`: watches from before it then
    /// fail with Compacted.
    pub fn compact(&self, revision: Revision) {
        let mut st = self.lock();
        let upto = revision.min(st.revision);
        while st
            .history
            .front()
            .is_some_and(|(_, e)| e.kv.mod_revision <= upto)
        {
            st.history.pop_front();
        }
        st.compacted = st.compacted.max(upto);
    }

    fn get_now(&self, key: &str) -> Option<KeyValue> {
        self.lock().kvs.get(key).cloned()
    }

    fn list_now(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> Result<ListPage> {
        let st = self.lock();
        let in_range = st
            .kvs
            .range::<str, _>((super::list_start(prefix, start_after), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv);
        if let Some(rev) = at.filter(|r| *r < st.revision) {
            if rev < st.compacted {
                return Err(StoreError::Compacted {
                    requested: rev,
                    compacted: st.compacted,
                });
            }
            let current = in_range.cloned();
            let later = st
                .history
                .iter()
                .map(|(_, e)| e)
                .filter(|e| e.kv.mod_revision > rev)
                .cloned();
            return Ok(watchers::page_at(
                current,
                later,
                prefix,
                start_after,
                limit,
                rev,
            ));
        }
        let mut matching = in_range;
        let limit = limit.unwrap_or(usize::MAX);
        let items: Vec<KeyValue> = matching.by_ref().take(limit).cloned().collect();
        let remaining = matching.count() as i64;
        Ok(ListPage {
            items,
            revision: st.revision,
            remaining,
        })
    }

    fn commit(st: &mut State, event: WatchEvent) {
        st.revision = event.kv.mod_revision;
        match event.kind {
            EventKind::Put => {
                st.kvs.insert(event.kv.key.clone(), event.kv.clone());
            }
            EventKind::Delete => {
                st.kvs.remove(&event.kv.key);
            }
        }
        st.watchers.notify(&event);
        st.history.push_back((Instant::now(), event));
        let now = Instant::now();
        if let Some(upto) = watchers::compactable(
            st.history
                .iter()
                .map(|(at, e)| (e.kv.mod_revision, now.saturating_duration_since(*at))),
            st.revision,
        ) {
            while st
                .history
                .front()
                .is_some_and(|(_, e)| e.kv.mod_revision <= upto)
            {
                st.history.pop_front();
            }
            st.compacted = st.compacted.max(upto);
        }
    }

    fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<KeyValue> {
        let mut st = self.lock();
        let prev = st.kvs.get(key).cloned();
        check(key, prev.as_ref(), expect)?;
        let revision = st.revision + 1;
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
        };
        Self::commit(
            &mut st,
            WatchEvent {
                kind: EventKind::Put,
                kv: kv.clone(),
                prev,
            },
        );
        Ok(kv)
    }

    fn delete_now(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let mut st = self.lock();
        let prev = st.kvs.get(key).cloned();
        check(key, prev.as_ref(), Expect::Exists(expected))?;
        let prev = prev.ok_or_else(|| StoreError::NotFound {
            key: key.to_string(),
        })?;
        let kv = KeyValue {
            mod_revision: st.revision + 1,
            ..prev.clone()
        };
        Self::commit(
            &mut st,
            WatchEvent {
                kind: EventKind::Delete,
                kv: kv.clone(),
                prev: Some(prev),
            },
        );
        Ok(kv)
    }

    fn watch_now(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let mut st = self.lock();
        if after < st.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: st.compacted,
            });
        }
        let replay = watchers::replay(st.history.iter().map(|(_, e)| e), prefix, after);
        Ok(st.watchers.register(prefix, replay))
    }
}

/// What a write requires of the key's current state.
#[derive(Clone, Copy)]
pub(crate) enum Expect {
    Absent,
    /// Present, with this mod revision when given.
    Exists(Option<Revision>),
}

pub(crate) fn check(key: &str, current: Option<&KeyValue>, expect: Expect) -> Result<()> {
    match (expect, current) {
        (Expect::Absent, None) => Ok(()),
        (Expect::Absent, Some(_)) => Err(StoreError::AlreadyExists {
            key: key.to_string(),
        }),
        (Expect::Exists(_), None) => Err(StoreError::NotFound {
            key: key.to_string(),
        }),
        (Expect::Exists(Some(rev)), Some(kv)) if kv.mod_revision != rev => {
            Err(StoreError::Conflict {
                key: key.to_string(),
                current: kv.mod_revision,
            })
        }
        (Expect::Exists(_), Some(_)) => Ok(()),
    }
}

impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(async move { Ok(self.get_now(key)) })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> BoxFuture<'a, Result<ListPage>> {
        Box::pin(async move { self.list_now(prefix, start_after, limit, at) })
    }

    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(async move { self.put(key, value, Expect::Absent) })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: Revision,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(async move { self.put(key, value, Expect::Exists(Some(expected))) })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(async move { self.delete_now(key, expected) })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: Revision) -> BoxFuture<'a, Result<WatchStream>> {
        Box::pin(async move { self.watch_now(prefix, after) })
    }

    fn revision(&self) -> BoxFuture<'_, Result<Revision>> {
        Box::pin(async move { Ok(self.lock().revision) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let store = MemoryStore::new();
        let compactor = store.clone();
        super::super::testsuite::run_all(&store, move |rev| {
            let c = compactor.clone();
            Box::pin(async move { c.compact(rev) })
        })
        .await;
    }

    #[tokio::test]
    async fn slow_watcher_is_ended_without_blocking_writers() {
        let store = MemoryStore::new();
        let mut w = store.watch("/k/", 0).await.expect("watch");
        let total = watchers::LIVE_BUFFER + 10;
        for i in 0..total {
            store
                .create(&format!("/k/{i:05}"), vec![1])
                .await
                .expect("create");
        }
        let mut events = 0;
        loop {
            match w.recv().await {
                Some(Ok(_)) => events += 1,
                Some(Err(StoreError::Unavailable(msg))) => {
                    assert!(msg.contains("too slow"), "{msg}");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(events < total);
        assert!(w.recv().await.is_none());
    }
}
