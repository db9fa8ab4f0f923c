//! The proxier: what was installed, per service, and how the next sync gets from there
//! to what the snapshot asks for.
//!
//! ```text
//!   (start) --full sync--> [installed] --partial sync of changed services--> [installed]
//!                               |  ^                                              |
//!                               |  +--------- full sync (hourly, after a failure) -+
//!                               +-- 1 s later: chains flushed as stale are deleted
//! ```
//!
//! A partial sync writes only the chains, sets and map elements of the services that
//! changed, by comparing each with what was installed for it. A failed transaction
//! changes nothing in the kernel (nft applies all or nothing), and the next sync is a
//! full one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::model::{ServiceKey, Snapshot};
use super::nft::Nft;
use super::render::{self, RenderConfig, ServiceRules, Transaction};
use super::ProxyError;

/// How long a flushed chain waits before it is deleted: kernels before 6.2 see a map
/// element's reference to a chain go only a moment after the element is deleted.
pub const STALE_CHAIN_DELAY: Duration = Duration::from_secs(1);

/// What one sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub full: bool,
    /// Services written (all of them in a full sync).
    pub services: usize,
    /// Bytes of nft script (0 when nothing had to change).
    pub script_bytes: usize,
}

pub struct Proxier {
    pub render: RenderConfig,
    pub skip_cluster_ips: Vec<IpAddr>,
    installed: BTreeMap<ServiceKey, ServiceRules>,
    stale_chains: BTreeMap<String, Instant>,
    need_full: bool,
    last_full: Option<Instant>,
}

impl Proxier {
    pub fn new(render: RenderConfig, skip_cluster_ips: Vec<IpAddr>) -> Proxier {
        Proxier {
            render,
            skip_cluster_ips,
            installed: BTreeMap::new(),
            stale_chains: BTreeMap::new(),
            need_full: true,
            last_full: None,
        }
    }

    /// The rules `key` should have now (None: none at all).
    pub fn desired(&self, snap: &Snapshot, key: &ServiceKey) -> Option<ServiceRules> {
        let ports = snap.service_ports(key, &self.skip_cluster_ips);
        let rules = render::service_rules(&ports, &self.render);
        (rules != ServiceRules::default()).then_some(rules)
    }

    /// Asks for a full sync next time.
    pub fn request_full(&mut self) {
        self.need_full = true;
    }

    pub fn needs_full(&self, now: Instant, period: Duration) -> bool {
        self.need_full
            || self
                .last_full
                .is_none_or(|t| now.duration_since(t) >= period)
    }

    /// When chains flushed as stale may be deleted.
    pub fn stale_due(&self) -> Option<Instant> {
        self.stale_chains
            .values()
            .min()
            .map(|t| *t + STALE_CHAIN_DELAY)
    }

    /// Brings the table to what `snap` asks: a full sync when one is needed, else the
    /// services in `dirty` only. Blocking (runs nft).
    pub fn sync(
        &mut self,
        nft: &dyn Nft,
        snap: &Snapshot,
        dirty: &BTreeSet<ServiceKey>,
        full: bool,
    ) -> Result<SyncStats, ProxyError> {
        let now = Instant::now();
        self.delete_stale(nft, now);
        if full || self.need_full {
            return self.sync_full(nft, snap, now);
        }
        let mut updates: Vec<(ServiceKey, Option<ServiceRules>)> = Vec::new();
        let mut tx = Transaction::default();
        for key in dirty {
            let new = self.desired(snap, key);
            tx.diff(self.installed.get(key), new.as_ref());
            updates.push((key.clone(), new));
        }
        let script = if tx.is_empty() {
            String::new()
        } else {
            tx.script()
        };
        if !script.is_empty() {
            if let Err(e) = nft.apply(&script) {
                self.need_full = true;
                return Err(e);
            }
        }
        for (key, rules) in updates {
            match rules {
                Some(r) => self.installed.insert(key, r),
                None => self.installed.remove(&key),
            };
        }
        for name in tx.stale_chains {
            self.stale_chains.insert(name, now);
        }
        Ok(SyncStats {
            full: false,
            services: dirty.len(),
            script_bytes: script.len(),
        })
    }

    fn sync_full(
        &mut self,
        nft: &dyn Nft,
        snap: &Snapshot,
        now: Instant,
    ) -> Result<SyncStats, ProxyError> {
        self.need_full = true;
        let existing = nft.existing()?;
        let all: BTreeMap<ServiceKey, ServiceRules> = snap
            .services
            .keys()
            .filter_map(|k| Some((k.clone(), self.desired(snap, k)?)))
            .collect();
        let tx = Transaction::full(all.values(), &existing);
        let script = tx.script();
        nft.apply(&script)?;
        self.installed = all;
        self.need_full = false;
        self.last_full = Some(now);
        for name in tx.stale_chains {
            self.stale_chains.entry(name).or_insert(now);
        }
        Ok(SyncStats {
            full: true,
            services: self.installed.len(),
            script_bytes: script.len(),
        })
    }

    /// Deletes the chains flushed as stale at least [`STALE_CHAIN_DELAY`] ago. A chain
    /// written again since is not stale any more; a failure leaves them for the next
    /// full sync, which finds them in the listing.
    pub fn delete_stale(&mut self, nft: &dyn Nft, now: Instant) {
        let in_use: BTreeSet<&String> = self
            .installed
            .values()
            .flat_map(|r| r.chains.keys())
            .collect();
        self.stale_chains.retain(|name, _| !in_use.contains(name));
        let due: Vec<String> = self
            .stale_chains
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= STALE_CHAIN_DELAY)
            .map(|(n, _)| n.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        if let Err(e) = nft.apply(&render::delete_chains(&due)) {
            tracing::warn!(chains = due.len(), error = %e, "deleting stale proxy chains");
            self.need_full = true;
        }
        for name in due {
            self.stale_chains.remove(&name);
        }
    }

    /// The chains waiting to be deleted.
    pub fn stale_chains(&self) -> impl Iterator<Item = &String> {
        self.stale_chains.keys()
    }
}
