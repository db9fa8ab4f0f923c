//! postStart / preStop handlers.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ExecAction, HTTPGetAction, HTTPHeader, LifecycleHandler, SleepAction, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::fakes::{closed_port, drain, http_server, target, FakeRuntime};
use crate::kubelet::prober::{format_pod, run_hook, HookError};

const LONG: Duration = Duration::from_secs(30);

fn http_hook(port: u16, path: &str) -> LifecycleHandler {
    LifecycleHandler {
        http_get: Some(HTTPGetAction {
            port: IntOrString::Int(i32::from(port)),
            path: Some(path.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn exec_hook() {
    let dir = tempfile::tempdir().unwrap();
    let t = FakeRuntime::default().serve(dir.path()).await;
    let exec = |cmd: &[&str]| LifecycleHandler {
        exec: Some(ExecAction {
            command: Some(cmd.iter().map(|s| s.to_string()).collect()),
        }),
        ..Default::default()
    };
    run_hook(&exec(&["true"]), &t, LONG).await.unwrap();

    let err = run_hook(&exec(&["false", "-x"]), &t, LONG)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        HookError::Exec {
            command: vec!["false".into(), "-x".into()],
            error: "command 'false -x' exited with 1: err\n".into(),
            output: "out\nerr\n".into(),
        }
    );
    assert_eq!(
        err.message("web", &format_pod("nginx", "default", "u-1")),
        "Exec lifecycle hook ([false -x]) for Container \"web\" in Pod \"nginx_default(u-1)\" failed - \
         error: command 'false -x' exited with 1: err\n, message: \"out\\nerr\\n\""
    );
    assert_eq!(
        err.to_string(),
        "Exec lifecycle hook ([false -x]) failed - error: command 'false -x' exited with 1: err\n, message: \"out\\nerr\\n\""
    );
}

#[tokio::test]
async fn http_hook_ignores_the_status() {
    let (port, mut seen) = http_server(None).await;
    run_hook(&http_hook(port, "/fail"), &target(vec![]), LONG)
        .await
        .unwrap();
    let got = drain(&mut seen).remove(0);
    assert_eq!(got.path, "/fail");
    assert_eq!(got.headers["user-agent"], "kube-lifecycle/1.33");

    let closed = closed_port().await;
    let err = run_hook(&http_hook(closed, "/stop"), &target(vec![]), LONG)
        .await
        .unwrap_err();
    let error = format!("Get \"http://127.0.0.1:{closed}/stop\": dial tcp 127.0.0.1:{closed}: connect: connection refused");
    assert_eq!(
        err,
        HookError::Http {
            path: "/stop".into(),
            error: error.clone()
        }
    );
    assert_eq!(
        err.message("web", "nginx_default(u-1)"),
        format!("HTTP lifecycle hook (/stop) for Container \"web\" in Pod \"nginx_default(u-1)\" failed - error: {error}")
    );
}

#[tokio::test]
async fn http_hook_times_out() {
    let (port, _seen) = http_server(None).await;
    let err = run_hook(
        &http_hook(port, "/slow"),
        &target(vec![]),
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    match err {
        HookError::Http { error, .. } => assert!(
            error.ends_with(
                "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            ),
            "{error}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn https_hook_falls_back_to_http() {
    let (port, mut seen) = http_server(None).await;
    let mut hook = http_hook(port, "/ok");
    let action = hook.http_get.as_mut().unwrap();
    action.scheme = Some("HTTPS".into());
    action.http_headers = Some(vec![
        HTTPHeader {
            name: "Authorization".into(),
            value: "Bearer x".into(),
        },
        HTTPHeader {
            name: "X-Keep".into(),
            value: "1".into(),
        },
    ]);
    run_hook(&hook, &target(vec![]), LONG).await.unwrap();
    let got = drain(&mut seen);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].headers.get("authorization").is_none());
    assert_eq!(got[0].headers["x-keep"], "1");
}

#[tokio::test(start_paused = true)]
async fn sleep_hook() {
    let sleep = |seconds| LifecycleHandler {
        sleep: Some(SleepAction { seconds }),
        ..Default::default()
    };
    let t = target(vec![]);
    let start = tokio::time::Instant::now();
    run_hook(&sleep(5), &t, LONG).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(5));

    let start = tokio::time::Instant::now();
    let err = run_hook(&sleep(60), &t, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(
        err.message("web", "p_ns(u)"),
        "Sleep lifecycle hook (60) for Container \"web\" in Pod \"p_ns(u)\" failed - error: container terminated before sleep hook finished"
    );
}

#[tokio::test]
async fn no_handler() {
    let tcp = LifecycleHandler {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(80),
            host: None,
        }),
        ..Default::default()
    };
    let err = run_hook(&tcp, &target(vec![]), LONG).await.unwrap_err();
    assert_eq!(err, HookError::Invalid);
    assert_eq!(
        err.message("web", "p"),
        "Cannot run handler: invalid handler"
    );
}
