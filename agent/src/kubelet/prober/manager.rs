//! The probe manager: one worker task per probe of each container the pod sync hands
//! it, the results they record, and the events they raise.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, Probe};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::exec::expand_command;
use super::worker::{
    Clock, CriProbeRunner, Emitted, Host, ProbeKind, ProbeResult, ProbeRunner, ProbeSpec,
    ProbeState, TokioClock, Worker,
};
use super::Target;

/// Something the pod sync should know about a container's probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeEvent {
    pub pod_uid: String,
    pub container_name: String,
    pub container_id: String,
    pub kind: ProbeKind,
    pub result: ProbeEventResult,
    /// The Event's message, worded as kubelet's.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeEventResult {
    /// The probe's result turned to success: ready, or started.
    Success,
    /// A readiness probe's result turned to failure: not ready.
    Failure,
    /// A liveness or startup probe failed `failureThreshold` times in a row: kill the
    /// container (grace period: the probe's if set, else the pod's) and restart it as
    /// the restart policy says. Told once per container ID; the message is
    /// "Container NAME failed liveness probe", to which kubelet's Killing Event adds
    /// ", will be restarted" (or not, by the restart policy).
    RestartNeeded {
        termination_grace_period_seconds: Option<i64>,
    },
    /// One run failed or could not be run: a Warning Event, reason `Unhealthy`
    /// ("Readiness probe failed: HTTP probe failed with statuscode: 500").
    Unhealthy,
    /// One run succeeded with a warning: a Warning Event, reason `ProbeWarning`.
    Warning,
}

impl ProbeEventResult {
    /// The reason of the Warning Event kubelet records, for those it records at once.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            ProbeEventResult::Unhealthy => Some(super::REASON_UNHEALTHY),
            ProbeEventResult::Warning => Some(super::REASON_PROBE_WARNING),
            _ => None,
        }
    }
}

/// The probes of every container the pod sync has added. Cheap to clone; the workers
/// end when the container or pod is removed, or when the last clone is dropped.
#[derive(Clone)]
pub struct ProbeManager {
    shared: Arc<Shared>,
}

type Key = (String, String);

struct Shared {
    containers: Mutex<HashMap<Key, Entry>>,
    events: mpsc::UnboundedSender<ProbeEvent>,
    clock: Arc<dyn Clock>,
    runner: Arc<dyn ProbeRunner>,
    /// When the manager was made: containers added within one period of it start
    /// probing after a random part of the period, so that an agent restart does not
    /// probe every pod at once.
    start: Instant,
}

/// One container's probes and their results.
struct Entry {
    container_id: String,
    has_startup: bool,
    has_readiness: bool,
    startup: ProbeResult,
    readiness: ProbeResult,
    liveness: ProbeResult,
    /// The probes' terminationGracePeriodSeconds.
    startup_grace: Option<i64>,
    liveness_grace: Option<i64>,
    triggers: Vec<(ProbeKind, Arc<Notify>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Entry {
    fn started(&self) -> bool {
        !self.has_startup || self.startup == ProbeResult::Success
    }

    fn trigger(&self, kind: ProbeKind) {
        for (k, t) in &self.triggers {
            if *k == kind {
                t.notify_one();
            }
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ProbeManager {
    /// Probes run through [`super::run_probe`] on the tokio timer.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<ProbeEvent>) {
        Self::with(Arc::new(TokioClock), Arc::new(CriProbeRunner))
    }

    /// Probes run by `runner` on `clock`.
    pub fn with(
        clock: Arc<dyn Clock>,
        runner: Arc<dyn ProbeRunner>,
    ) -> (Self, mpsc::UnboundedReceiver<ProbeEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let start = clock.now();
        let shared = Arc::new(Shared {
            containers: Mutex::new(HashMap::new()),
            events,
            clock,
            runner,
            start,
        });
        (ProbeManager { shared }, rx)
    }

    /// Starts probing a container that has just started. Again with the same ID, it
    /// changes nothing; with a new ID (the container was restarted), the old probes
    /// end and new ones start from their initial values. Must be called within a
    /// tokio runtime.
    pub fn add_container(
        &self,
        pod_uid: &str,
        container_name: &str,
        container_id: &str,
        container: &Container,
        target: Target,
    ) {
        let now = self.shared.clock.now();
        self.add(
            pod_uid,
            container_name,
            container_id,
            container,
            target,
            now,
        );
    }

    /// As [`Self::add_container`], for a container that started at `started_at` (found
    /// running when the agent starts): its initial delays count from then.
    pub fn add_container_started_at(
        &self,
        pod_uid: &str,
        container_name: &str,
        container_id: &str,
        container: &Container,
        target: Target,
        started_at: SystemTime,
    ) {
        let ago = SystemTime::now()
            .duration_since(started_at)
            .unwrap_or(Duration::ZERO);
        let now = self.shared.clock.now();
        let started = now.checked_sub(ago).unwrap_or(now);
        self.add(
            pod_uid,
            container_name,
            container_id,
            container,
            target,
            started,
        );
    }

    fn add(
        &self,
        pod_uid: &str,
        container_name: &str,
        container_id: &str,
        container: &Container,
        target: Target,
        started_at: Instant,
    ) {
        let shared = &self.shared;
        let key = (pod_uid.to_owned(), container_name.to_owned());
        let mut containers = shared.lock();
        if containers
            .get(&key)
            .is_some_and(|e| e.container_id == container_id)
        {
            return;
        }
        // A restarted container: the old entry's workers end as it drops.
        containers.remove(&key);
        let probes = [
            (ProbeKind::Startup, &container.startup_probe),
            (ProbeKind::Readiness, &container.readiness_probe),
            (ProbeKind::Liveness, &container.liveness_probe),
        ];
        let mut entry = Entry {
            container_id: container_id.to_owned(),
            has_startup: container.startup_probe.is_some(),
            has_readiness: container.readiness_probe.is_some(),
            startup: ProbeKind::Startup.initial(),
            readiness: ProbeKind::Readiness.initial(),
            liveness: ProbeKind::Liveness.initial(),
            startup_grace: container
                .startup_probe
                .as_ref()
                .and_then(|p| p.termination_grace_period_seconds),
            liveness_grace: container
                .liveness_probe
                .as_ref()
                .and_then(|p| p.termination_grace_period_seconds),
            triggers: Vec::new(),
            tasks: Vec::new(),
        };
        let now = shared.clock.now();
        for (kind, probe) in probes {
            let Some(probe) = probe else { continue };
            let spec = ProbeSpec::new(kind, probe);
            let first_delay = if spec.period > now.saturating_duration_since(shared.start) {
                shared.clock.jitter(spec.period)
            } else {
                Duration::ZERO
            };
            let trigger = Arc::new(Notify::new());
            let worker = Worker {
                probe: with_static_env(probe, container),
                target: target.clone(),
                state: ProbeState::new(kind, container_name, spec),
                started_at,
                first_delay,
                clock: shared.clock.clone(),
                runner: shared.runner.clone(),
                trigger: trigger.clone(),
                host: EntryHost {
                    shared: Arc::downgrade(shared),
                    key: key.clone(),
                    container_id: container_id.to_owned(),
                    kind,
                },
            };
            tracing::debug!(pod = %pod_uid, container = %container_name, probe = %kind, "starting probe worker");
            entry.triggers.push((kind, trigger));
            entry.tasks.push(tokio::spawn(worker.run()));
        }
        containers.insert(key, entry);
    }

    /// Stops probing a container (it stopped, or is being removed).
    pub fn remove_container(&self, pod_uid: &str, container_name: &str) {
        let removed = self
            .shared
            .lock()
            .remove(&(pod_uid.to_owned(), container_name.to_owned()));
        drop(removed);
    }

    /// Stops probing every container of a pod.
    pub fn remove_pod(&self, pod_uid: &str) {
        let mut containers = self.shared.lock();
        let gone: Vec<Entry> = containers
            .extract_if(|(uid, _), _| uid == pod_uid)
            .map(|(_, e)| e)
            .collect();
        drop(containers);
        drop(gone);
    }

    /// Whether the container is ready as far as probes go: started, and its readiness
    /// probe succeeded (or it has none). False for a container not added. As kubelet,
    /// a container found not ready has its readiness probe run without waiting for
    /// the period.
    pub fn ready(&self, pod_uid: &str, container_name: &str) -> bool {
        let containers = self.shared.lock();
        let Some(entry) = containers.get(&(pod_uid.to_owned(), container_name.to_owned())) else {
            return false;
        };
        if !entry.started() {
            return false;
        }
        if !entry.has_readiness || entry.readiness == ProbeResult::Success {
            return true;
        }
        entry.trigger(ProbeKind::Readiness);
        false
    }

    /// Whether the container started: its startup probe succeeded, or it has none.
    /// None for a container not added.
    pub fn started(&self, pod_uid: &str, container_name: &str) -> Option<bool> {
        self.shared
            .lock()
            .get(&(pod_uid.to_owned(), container_name.to_owned()))
            .map(Entry::started)
    }
}

impl ProbeManager {
    /// Whether a liveness or startup probe has failed the container, so that it must be
    /// killed: which probe, and its terminationGracePeriodSeconds. The same as the
    /// RestartNeeded event, for a pod sync that looks rather than listens.
    pub fn restart_needed(
        &self,
        pod_uid: &str,
        container_name: &str,
    ) -> Option<(ProbeKind, Option<i64>)> {
        let containers = self.shared.lock();
        let entry = containers.get(&(pod_uid.to_owned(), container_name.to_owned()))?;
        if entry.liveness == ProbeResult::Failure {
            Some((ProbeKind::Liveness, entry.liveness_grace))
        } else if entry.startup == ProbeResult::Failure {
            Some((ProbeKind::Startup, entry.startup_grace))
        } else {
            None
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // The map is consistent whenever a holder panics: every change is one insert
        // or remove.
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The probe with `$(VAR)` in an exec command taken from the container's env.
fn with_static_env(probe: &Probe, container: &Container) -> Probe {
    let mut probe = probe.clone();
    if let Some(exec) = probe.exec.as_mut() {
        if let Some(command) = exec.command.as_mut() {
            *command = expand_command(command, container.env.as_deref().unwrap_or(&[]));
        }
    }
    probe
}

/// A worker's view of its container's entry.
struct EntryHost {
    shared: Weak<Shared>,
    key: Key,
    container_id: String,
    kind: ProbeKind,
}

impl Host for EntryHost {
    fn started(&self) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        let containers = shared.lock();
        containers
            .get(&self.key)
            .filter(|e| e.container_id == self.container_id)
            .is_some_and(Entry::started)
    }

    fn publish(&self, result: ProbeResult, told: Vec<Emitted>) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        let mut containers = shared.lock();
        // The lock is held while telling, so nothing is told of a container once
        // remove_container has returned.
        let Some(entry) = containers
            .get_mut(&self.key)
            .filter(|e| e.container_id == self.container_id)
        else {
            return false;
        };
        let slot = match self.kind {
            ProbeKind::Startup => &mut entry.startup,
            ProbeKind::Readiness => &mut entry.readiness,
            ProbeKind::Liveness => &mut entry.liveness,
        };
        let became = *slot != result;
        *slot = result;
        if became && self.kind == ProbeKind::Startup && result == ProbeResult::Success {
            // The probes that waited for the start run now.
            entry.trigger(ProbeKind::Readiness);
            entry.trigger(ProbeKind::Liveness);
        }
        for (result, message) in told {
            let event = ProbeEvent {
                pod_uid: self.key.0.clone(),
                container_name: self.key.1.clone(),
                container_id: self.container_id.clone(),
                kind: self.kind,
                result,
                message,
            };
            if shared.events.send(event).is_err() {
                tracing::debug!(pod = %self.key.0, container = %self.key.1, "probe events are no longer read");
            }
        }
        true
    }
}
