//! Unit tests of the monitor's logic that needs no root.

use super::attach::copy_to_attaches;
use super::exits::should_restart;
use super::setup::apply_sysctls;
use super::status::{pod_phase, ContainerView};
use super::*;
use crate::plan::RestartPolicy::{Always, Never, OnFailure};
use crate::status::PodPhase;
use ContainerKind::{App, Init, Sidecar};

fn v(kind: ContainerKind, started_once: bool, done: bool, exit_code: Option<i32>) -> ContainerView {
    ContainerView {
        kind,
        started_once,
        done,
        exit_code,
    }
}

#[test]
fn phases_follow_kubernetes() {
    assert_eq!(
        pod_phase(&[v(Init, true, false, None), v(App, false, false, None)]),
        PodPhase::Pending
    );
    assert_eq!(
        pod_phase(&[v(Init, true, true, Some(1)), v(App, false, false, None)]),
        PodPhase::Failed
    );
    assert_eq!(
        pod_phase(&[v(Init, true, true, Some(0)), v(App, true, false, None)]),
        PodPhase::Running
    );
    assert_eq!(
        pod_phase(&[v(App, true, true, Some(0)), v(App, true, true, Some(0))]),
        PodPhase::Succeeded
    );
    assert_eq!(
        pod_phase(&[v(App, true, true, Some(0)), v(App, true, true, Some(2))]),
        PodPhase::Failed
    );
    assert_eq!(
        pod_phase(&[v(App, true, true, Some(0)), v(App, true, false, None)]),
        PodPhase::Running
    );
    // A running sidecar does not keep a finished pod running.
    assert_eq!(
        pod_phase(&[v(Sidecar, true, false, None), v(App, true, true, Some(0))]),
        PodPhase::Succeeded
    );
}

fn nonblocking_pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    (r, w)
}

fn read_now(fd: &OwnedFd) -> Vec<u8> {
    set_nonblocking(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while let Ok(n) = nix::unistd::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn attached_output_queues_what_the_client_cannot_take_yet() {
    let (r, w) = nonblocking_pipe();
    let mut out = AttachedOutput::new(w);
    // Far more than a pipe holds: the rest waits, capped.
    let big = vec![b'x'; 3 * ATTACH_PENDING_MAX];
    assert!(out.push(&big));
    assert_eq!(out.pending.len(), ATTACH_PENDING_MAX);
    let mut got = read_now(&r).len();
    while !out.pending.is_empty() {
        assert!(out.flush());
        got += read_now(&r).len();
    }
    assert!(got > ATTACH_PENDING_MAX && got < big.len());
    // Order is kept: new data goes after what is pending.
    assert!(out.push(b"abc"));
    assert_eq!(read_now(&r), b"abc");
    // A client that went away breaks the output.
    drop(r);
    assert!(!out.push(b"more"));
}

#[test]
fn output_goes_to_the_matching_attached_stream() {
    let (a, _peer) = UnixStream::pair().unwrap();
    let (out_r, out_w) = nonblocking_pipe();
    let (err_r, err_w) = nonblocking_pipe();
    let mut attaches = vec![Attachment {
        stream: a,
        stdin: None,
        stdout: Some(AttachedOutput::new(out_w)),
        stderr: Some(AttachedOutput::new(err_w)),
        exit_code: None,
        finish_by: None,
        gone: false,
    }];
    copy_to_attaches(&mut attaches, false, Stream::Stdout, b"o1 ");
    copy_to_attaches(&mut attaches, false, Stream::Stderr, b"e1 ");
    // A terminal has one stream: it all goes to stdout.
    copy_to_attaches(&mut attaches, true, Stream::Stderr, b"t1");
    assert_eq!(read_now(&out_r), b"o1 t1");
    assert_eq!(read_now(&err_r), b"e1 ");
    assert!(attaches[0].flushed());
    drop(err_r);
    copy_to_attaches(&mut attaches, false, Stream::Stderr, b"lost");
    assert!(attaches[0].stderr.is_none(), "broken output is dropped");
    assert!(attaches[0].stdout.is_some());
}

#[test]
fn sysctls_are_refused_before_anything_is_written() {
    let bad: std::collections::BTreeMap<String, String> =
        [("net/../../etc/passwd".to_owned(), "x".to_owned())].into();
    let err = apply_sysctls(&bad).unwrap_err().to_string();
    assert!(err.contains("sysctl net/../../etc/passwd"), "{err}");
    assert!(apply_sysctls(&Default::default()).is_ok());
}

#[test]
fn restarts_follow_policy_and_kind() {
    assert!(should_restart(App, Always, 0, false));
    assert!(!should_restart(App, OnFailure, 0, false));
    assert!(should_restart(App, OnFailure, 1, false));
    assert!(!should_restart(App, Never, 1, false));
    assert!(!should_restart(Init, Always, 0, false));
    assert!(should_restart(Init, Always, 1, false));
    assert!(should_restart(Init, OnFailure, 1, false));
    assert!(!should_restart(Init, Never, 1, false));
    assert!(should_restart(Sidecar, Never, 0, false));
    assert!(!should_restart(Sidecar, Always, 1, true));
}
