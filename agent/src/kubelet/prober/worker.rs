//! One probe of one container: kubelet's probe worker. [`ProbeState`] is the state
//! machine (thresholds, on hold after a restart-worthy failure); [`Worker`] runs it on
//! a clock, gated by the initial delay and the startup probe. Time and the probe run
//! itself come in through [`Clock`] and [`ProbeRunner`], so tests drive both.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Probe;
use tokio::sync::Notify;

use super::manager::ProbeEventResult;
use super::{run_probe, BoxFuture, ProbeOutcome, Target};

/// kubelet's defaults (the API server fills them in as well).
const DEFAULT_PERIOD_SECONDS: i32 = 10;
const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
const DEFAULT_FAILURE_THRESHOLD: i32 = 3;
/// A run that could not be made is tried this many times in a row.
const MAX_TRIES: usize = 3;

/// Where workers get the time, and wait.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()>;
    /// A random duration in `[0, max)`: the first run's delay after the agent starts.
    fn jitter(&self, max: Duration) -> Duration {
        max.mul_f64(rand::random::<f64>())
    }
}

/// The tokio timer.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }
}

/// Runs one probe once.
pub trait ProbeRunner: Send + Sync + 'static {
    fn run<'a>(&'a self, probe: &'a Probe, target: &'a Target) -> BoxFuture<'a, ProbeOutcome>;
}

/// [`run_probe`]: exec through CRI, network probes from the node.
#[derive(Clone, Copy, Debug, Default)]
pub struct CriProbeRunner;

impl ProbeRunner for CriProbeRunner {
    fn run<'a>(&'a self, probe: &'a Probe, target: &'a Target) -> BoxFuture<'a, ProbeOutcome> {
        Box::pin(run_probe(probe, target))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        })
    }
}

impl ProbeKind {
    /// What the probe stands at before its first counted run: a container is not
    /// ready until its readiness probe succeeds, and live until its liveness probe fails.
    pub fn initial(self) -> ProbeResult {
        match self {
            ProbeKind::Liveness => ProbeResult::Success,
            ProbeKind::Readiness => ProbeResult::Failure,
            ProbeKind::Startup => ProbeResult::Unknown,
        }
    }
}

/// A probe's recorded result (kubelet's `results.Result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    Unknown,
    Success,
    Failure,
}

/// A probe's numbers, kubelet's defaults where unset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ProbeSpec {
    pub initial_delay_seconds: u64,
    pub period: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    pub termination_grace_period_seconds: Option<i64>,
}

impl ProbeSpec {
    pub(super) fn new(kind: ProbeKind, probe: &Probe) -> Self {
        let positive =
            |v: Option<i32>, default: i32| v.filter(|v| *v > 0).unwrap_or(default) as u32;
        ProbeSpec {
            initial_delay_seconds: probe.initial_delay_seconds.unwrap_or(0).max(0) as u64,
            period: Duration::from_secs(u64::from(positive(
                probe.period_seconds,
                DEFAULT_PERIOD_SECONDS,
            ))),
            // Validation holds liveness and startup to 1.
            success_threshold: match kind {
                ProbeKind::Readiness => {
                    positive(probe.success_threshold, DEFAULT_SUCCESS_THRESHOLD)
                }
                ProbeKind::Liveness | ProbeKind::Startup => 1,
            },
            failure_threshold: positive(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
            termination_grace_period_seconds: match kind {
                ProbeKind::Readiness => None,
                ProbeKind::Liveness | ProbeKind::Startup => probe.termination_grace_period_seconds,
            },
        }
    }
}

/// What one counted run asks the pod sync to hear: an event and its message.
pub(super) type Emitted = (ProbeEventResult, String);

/// One probe's state machine.
#[derive(Debug)]
pub(super) struct ProbeState {
    kind: ProbeKind,
    container_name: String,
    spec: ProbeSpec,
    /// The recorded result.
    result: ProbeResult,
    /// The last run's result and how many runs in a row gave it.
    last: Option<ProbeResult>,
    run: u32,
    /// After a restart-worthy failure, nothing more until a new container.
    on_hold: bool,
}

impl ProbeState {
    pub(super) fn new(kind: ProbeKind, container_name: &str, spec: ProbeSpec) -> Self {
        ProbeState {
            kind,
            container_name: container_name.to_owned(),
            spec,
            result: kind.initial(),
            last: None,
            run: 0,
            on_hold: false,
        }
    }

    pub(super) fn result(&self) -> ProbeResult {
        self.result
    }

    pub(super) fn spec(&self) -> &ProbeSpec {
        &self.spec
    }

    /// Whether a run is due now, the container having run for `running` and its
    /// startup probe having succeeded (or there being none) as `started` says.
    pub(super) fn due(&self, running: Duration, started: bool) -> bool {
        if self.on_hold || running.as_secs() < self.spec.initial_delay_seconds {
            return false;
        }
        match self.kind {
            // Done once the container started; liveness and readiness wait for that.
            ProbeKind::Startup => !started,
            ProbeKind::Liveness | ProbeKind::Readiness => started,
        }
    }

    /// Counts one run's outcome; returns what to tell, in order.
    pub(super) fn record(&mut self, outcome: &ProbeOutcome) -> Vec<Emitted> {
        let kind = self.kind;
        let mut told = Vec::new();
        let result = match outcome {
            ProbeOutcome::Success => ProbeResult::Success,
            ProbeOutcome::Warning(w) => {
                told.push((
                    ProbeEventResult::Warning,
                    format!("{kind} probe warning: {w}"),
                ));
                ProbeResult::Success
            }
            ProbeOutcome::Failure(m) => {
                told.push((
                    ProbeEventResult::Unhealthy,
                    format!("{kind} probe failed: {m}"),
                ));
                ProbeResult::Failure
            }
            // Not counted: the recorded result stays.
            ProbeOutcome::Error(e) => {
                told.push((
                    ProbeEventResult::Unhealthy,
                    format!("{kind} probe errored and resulted in unknown state: {e}"),
                ));
                return told;
            }
        };
        if self.last == Some(result) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(result);
            self.run = 1;
        }
        let threshold = match result {
            ProbeResult::Failure => self.spec.failure_threshold,
            _ => self.spec.success_threshold,
        };
        if self.run < threshold {
            return told;
        }
        let changed = self.result != result;
        self.result = result;
        if result == ProbeResult::Failure && kind != ProbeKind::Readiness {
            self.on_hold = true;
            self.run = 0;
            told.push((
                ProbeEventResult::RestartNeeded {
                    termination_grace_period_seconds: self.spec.termination_grace_period_seconds,
                },
                format!(
                    "Container {} failed {} probe",
                    self.container_name,
                    kind.to_string().to_lowercase()
                ),
            ));
        } else if changed {
            let (event, message) = match result {
                ProbeResult::Success => {
                    (ProbeEventResult::Success, format!("{kind} probe succeeded"))
                }
                _ => (
                    ProbeEventResult::Failure,
                    told.last()
                        .map(|(_, m)| m.clone())
                        .unwrap_or_else(|| format!("{kind} probe failed")),
                ),
            };
            told.push((event, message));
        }
        told
    }
}

/// What a worker reads from and reports to: the manager, or a test.
pub(super) trait Host: Send + Sync + 'static {
    /// Whether the container counts as started (its startup probe succeeded, or it has none).
    fn started(&self) -> bool;
    /// Records the probe's result and tells `told`; false once the container is no
    /// longer probed, which ends the worker.
    fn publish(&self, result: ProbeResult, told: Vec<Emitted>) -> bool;
}

/// The loop of one probe: the first run at once (after `first_delay`), then one each
/// period, or sooner when `trigger` is notified.
pub(super) struct Worker<H: Host> {
    pub probe: Probe,
    pub target: Target,
    pub state: ProbeState,
    /// When the container started, on `clock`.
    pub started_at: Instant,
    pub first_delay: Duration,
    pub clock: Arc<dyn Clock>,
    pub runner: Arc<dyn ProbeRunner>,
    pub trigger: Arc<Notify>,
    pub host: H,
}

impl<H: Host> Worker<H> {
    pub(super) async fn run(mut self) {
        let period = self.state.spec().period;
        if !self.first_delay.is_zero() {
            let until = self.clock.now() + self.first_delay;
            self.clock.sleep_until(until).await;
        }
        let mut tick = self.clock.now() + period;
        loop {
            if !self.probe_once().await {
                return;
            }
            let now = self.clock.now();
            if tick <= now {
                // A run longer than the period: one tick was kept waiting, as a
                // ticker's; the ones after keep their rhythm.
                while tick <= now {
                    tick += period;
                }
                continue;
            }
            tokio::select! {
                _ = self.clock.sleep_until(tick) => tick += period,
                _ = self.trigger.notified() => {}
            }
        }
    }

    /// One turn: a run if one is due. False when the worker should end.
    async fn probe_once(&mut self) -> bool {
        let running = self.clock.now().saturating_duration_since(self.started_at);
        if !self.state.due(running, self.host.started()) {
            return true;
        }
        let mut outcome = self.runner.run(&self.probe, &self.target).await;
        for _ in 1..MAX_TRIES {
            if !matches!(outcome, ProbeOutcome::Error(_)) {
                break;
            }
            outcome = self.runner.run(&self.probe, &self.target).await;
        }
        let told = self.state.record(&outcome);
        self.host.publish(self.state.result(), told)
    }
}
