//! Fan-out of committed events to the watches of one store, shared by the memory and
//! embedded backends. Writers call `notify` while they still hold the lock that orders
//! their writes, and `register` runs under the same lock, so a watch's replay and its
//! live events meet without a gap or a duplicate.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{KeyValue, ListPage, Result, Revision, StoreError, WatchEvent, WatchStream};

/// Room for live events beyond the replay: a watcher that falls this far behind is
/// ended with an error rather than holding memory or blocking writers.
pub(crate) const LIVE_BUFFER: usize = 1024;

/// The history kept for watch replay: at least this many revisions…
pub(crate) const KEEP_REVISIONS: i64 = 1000;
/// …and at least this much time (kube-apiserver compacts etcd every 5 minutes).
pub(crate) const KEEP_FOR: Duration = Duration::from_secs(5 * 60);

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<Result<WatchEvent>>,
}

/// The open watches of a store.
#[derive(Default)]
pub(crate) struct Watchers {
    list: Vec<Watcher>,
}

impl Watchers {
    /// Opens a watch on `prefix` that first yields `replay` (already filtered and in
    /// revision order), then what `notify` is given.
    pub(crate) fn register(&mut self, prefix: &str, replay: Vec<WatchEvent>) -> WatchStream {
        let (tx, rx) = mpsc::channel(replay.len() + LIVE_BUFFER);
        for event in replay {
            // Cannot fail: the channel has room for the whole replay and rx is held here.
            let _ = tx.try_send(Ok(event));
        }
        self.list.push(Watcher {
            prefix: prefix.to_string(),
            tx,
        });
        rx
    }

    /// Sends one committed event to every watch whose prefix matches it. A watch whose
    /// buffer is full gets a last error item and is dropped.
    pub(crate) fn notify(&mut self, event: &WatchEvent) {
        self.list.retain(|w| {
            if w.tx.is_closed() {
                return false;
            }
            if !event.kv.key.starts_with(&w.prefix) {
                return true;
            }
            // The last free slot is kept for the error that ends a slow watch.
            if w.tx.capacity() > 1 {
                w.tx.try_send(Ok(event.clone())).is_ok()
            } else {
                let _ =
                    w.tx.try_send(Err(StoreError::Unavailable("watcher too slow".to_string())));
                false
            }
        });
    }
}

/// The revision up to which `history` (oldest first, with the age of each event) may be
/// compacted: events that are both more than `KEEP_REVISIONS` behind `current` and
/// older than `KEEP_FOR`.
pub(crate) fn compactable(
    history: impl Iterator<Item = (Revision, Duration)>,
    current: Revision,
) -> Option<Revision> {
    let mut upto = None;
    for (rev, age) in history {
        if rev > current - KEEP_REVISIONS || age < KEEP_FOR {
            break;
        }
        upto = Some(rev);
    }
    upto
}

/// Events of `history` after `after` on keys with `prefix`.
pub(crate) fn replay<'a>(
    history: impl Iterator<Item = &'a WatchEvent>,
    prefix: &str,
    after: Revision,
) -> Vec<WatchEvent> {
    history
        .filter(|e| e.kv.mod_revision > after && e.kv.key.starts_with(prefix))
        .cloned()
        .collect()
}

/// A page of the keys in `prefix` after `start_after` as they were at `revision`, from
/// the keys as they are now (`current`, in key order, already within the range) and the
/// events written after `revision` (oldest first): each key an event touched is put back
/// to the value before the first of them, or dropped when it did not exist then.
pub(crate) fn page_at(
    current: impl Iterator<Item = KeyValue>,
    later: impl Iterator<Item = WatchEvent>,
    prefix: &str,
    start_after: Option<&str>,
    limit: Option<usize>,
    revision: Revision,
) -> ListPage {
    let in_range = |k: &str| k.starts_with(prefix) && start_after.is_none_or(|a| k > a);
    let mut keys: std::collections::BTreeMap<String, KeyValue> =
        current.map(|kv| (kv.key.clone(), kv)).collect();
    let mut rewound = std::collections::HashSet::new();
    for e in later {
        if !in_range(&e.kv.key) || !rewound.insert(e.kv.key.clone()) {
            continue;
        }
        match e.prev {
            Some(prev) => keys.insert(e.kv.key.clone(), prev),
            None => keys.remove(&e.kv.key),
        };
    }
    let limit = limit.unwrap_or(usize::MAX);
    let total = keys.len();
    let items: Vec<KeyValue> = keys.into_values().take(limit).collect();
    ListPage {
        remaining: (total - items.len()) as i64,
        items,
        revision,
    }
}

/// A history of events with the instant each was written, oldest first.
pub(crate) type History = VecDeque<(Instant, WatchEvent)>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ages(revs: std::ops::RangeInclusive<i64>, age: Duration) -> Vec<(Revision, Duration)> {
        revs.map(|r| (r, age)).collect()
    }

    #[test]
    fn compaction_keeps_the_last_revisions_and_minutes() {
        let old = KEEP_FOR + Duration::from_secs(1);
        let recent = Duration::from_secs(1);
        // Few revisions: nothing goes, however old.
        assert_eq!(compactable(ages(1..=10, old).into_iter(), 10), None);
        // Many old revisions: all but the last KEEP_REVISIONS go.
        assert_eq!(
            compactable(ages(1..=1500, old).into_iter(), 1500),
            Some(1500 - KEEP_REVISIONS)
        );
        // Many recent revisions: nothing goes.
        assert_eq!(compactable(ages(1..=1500, recent).into_iter(), 1500), None);
        // Old then recent: only the old ones that are also far enough behind.
        let mut mixed = ages(1..=200, old);
        mixed.extend(ages(201..=1500, recent));
        assert_eq!(compactable(mixed.into_iter(), 1500), Some(200));
    }
}
