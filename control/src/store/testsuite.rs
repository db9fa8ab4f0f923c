//! One conformance suite every `Store` backend must pass: the memory and embedded
//! backends run it in unit tests, the etcd backend against a real etcd in
//! `control/tests/store_etcd.rs`. Each check works under its own key prefix, so the
//! suite can run on a store that already holds data. Failures panic, as in tests.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{EventKind, ListPage, Revision, Store, StoreError, WatchEvent, WatchStream};

/// How long a watch may take to deliver an event before the check fails (a hang guard,
/// not a timing assertion).
const EVENT_WAIT: Duration = Duration::from_secs(20);

/// Runs every check. `compact(rev)` must drop the backend's history up to `rev`.
pub async fn run_all<F>(store: &dyn Store, compact: F)
where
    F: Fn(Revision) -> BoxFuture<'static, ()>,
{
    create_get_list(store).await;
    update_and_delete(store).await;
    revisions_increase(store).await;
    watch_replay_then_live(store).await;
    watch_prefix_isolation(store).await;
    watch_opened_during_writes(store).await;
    list_at_revisions(store, &compact).await;
    watch_compacted(store, compact).await;
}

fn value(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_WAIT, stream.recv()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch ended with an error: {e}"),
        Ok(None) => panic!("watch closed"),
        Err(_) => panic!("no watch event within {EVENT_WAIT:?}"),
    }
}

/// Create, get, list in key order, paging with `start_after` and `limit`, AlreadyExists.
pub async fn create_get_list(store: &dyn Store) {
    let p = "/suite/list/";
    // Created out of order: the list must come back sorted.
    for name in ["b", "c", "a"] {
        let key = format!("{p}{name}");
        let kv = store.create(&key, value(name)).await.expect("create");
        assert_eq!(kv.key, key);
        assert_eq!(kv.value, value(name));
        assert_eq!(kv.create_revision, kv.mod_revision);
    }
    // A key that shares the prefix's characters but not the prefix.
    store
        .create("/suite/listx", value("x"))
        .await
        .expect("create");

    let got = store.get(&format!("{p}a")).await.expect("get");
    assert_eq!(got.map(|kv| kv.value), Some(value("a")));
    assert_eq!(store.get(&format!("{p}zz")).await.expect("get"), None);

    let all = store.list(p, None, None, None).await.expect("list");
    let keys: Vec<&str> = all.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, [format!("{p}a"), format!("{p}b"), format!("{p}c")]);
    assert_eq!(all.remaining, 0);
    assert_eq!(all.revision, store.revision().await.expect("revision"));

    let first = store
        .list(p, None, Some(2), None)
        .await
        .expect("list page 1");
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.remaining, 1);
    let last = first
        .items
        .last()
        .map(|kv| kv.key.clone())
        .unwrap_or_default();
    assert_eq!(last, format!("{p}b"));
    let second = store
        .list(p, Some(&last), Some(2), None)
        .await
        .expect("list page 2");
    let keys: Vec<&str> = second.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, [format!("{p}c")]);
    assert_eq!(second.remaining, 0);

    // The empty prefix is the whole key space.
    let everything = store.list("", None, Some(1), None).await.expect("list all");
    assert_eq!(everything.items.len(), 1);
    assert!(everything.remaining >= 3);

    let empty = store
        .list("/suite/none/", None, None, None)
        .await
        .expect("list");
    assert!(empty.items.is_empty());
    assert_eq!(empty.remaining, 0);

    match store.create(&format!("{p}a"), value("again")).await {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, format!("{p}a")),
        other => panic!("create of an existing key: {other:?}"),
    }
    let got = store.get(&format!("{p}a")).await.expect("get");
    assert_eq!(got.map(|kv| kv.value), Some(value("a")));
}

/// Update with the current and a stale revision, update and delete of a missing key,
/// delete's answer.
pub async fn update_and_delete(store: &dyn Store) {
    let key = "/suite/update/k";
    let v1 = store.create(key, value("1")).await.expect("create");
    let v2 = store
        .update(key, value("2"), v1.mod_revision)
        .await
        .expect("update");
    assert!(v2.mod_revision > v1.mod_revision);
    assert_eq!(v2.create_revision, v1.create_revision);
    assert_eq!(v2.value, value("2"));

    match store.update(key, value("3"), v1.mod_revision).await {
        Err(StoreError::Conflict { key: k, current }) => {
            assert_eq!(k, key);
            assert_eq!(current, v2.mod_revision);
        }
        other => panic!("update with a stale revision: {other:?}"),
    }
    match store.delete(key, Some(v1.mod_revision)).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(current, v2.mod_revision),
        other => panic!("delete with a stale revision: {other:?}"),
    }
    match store.update("/suite/update/missing", value("x"), 1).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "/suite/update/missing"),
        other => panic!("update of a missing key: {other:?}"),
    }
    match store.delete("/suite/update/missing", None).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("delete of a missing key: {other:?}"),
    }

    let deleted = store
        .delete(key, Some(v2.mod_revision))
        .await
        .expect("delete");
    assert_eq!(deleted.key, key);
    assert_eq!(deleted.value, value("2"));
    assert_eq!(deleted.create_revision, v1.create_revision);
    assert!(deleted.mod_revision > v2.mod_revision);
    assert_eq!(
        store.revision().await.expect("revision"),
        deleted.mod_revision
    );
    assert_eq!(store.get(key).await.expect("get"), None);

    // Unconditional delete.
    store.create(key, value("again")).await.expect("recreate");
    let gone = store.delete(key, None).await.expect("delete");
    assert_eq!(gone.value, value("again"));
}

/// Every successful write gets a revision above all earlier ones, and the store's
/// revision follows it.
pub async fn revisions_increase(store: &dyn Store) {
    let mut last = store.revision().await.expect("revision");
    for i in 0..5 {
        let key = format!("/suite/rev/{i}");
        let kv = store.create(&key, value("v")).await.expect("create");
        assert!(kv.mod_revision > last, "{} after {last}", kv.mod_revision);
        last = kv.mod_revision;
        let kv = store.update(&key, value("w"), last).await.expect("update");
        assert!(kv.mod_revision > last);
        last = kv.mod_revision;
        assert_eq!(store.revision().await.expect("revision"), last);
    }
    // A failed write does not move the revision.
    let _ = store.create("/suite/rev/0", value("dup")).await;
    assert_eq!(store.revision().await.expect("revision"), last);
}

/// A watch from an old revision replays what happened since, in order, then follows
/// live writes.
pub async fn watch_replay_then_live(store: &dyn Store) {
    let p = "/suite/watch/";
    let start = store.revision().await.expect("revision");
    let a = store
        .create(&format!("{p}a"), value("a1"))
        .await
        .expect("create");
    let a2 = store
        .update(&format!("{p}a"), value("a2"), a.mod_revision)
        .await
        .expect("update");
    let b = store
        .create(&format!("{p}b"), value("b1"))
        .await
        .expect("create");
    let gone = store.delete(&format!("{p}a"), None).await.expect("delete");

    let mut w = store.watch(p, start).await.expect("watch");
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, &e.kv), (EventKind::Put, &a));
    assert_eq!(e.prev, None);
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, &e.kv), (EventKind::Put, &a2));
    assert_eq!(e.prev.as_ref(), Some(&a));
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, &e.kv), (EventKind::Put, &b));
    let e = next_event(&mut w).await;
    assert_eq!(e.kind, EventKind::Delete);
    assert_eq!(e.kv.key, format!("{p}a"));
    assert_eq!(e.kv.mod_revision, gone.mod_revision);
    assert_eq!(e.kv.value, value("a2"));
    assert_eq!(e.prev.as_ref(), Some(&a2));

    // Live events, in order.
    let mut expected = Vec::new();
    for i in 0..20 {
        let kv = store
            .create(&format!("{p}live{i:02}"), value("x"))
            .await
            .expect("create");
        expected.push(kv);
    }
    for kv in &expected {
        let e = next_event(&mut w).await;
        assert_eq!(e.kind, EventKind::Put);
        assert_eq!(&e.kv, kv);
    }

    // A watch from the middle replays only what came after.
    let mut w = store.watch(p, a2.mod_revision).await.expect("watch");
    assert_eq!(next_event(&mut w).await.kv, b);
}

/// A watch sees only keys under its prefix.
pub async fn watch_prefix_isolation(store: &dyn Store) {
    let start = store.revision().await.expect("revision");
    let mut w = store.watch("/suite/iso/a/", start).await.expect("watch");
    store
        .create("/suite/iso/b/x", value("b"))
        .await
        .expect("create");
    store
        .create("/suite/iso/a", value("no slash"))
        .await
        .expect("create");
    store
        .create("/suite/iso/ab/x", value("ab"))
        .await
        .expect("create");
    let mine = store
        .create("/suite/iso/a/x", value("a"))
        .await
        .expect("create");
    // The first event must be the only write under the prefix.
    let e = next_event(&mut w).await;
    assert_eq!(e.kv, mine);
}

/// A watch from before the compacted revision fails with Compacted; from the
/// compacted revision on, it works.
/// A list at a past revision shows the keys as they were then, page by page, until
/// that revision is compacted.
pub async fn list_at_revisions<F>(store: &dyn Store, compact: &F)
where
    F: Fn(Revision) -> BoxFuture<'static, ()>,
{
    let p = "/suite/listat/";
    store
        .create(&format!("{p}a"), value("a1"))
        .await
        .expect("create");
    let b = store
        .create(&format!("{p}b"), value("b1"))
        .await
        .expect("create");
    let then = b.mod_revision;
    let a = store.get(&format!("{p}a")).await.expect("get").expect("a");
    store
        .update(&format!("{p}a"), value("a2"), a.mod_revision)
        .await
        .expect("update");
    store.delete(&format!("{p}b"), None).await.expect("delete");
    store
        .create(&format!("{p}0"), value("01"))
        .await
        .expect("create");
    store
        .create(&format!("{p}c"), value("c1"))
        .await
        .expect("create");

    let kv = |page: &ListPage| -> Vec<(String, String)> {
        page.items
            .iter()
            .map(|kv| {
                (
                    kv.key.trim_start_matches(p).to_string(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect()
    };
    let old = store
        .list(p, None, None, Some(then))
        .await
        .expect("list at");
    assert_eq!(
        kv(&old),
        [("a".into(), "a1".into()), ("b".into(), "b1".into())]
    );
    assert_eq!(old.revision, then);
    let first = store
        .list(p, None, Some(1), Some(then))
        .await
        .expect("page 1");
    assert_eq!(kv(&first), [("a".into(), "a1".into())]);
    assert_eq!(first.remaining, 1);
    let key = first.items[0].key.clone();
    let second = store
        .list(p, Some(&key), Some(1), Some(then))
        .await
        .expect("page 2");
    assert_eq!(kv(&second), [("b".into(), "b1".into())]);
    assert_eq!(second.remaining, 0);
    let now = store.list(p, None, None, None).await.expect("list");
    assert_eq!(
        kv(&now),
        [
            ("0".into(), "01".into()),
            ("a".into(), "a2".into()),
            ("c".into(), "c1".into())
        ]
    );
    // At the current revision, a list at it is the list now.
    let at_now = store
        .list(p, None, None, Some(now.revision))
        .await
        .expect("list at now");
    assert_eq!(kv(&at_now), kv(&now));

    compact(now.revision).await;
    match store.list(p, None, None, Some(then)).await {
        Err(StoreError::Compacted { requested, .. }) => assert_eq!(requested, then),
        other => panic!("a list below the compaction: {other:?}"),
    }
}

pub async fn watch_compacted<F>(store: &dyn Store, compact: F)
where
    F: Fn(Revision) -> BoxFuture<'static, ()>,
{
    let p = "/suite/compact/";
    let first = store
        .create(&format!("{p}a"), value("1"))
        .await
        .expect("create");
    let second = store
        .update(&format!("{p}a"), value("2"), first.mod_revision)
        .await
        .expect("update");
    let third = store
        .update(&format!("{p}a"), value("3"), second.mod_revision)
        .await
        .expect("update");
    compact(second.mod_revision).await;

    // etcd keeps the compacted revision itself (a watch may start at it), the local
    // backends drop it: a watch from before `first` is compacted for both.
    let before = first.mod_revision - 1;
    match store.watch(p, before).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!(requested, before);
            assert!(compacted >= second.mod_revision);
        }
        Err(e) => panic!("watch from a compacted revision: {e}"),
        Ok(mut w) => {
            // etcd reports compaction on the stream rather than on the call.
            match tokio::time::timeout(EVENT_WAIT, w.recv()).await {
                Ok(Some(Err(StoreError::Compacted { .. }))) => {}
                other => panic!("watch from a compacted revision: {other:?}"),
            }
        }
    }
    let mut w = store.watch(p, second.mod_revision).await.expect("watch");
    assert_eq!(next_event(&mut w).await.kv, third);
    // The data itself is untouched by compaction.
    let got = store.get(&format!("{p}a")).await.expect("get");
    assert_eq!(got, Some(third));
}

/// A watch opened while writes are under way sees each of them exactly once, in
/// order: no gap and no duplicate where its replay meets the live events.
pub async fn watch_opened_during_writes(store: &dyn Store) {
    let p = "/suite/race/";
    let start = store.revision().await.expect("revision");
    let n = 60;
    let writes = async {
        let mut revisions = Vec::new();
        for i in 0..n {
            let kv = store
                .create(&format!("{p}{i:03}"), value("v"))
                .await
                .expect("create");
            revisions.push(kv.mod_revision);
        }
        revisions
    };
    let open = async {
        // Let a few writes land first, so the watch needs both a replay and live events.
        loop {
            let page = store.list(p, None, None, None).await.expect("list");
            if page.items.len() >= 5 {
                break;
            }
            tokio::task::yield_now().await;
        }
        store.watch(p, start).await.expect("watch")
    };
    let (revisions, mut w) = tokio::join!(writes, open);
    let mut seen = Vec::new();
    while seen.len() < revisions.len() {
        seen.push(next_event(&mut w).await.kv.mod_revision);
    }
    assert_eq!(seen, revisions);
    // Nothing more: a write after the last one is the very next event.
    let marker = store
        .create(&format!("{p}zzz"), value("m"))
        .await
        .expect("create");
    assert_eq!(next_event(&mut w).await.kv, marker);
}
