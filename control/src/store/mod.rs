//! The storage trait the API server is written against, with etcd v3's model: a flat
//! key space, one cluster-wide revision that every write increments, each key's
//! create and mod revisions, and watches that replay every event after a revision
//! still in the history.
//!
//! An object's `metadata.resourceVersion` is its key's mod revision, and a list's is
//! the store revision it was read at.

use futures_util::future::BoxFuture;

/// A store revision: strictly increasing, one per successful write.
pub type Revision = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    /// Keys in ascending byte order.
    pub items: Vec<KeyValue>,
    /// The store revision the page was read at.
    pub revision: Revision,
    /// How many more keys with the prefix follow the last item (0 when the list is whole).
    pub remaining: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For Put, the new value; for Delete, the last value, with `mod_revision` set to
    /// the revision of the deletion.
    pub kv: KeyValue,
    /// The value before this event, when there was one.
    pub prev: Option<KeyValue>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("{key}: not found")]
    NotFound { key: String },
    #[error("{key}: already exists")]
    AlreadyExists { key: String },
    #[error("{key}: the object has been modified (revision {current})")]
    Conflict { key: String, current: Revision },
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Events of one watch, in revision order. The stream ends with an error item when the
/// store can no longer follow (compaction, a lost connection), and closes when the
/// store shuts down.
pub type WatchStream = tokio::sync::mpsc::Receiver<Result<WatchEvent>>;

pub trait Store: Send + Sync + 'static {
    /// "embedded" or "etcd", for logs and metrics.
    fn backend(&self) -> &'static str;

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>>;

    /// Keys that start with `prefix`, in order, after `start_after` when given, at most
    /// `limit` of them when given; as they are now, or as they were at revision `at`
    /// (the later pages of one list read where its first did). Compacted when `at` is
    /// older than the history kept.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> BoxFuture<'a, Result<ListPage>>;

    /// Fails with AlreadyExists when the key exists.
    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<KeyValue>>;

    /// Replaces the value when the key's mod revision is `expected`: Conflict when it is
    /// another, NotFound when the key is gone.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: Revision,
    ) -> BoxFuture<'a, Result<KeyValue>>;

    /// Deletes the key (when its mod revision is `expected`, if given) and returns its
    /// last value, with `mod_revision` set to the revision of the deletion.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<Revision>,
    ) -> BoxFuture<'a, Result<KeyValue>>;

    /// Every event on keys with `prefix` whose revision is greater than `after`, then the
    /// live ones. Compacted when `after` is older than the history kept.
    fn watch<'a>(&'a self, prefix: &'a str, after: Revision) -> BoxFuture<'a, Result<WatchStream>>;

    /// The current store revision.
    fn revision(&self) -> BoxFuture<'_, Result<Revision>>;
}

/// Where a list of `prefix` starts: just past `start_after` when that is within or after
/// the prefix, else at the prefix.
pub(crate) fn list_start<'a>(
    prefix: &'a str,
    start_after: Option<&'a str>,
) -> std::ops::Bound<&'a str> {
    match start_after {
        Some(after) if after >= prefix => std::ops::Bound::Excluded(after),
        _ => std::ops::Bound::Included(prefix),
    }
}

pub mod embedded;
pub mod etcd;
pub mod memory;
#[doc(hidden)]
pub mod testsuite;
mod watchers;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;
pub use memory::MemoryStore;
