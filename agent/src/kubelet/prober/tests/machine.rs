//! The workers' state machine, on a fake clock with scripted outcomes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, EnvVar, ExecAction, Probe};
use tokio::sync::{mpsc, Notify};

use super::fakes::{target, FakeClock, ScriptedRunner};
use crate::kubelet::prober::worker::{Emitted, Host, ProbeSpec, ProbeState, Worker};
use crate::kubelet::prober::{
    ProbeEvent, ProbeEventResult, ProbeKind, ProbeManager, ProbeOutcome, ProbeResult,
};

use ProbeOutcome::{Error, Failure, Success, Warning};

fn exec_probe(name: &str) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![name.into()]),
        }),
        ..Default::default()
    }
}

fn state(kind: ProbeKind, probe: Probe) -> ProbeState {
    ProbeState::new(kind, "web", ProbeSpec::new(kind, &probe))
}

fn results(told: &[Emitted]) -> Vec<ProbeEventResult> {
    told.iter().map(|(r, _)| r.clone()).collect()
}

#[test]
fn defaults() {
    let spec = ProbeSpec::new(
        ProbeKind::Liveness,
        &Probe {
            success_threshold: Some(5),
            termination_grace_period_seconds: Some(3),
            ..Default::default()
        },
    );
    assert_eq!(
        spec,
        ProbeSpec {
            initial_delay_seconds: 0,
            period: Duration::from_secs(10),
            success_threshold: 1,
            failure_threshold: 3,
            termination_grace_period_seconds: Some(3),
        }
    );
    let spec = ProbeSpec::new(
        ProbeKind::Readiness,
        &Probe {
            success_threshold: Some(2),
            termination_grace_period_seconds: Some(3),
            ..Default::default()
        },
    );
    assert_eq!(spec.success_threshold, 2);
    assert_eq!(spec.termination_grace_period_seconds, None);
}

#[test]
fn readiness_thresholds() {
    let mut s = state(
        ProbeKind::Readiness,
        Probe {
            success_threshold: Some(2),
            failure_threshold: Some(2),
            ..Default::default()
        },
    );
    assert_eq!(
        s.result(),
        ProbeResult::Failure,
        "not ready before the first success"
    );
    assert!(s.record(&Success).is_empty());
    assert_eq!(s.result(), ProbeResult::Failure);
    let told = s.record(&Success);
    assert_eq!(
        told,
        [(
            ProbeEventResult::Success,
            "Readiness probe succeeded".into()
        )]
    );
    assert_eq!(s.result(), ProbeResult::Success);

    let told = s.record(&Failure("HTTP probe failed with statuscode: 500".into()));
    assert_eq!(
        told,
        [(
            ProbeEventResult::Unhealthy,
            "Readiness probe failed: HTTP probe failed with statuscode: 500".into()
        )]
    );
    assert_eq!(s.result(), ProbeResult::Success);
    let told = s.record(&Failure("HTTP probe failed with statuscode: 500".into()));
    assert_eq!(
        results(&told),
        [ProbeEventResult::Unhealthy, ProbeEventResult::Failure]
    );
    assert_eq!(
        told[1].1,
        "Readiness probe failed: HTTP probe failed with statuscode: 500"
    );
    assert_eq!(s.result(), ProbeResult::Failure);
    // Readiness goes on probing after failures.
    assert!(s.due(Duration::ZERO, true));
}

#[test]
fn errors_are_not_counted_and_warnings_are_successes() {
    let mut s = state(ProbeKind::Liveness, exec_probe("x"));
    s.record(&Failure(String::new()));
    let told = s.record(&Error("rpc error: code = Unknown desc = boom".into()));
    assert_eq!(
        told,
        [(
            ProbeEventResult::Unhealthy,
            "Liveness probe errored and resulted in unknown state: rpc error: code = Unknown desc = boom".into()
        )]
    );
    s.record(&Failure(String::new()));
    // Two failures in a row, the error between them not counted.
    assert_eq!(s.result(), ProbeResult::Success);

    let mut s = state(ProbeKind::Readiness, exec_probe("x"));
    let told = s.record(&Warning(
        "Probe terminated redirects, Response body: ".into(),
    ));
    assert_eq!(
        told,
        [
            (
                ProbeEventResult::Warning,
                "Readiness probe warning: Probe terminated redirects, Response body: ".into()
            ),
            (
                ProbeEventResult::Success,
                "Readiness probe succeeded".into()
            ),
        ]
    );
    assert_eq!(told[0].0.reason(), Some("ProbeWarning"));
}

#[test]
fn liveness_restart_once_then_on_hold() {
    let mut s = state(
        ProbeKind::Liveness,
        Probe {
            failure_threshold: Some(3),
            termination_grace_period_seconds: Some(5),
            ..Default::default()
        },
    );
    assert_eq!(s.result(), ProbeResult::Success);
    s.record(&Failure("a".into()));
    s.record(&Success);
    s.record(&Failure("b".into()));
    s.record(&Failure("c".into()));
    assert_eq!(
        s.result(),
        ProbeResult::Success,
        "the run was broken by a success"
    );
    let told = s.record(&Failure("d".into()));
    assert_eq!(
        told,
        [
            (
                ProbeEventResult::Unhealthy,
                "Liveness probe failed: d".into()
            ),
            (
                ProbeEventResult::RestartNeeded {
                    termination_grace_period_seconds: Some(5)
                },
                "Container web failed liveness probe".into()
            ),
        ]
    );
    assert_eq!(s.result(), ProbeResult::Failure);
    assert!(
        !s.due(Duration::from_secs(3600), true),
        "on hold until a new container"
    );
}

#[test]
fn gates() {
    let s = state(
        ProbeKind::Readiness,
        Probe {
            initial_delay_seconds: Some(5),
            ..Default::default()
        },
    );
    assert!(
        !s.due(Duration::from_millis(4999), true),
        "whole seconds, as kubelet counts"
    );
    assert!(s.due(Duration::from_secs(5), true));
    assert!(
        !s.due(Duration::from_secs(5), false),
        "not before the startup probe succeeds"
    );
    let startup = state(ProbeKind::Startup, exec_probe("s"));
    assert_eq!(startup.result(), ProbeResult::Unknown);
    assert!(startup.due(Duration::ZERO, false));
    assert!(!startup.due(Duration::ZERO, true), "done once started");
}

/// One publish: the recorded result and what was told.
type Published = (ProbeResult, Vec<Emitted>);

/// A host that is always started and records what it is told.
#[derive(Clone, Default)]
struct Recorder {
    told: Arc<Mutex<Vec<Published>>>,
}

impl Host for Recorder {
    fn started(&self) -> bool {
        true
    }

    fn publish(&self, result: ProbeResult, told: Vec<Emitted>) -> bool {
        self.told.lock().unwrap().push((result, told));
        true
    }
}

fn worker(
    clock: &Arc<FakeClock>,
    runner: &Arc<ScriptedRunner>,
    kind: ProbeKind,
    probe: Probe,
    first_delay: Duration,
) -> (Worker<Recorder>, Recorder, Arc<Notify>) {
    let host = Recorder::default();
    let trigger = Arc::new(Notify::new());
    let w = Worker {
        state: state(kind, probe.clone()),
        probe,
        target: target(vec![]),
        started_at: crate::kubelet::prober::Clock::now(clock.as_ref()),
        first_delay,
        clock: clock.clone(),
        runner: runner.clone(),
        trigger: trigger.clone(),
        host: host.clone(),
    };
    (w, host, trigger)
}

#[tokio::test]
async fn worker_runs_each_period_after_the_initial_delay() {
    let clock = FakeClock::new(0.0);
    let runner = ScriptedRunner::new(clock.clone());
    let probe = Probe {
        initial_delay_seconds: Some(15),
        period_seconds: Some(10),
        ..exec_probe("ready")
    };
    let (w, _host, _) = worker(&clock, &runner, ProbeKind::Readiness, probe, Duration::ZERO);
    let task = tokio::spawn(w.run());
    clock.settle(1).await;
    clock.run_for(Duration::from_secs(45), 1).await;
    // Ticks at 0 and 10 fall within the delay; the ticker keeps its rhythm.
    assert_eq!(runner.times("ready"), [20, 30, 40]);
    task.abort();
}

#[tokio::test]
async fn worker_jitter_and_trigger() {
    let clock = FakeClock::new(0.0);
    let runner = ScriptedRunner::new(clock.clone());
    let probe = Probe {
        period_seconds: Some(10),
        ..exec_probe("ready")
    };
    let (w, _host, trigger) = worker(
        &clock,
        &runner,
        ProbeKind::Readiness,
        probe,
        Duration::from_secs(3),
    );
    let task = tokio::spawn(w.run());
    clock.settle(1).await;
    clock.run_for(Duration::from_secs(14), 1).await;
    assert_eq!(runner.times("ready"), [3, 13]);
    trigger.notify_one();
    clock.settle(1).await;
    assert_eq!(runner.times("ready"), [3, 13, 14]);
    clock.run_for(Duration::from_secs(10), 1).await;
    assert_eq!(runner.times("ready"), [3, 13, 14, 23]);
    task.abort();
}

#[tokio::test]
async fn worker_retries_errors_and_holds_after_restart() {
    let clock = FakeClock::new(0.0);
    let runner = ScriptedRunner::new(clock.clone());
    runner.script(
        "live",
        [
            Error("e1".into()),
            Error("e2".into()),
            Error("e3".into()),
            Error("e4".into()),
            Failure("f".into()),
            Failure("f".into()),
        ],
    );
    let probe = Probe {
        period_seconds: Some(10),
        failure_threshold: Some(2),
        ..exec_probe("live")
    };
    let (w, host, _) = worker(&clock, &runner, ProbeKind::Liveness, probe, Duration::ZERO);
    let task = tokio::spawn(w.run());
    clock.settle(1).await;
    // Three tries at 0, one errored event; at 10 an error then a failure.
    clock.run_for(Duration::from_secs(60), 1).await;
    assert_eq!(runner.times("live"), [0, 0, 0, 10, 10, 20]);
    let told = host.told.lock().unwrap().clone();
    let flat: Vec<(ProbeResult, Vec<ProbeEventResult>)> =
        told.iter().map(|(r, t)| (*r, results(t))).collect();
    assert_eq!(
        flat,
        [
            (ProbeResult::Success, vec![ProbeEventResult::Unhealthy]),
            (ProbeResult::Success, vec![ProbeEventResult::Unhealthy]),
            (
                ProbeResult::Failure,
                vec![
                    ProbeEventResult::Unhealthy,
                    ProbeEventResult::RestartNeeded {
                        termination_grace_period_seconds: None
                    }
                ]
            ),
        ]
    );
    assert_eq!(
        told[0].1[0].1,
        "Liveness probe errored and resulted in unknown state: e3"
    );
    task.abort();
}

// ---- the manager ----

fn container(name: &str) -> Container {
    Container {
        name: name.into(),
        ..Default::default()
    }
}

fn drain(
    rx: &mut mpsc::UnboundedReceiver<ProbeEvent>,
) -> Vec<(ProbeKind, ProbeEventResult, String)> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .map(|e| (e.kind, e.result, e.message))
        .collect()
}

#[tokio::test]
async fn startup_gates_liveness_and_readiness() {
    let clock = FakeClock::new(0.0);
    let runner = ScriptedRunner::new(clock.clone());
    runner.script("start", [Failure("not yet".into()), Success]);
    runner.script("ready", [Failure("warming".into()), Success]);
    let (m, mut rx) = ProbeManager::with(clock.clone(), runner.clone());
    let c = Container {
        startup_probe: Some(Probe {
            period_seconds: Some(10),
            failure_threshold: Some(30),
            ..exec_probe("start")
        }),
        readiness_probe: Some(Probe {
            period_seconds: Some(7),
            ..exec_probe("ready")
        }),
        liveness_probe: Some(Probe {
            period_seconds: Some(15),
            ..exec_probe("live")
        }),
        ..container("web")
    };
    m.add_container("pod-1", "web", "id-1", &c, target(vec![]));
    assert_eq!(m.started("pod-1", "web"), Some(false));
    assert!(!m.ready("pod-1", "web"));
    clock.settle(3).await;
    assert_eq!(runner.times("start"), [0]);
    assert!(runner.times("ready").is_empty() && runner.times("live").is_empty());
    assert_eq!(
        drain(&mut rx),
        [(
            ProbeKind::Startup,
            ProbeEventResult::Unhealthy,
            "Startup probe failed: not yet".to_owned()
        )]
    );

    clock.run_for(Duration::from_secs(10), 3).await;
    // Started at 10: readiness and liveness run at once (their periods, 7 and 15,
    // keep their ticks away from 10).
    assert_eq!(m.started("pod-1", "web"), Some(true));
    assert_eq!(runner.times("ready"), [10]);
    assert_eq!(runner.times("live"), [10]);
    assert_eq!(
        drain(&mut rx),
        [
            (
                ProbeKind::Startup,
                ProbeEventResult::Success,
                "Startup probe succeeded".to_owned()
            ),
            (
                ProbeKind::Readiness,
                ProbeEventResult::Unhealthy,
                "Readiness probe failed: warming".to_owned()
            ),
        ]
    );
    assert!(!m.ready("pod-1", "web"));
    // ready() asked and was told no: the readiness probe runs again now.
    clock.settle(3).await;
    assert_eq!(runner.times("ready"), [10, 10]);
    assert!(m.ready("pod-1", "web"));
    assert_eq!(
        drain(&mut rx),
        [(
            ProbeKind::Readiness,
            ProbeEventResult::Success,
            "Readiness probe succeeded".to_owned()
        )]
    );

    clock.run_for(Duration::from_secs(20), 3).await;
    // The startup probe is done; the others keep their periods from their start.
    assert_eq!(runner.times("start"), [0, 10]);
    assert_eq!(runner.times("ready"), [10, 10, 14, 21, 28]);
    assert_eq!(runner.times("live"), [10, 15, 30]);
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn liveness_failure_asks_for_one_restart() {
    let clock = FakeClock::new(0.0);
    let runner = ScriptedRunner::new(clock.clone());
    runner.script("live", std::iter::repeat_n(Failure("exit 1".into()), 5));
    let (m, mut rx) = ProbeManager::with(clock.clone(), runner.clone());
    let c = Container {
        liveness_probe: Some(Probe {
            period_seconds: Some(10),
            failure_threshold: Some(2),
            termination_grace_period_seconds: Some(7),
            ..exec_probe("live")
        }),
        ..container("web")
    };
    m.add_container("pod-1", "web", "id-1", &c, target(vec![]));
    assert!(
        m.ready("pod-1", "web"),
        "no readiness probe: ready once started"
    );
    assert_eq!(m.started("pod-1", "web"), Some(true));
    clock.settle(1).await;
    clock.run_for(Duration::from_secs(40), 1).await;
    assert_eq!(runner.times("live"), [0, 10]);
    let events = drain(&mut rx);
    assert_eq!(
        events,
        [
            (
                ProbeKind::Liveness,
                ProbeEventResult::Unhealthy,
                "Liveness probe failed: exit 1".to_owned()
            ),
            (
                ProbeKind::Liveness,
                ProbeEventResult::Unhealthy,
                "Liveness probe failed: exit 1".to_owned()
            ),
            (
                ProbeKind::Liveness,
                ProbeEventResult::RestartNeeded {
                    termination_grace_period_seconds: Some(7)
                },
                "Container web failed liveness probe".to_owned()
            ),
        ]
    );
    assert_eq!(
        m.restart_needed("pod-1", "web"),
        Some((ProbeKind::Liveness, Some(7)))
    );

    // The same container again: nothing changes.
    m.add_container("pod-1", "web", "id-1", &c, target(vec![]));
    assert_eq!(
        m.restart_needed("pod-1", "web"),
        Some((ProbeKind::Liveness, Some(7)))
    );
    // Restarted under a new ID: probed afresh.
    m.add_container("pod-1", "web", "id-2", &c, target(vec![]));
    assert_eq!(m.restart_needed("pod-1", "web"), None);
    clock.settle(1).await;
    assert_eq!(runner.times("live"), [0, 10, 40]);
    let event = rx.try_recv().unwrap();
    assert_eq!(
        (event.container_id.as_str(), event.pod_uid.as_str()),
        ("id-2", "pod-1")
    );
}

#[tokio::test]
async fn removal_stops_workers() {
    let clock = FakeClock::new(0.0);
    let runner = ScriptedRunner::new(clock.clone());
    let (m, mut rx) = ProbeManager::with(clock.clone(), runner.clone());
    let probed = |name: &str| Container {
        readiness_probe: Some(Probe {
            period_seconds: Some(10),
            ..exec_probe(name)
        }),
        ..container(name)
    };
    m.add_container("pod-1", "a", "id-a", &probed("a"), target(vec![]));
    m.add_container("pod-1", "b", "id-b", &probed("b"), target(vec![]));
    m.add_container("pod-2", "c", "id-c", &probed("c"), target(vec![]));
    clock.settle(3).await;
    assert_eq!(drain(&mut rx).len(), 3, "each became ready");
    assert!(m.ready("pod-1", "a") && m.ready("pod-2", "c"));

    m.remove_container("pod-1", "a");
    assert_eq!(m.started("pod-1", "a"), None);
    assert!(!m.ready("pod-1", "a"));
    clock.settle(2).await;
    m.remove_pod("pod-1");
    assert_eq!(m.started("pod-1", "b"), None);
    clock.settle(1).await;
    clock.run_for(Duration::from_secs(20), 1).await;
    assert_eq!(runner.times("a"), [0]);
    assert_eq!(runner.times("b"), [0]);
    assert_eq!(runner.times("c"), [0, 10, 20]);
    assert_eq!(m.started("pod-2", "c"), Some(true));

    // Dropping the manager ends the rest.
    drop(m);
    clock.settle(0).await;
}

#[tokio::test]
async fn first_runs_spread_after_a_start_and_env_is_expanded() {
    let clock = FakeClock::new(0.5);
    let runner = ScriptedRunner::new(clock.clone());
    let (m, _rx) = ProbeManager::with(clock.clone(), runner.clone());
    let c = Container {
        env: Some(vec![EnvVar {
            name: "PORT".into(),
            value: Some("8080".into()),
            value_from: None,
        }]),
        liveness_probe: Some(Probe {
            period_seconds: Some(10),
            exec: Some(ExecAction {
                command: Some(vec!["check".into(), "localhost:$(PORT)".into()]),
            }),
            ..Default::default()
        }),
        ..container("web")
    };
    m.add_container("pod-1", "web", "id-1", &c, target(vec![]));
    clock.settle(1).await;
    clock.run_for(Duration::from_secs(16), 1).await;
    // Added within one period of the manager's start: half a period late, at random.
    assert_eq!(runner.times("check"), [5, 15]);
    assert_eq!(runner.runs()[0].command, ["check", "localhost:8080"]);

    // Added later: at once.
    m.add_container("pod-2", "web", "id-2", &c, target(vec![]));
    clock.settle(2).await;
    assert_eq!(runner.times("check"), [5, 15, 16]);
}
