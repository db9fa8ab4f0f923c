//! ExecSync, and Exec, Attach and PortForward: the latter three return a URL of the
//! streaming server, which calls back into `CriStreams` once the client connects.
//! Exec processes get pipes passed to the pod monitor, which forks them into the
//! container; or, with a terminal, a console socket: the process opens its terminal in
//! the container's own devpts (so `tty` names it there) and sends the master back,
//! which the agent keeps (resizes are a local ioctl).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use podrun_cri_proto::v1 as cri;
use podrun_runtime::monitor::protocol::{Client, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Status;
use tracing::debug;

use super::{blocking, monitor_socket, protocol_status, Cri};
use crate::streaming::{AsyncStream, BoxFuture, StreamRuntime, Streams};

/// Per-stream cap of ExecSync output, as kubelet's.
const MAX_EXEC_SYNC_OUTPUT: usize = 16 << 20;

fn running_container(cri: &Cri, id: &str) -> Result<(String, PathBuf), Status> {
    let (c, sb) = super::container::find(cri, id)?;
    Ok((c.id, sb.plan.state_dir))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Status> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Status::internal(format!("pipe: {e}")))
}

fn read_capped(fd: OwnedFd) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_EXEC_SYNC_OUTPUT.saturating_sub(out.len());
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        out
    })
}

/// Start an exec in the monitor; returns the connection (for the exit code) and the
/// exec's pid as the monitor knows it. `fds` are the process's stdin, stdout and stderr,
/// or (with `tty`) one console socket.
fn start_exec(
    dir: &std::path::Path,
    container: &str,
    cmd: Vec<String>,
    tty: bool,
    fds: &[&OwnedFd],
) -> Result<(Client, i32), Status> {
    let mut client = Client::connect(&monitor_socket(dir)).map_err(protocol_status)?;
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    client
        .send_with_fds(
            &Request::Exec {
                container: container.to_owned(),
                args: cmd,
                tty,
            },
            &raw,
        )
        .map_err(protocol_status)?;
    client
        .set_timeout(Some(Duration::from_secs(30)))
        .map_err(protocol_status)?;
    match client.recv().map_err(protocol_status)? {
        Response::Started { pid } => Ok((client, pid)),
        other => Err(Status::internal(format!(
            "unexpected monitor answer to exec: {other:?}"
        ))),
    }
}

fn wait_exit(client: &mut Client, timeout: Option<Duration>) -> Result<i32, Status> {
    client.set_timeout(timeout).map_err(protocol_status)?;
    loop {
        match client.recv() {
            Ok(Response::Exited { exit_code }) => return Ok(exit_code),
            Ok(_) => continue,
            Err(podrun_runtime::monitor::protocol::ProtocolError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Status::deadline_exceeded("timeout"))
            }
            Err(e) => return Err(protocol_status(e)),
        }
    }
}

/// The monitor-side name of a container for Exec: the monitor finds containers by name.
fn monitor_name(cri: &Cri, id: &str) -> String {
    cri.store
        .find_container(id)
        .and_then(|c| c.config.metadata.map(|m| m.name))
        .unwrap_or_default()
}

pub async fn exec_sync(
    cri: &Arc<Cri>,
    req: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, Status> {
    if req.cmd.is_empty() {
        return Err(Status::invalid_argument("cmd: must not be empty"));
    }
    let (id, dir) = running_container(cri, &req.container_id)?;
    let name = monitor_name(cri, &id);
    let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
    blocking(move || {
        let null = std::fs::File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| Status::internal(format!("open /dev/null: {e}")))?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (mut client, pid) = start_exec(
            &dir,
            &name,
            req.cmd.clone(),
            false,
            &[&null, &out_w, &err_w],
        )?;
        drop((out_w, err_w, null));
        let out = read_capped(out_r);
        let err = read_capped(err_r);
        match wait_exit(&mut client, timeout) {
            Ok(exit_code) => Ok(cri::ExecSyncResponse {
                stdout: out.join().unwrap_or_default(),
                stderr: err.join().unwrap_or_default(),
                exit_code,
            }),
            Err(e) if e.code() == tonic::Code::DeadlineExceeded => {
                let _ =
                    super::monitor_call(&dir, &Request::KillExec { pid }, Duration::from_secs(10));
                Err(Status::deadline_exceeded(format!(
                    "command {:?} timed out after {}s: deadline exceeded",
                    req.cmd, req.timeout
                )))
            }
            Err(e) => Err(e),
        }
    })
    .await
}

fn stream_server(cri: &Cri) -> Result<&crate::streaming::StreamServer, Status> {
    cri.stream
        .get()
        .ok_or_else(|| Status::unavailable("the streaming server is not running"))
}

pub async fn exec(cri: &Arc<Cri>, req: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
    running_container(cri, &req.container_id)?;
    stream_server(cri)?.get_exec(&req)
}

pub async fn attach(
    cri: &Arc<Cri>,
    req: cri::AttachRequest,
) -> Result<cri::AttachResponse, Status> {
    running_container(cri, &req.container_id)?;
    stream_server(cri)?.get_attach(&req)
}

pub async fn port_forward(
    cri: &Arc<Cri>,
    req: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    cri.store
        .find_sandbox(&req.pod_sandbox_id)
        .ok_or_else(|| Status::not_found(format!("sandbox {:?} not found", req.pod_sandbox_id)))?;
    stream_server(cri)?.get_port_forward(&req)
}

/// The streaming server's way into the runtime.
pub struct CriStreams(pub Arc<Cri>);

/// Copy until EOF or an error on either side, flushing as data comes (interactive
/// streams); optionally shut the writer down at the end.
async fn copy_until_eof(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    shutdown: bool,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                let _ = to.flush().await;
            }
        }
    }
    if shutdown {
        let _ = to.shutdown().await;
    }
}

/// Copy a client's stream into a pipe or terminal write end until EOF.
async fn pump_in(from: Box<dyn tokio::io::AsyncRead + Send + Unpin>, to: OwnedFd) {
    copy_until_eof(
        from,
        tokio::fs::File::from_std(std::fs::File::from(to)),
        false,
    )
    .await
}

/// Copy a pipe or terminal read end to a client's stream until EOF (EIO on a terminal
/// whose other side closed).
async fn pump_out(from: OwnedFd, to: Box<dyn tokio::io::AsyncWrite + Send + Unpin>) {
    copy_until_eof(
        tokio::fs::File::from_std(std::fs::File::from(from)),
        to,
        true,
    )
    .await
}

type Pumps = (
    Option<tokio::task::JoinHandle<()>>,
    Vec<tokio::task::JoinHandle<()>>,
);

/// Connect the client's streams to the process's pipes: stdin into `in_w`, `out_r` and
/// `err_r` out to stdout and stderr. Returns the input task and the output tasks.
fn spawn_pumps(
    streams: &mut Streams,
    in_w: Option<OwnedFd>,
    out_r: Option<OwnedFd>,
    err_r: Option<OwnedFd>,
) -> Pumps {
    let input = match (streams.stdin.take(), in_w) {
        (Some(stdin), Some(w)) => Some(tokio::spawn(pump_in(stdin, w))),
        _ => None,
    };
    let mut readers = Vec::new();
    if let (Some(r), Some(out)) = (out_r, streams.stdout.take()) {
        readers.push(tokio::spawn(pump_out(r, out)));
    }
    if let (Some(r), Some(err)) = (err_r, streams.stderr.take()) {
        readers.push(tokio::spawn(pump_out(r, err)));
    }
    (input, readers)
}

impl CriStreams {
    async fn exec_inner(
        &self,
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        mut streams: Streams,
    ) -> Result<i32, String> {
        let (_, dir) =
            running_container(&self.0, &container_id).map_err(|e| e.message().to_owned())?;
        let name = monitor_name(&self.0, &container_id);
        let mut tasks = Vec::new();
        let (mut client, output) = if tty {
            let (ours, theirs) =
                podrun_runtime::process::console_socketpair().map_err(|e| e.to_string())?;
            // A size the client sent already is the terminal's size from the start.
            if let Some(Ok(size)) = streams.resize.as_mut().map(|rx| rx.try_recv()) {
                podrun_runtime::process::set_initial_terminal_size(&ours, size.height, size.width)
                    .map_err(|e| e.to_string())?;
            }
            let (client, master) = tokio::task::spawn_blocking(move || {
                let (client, _) = start_exec(&dir, &name, cmd, true, &[&theirs])
                    .map_err(|e| e.message().to_owned())?;
                drop(theirs);
                // Sent before the process's execve, so already here once it started.
                let master =
                    podrun_runtime::process::receive_terminal(&ours).map_err(|e| e.to_string())?;
                Ok::<_, String>((client, master))
            })
            .await
            .map_err(|e| e.to_string())??;
            if let Some(mut rx) = streams.resize.take() {
                let dup = master.try_clone().map_err(|e| e.to_string())?;
                tasks.push(tokio::spawn(async move {
                    while let Some(size) = rx.recv().await {
                        let _ = podrun_runtime::process::set_terminal_size(
                            &dup,
                            size.height,
                            size.width,
                        );
                    }
                }));
            }
            if let Some(stdin) = streams.stdin.take() {
                let w = master.try_clone().map_err(|e| e.to_string())?;
                tasks.push(tokio::spawn(pump_in(stdin, w)));
            }
            let out = streams.stdout.take();
            let reader = tokio::spawn(async move {
                if let Some(out) = out {
                    pump_out(master, out).await;
                }
            });
            (client, reader)
        } else {
            let null = || {
                std::fs::File::open("/dev/null")
                    .map(OwnedFd::from)
                    .map_err(|e| e.to_string())
            };
            let (in_r, in_w) = match &streams.stdin {
                Some(_) => {
                    let (r, w) = pipe().map_err(|e| e.message().to_owned())?;
                    (r, Some(w))
                }
                None => (null()?, None),
            };
            let (out_r, out_w) = match &streams.stdout {
                Some(_) => {
                    let (r, w) = pipe().map_err(|e| e.message().to_owned())?;
                    (Some(r), w)
                }
                None => (None, null()?),
            };
            let (err_r, err_w) = match &streams.stderr {
                Some(_) => {
                    let (r, w) = pipe().map_err(|e| e.message().to_owned())?;
                    (Some(r), w)
                }
                None => (None, null()?),
            };
            let (client, _) = tokio::task::spawn_blocking(move || {
                let r = start_exec(&dir, &name, cmd, false, &[&in_r, &out_w, &err_w]);
                drop((in_r, out_w, err_w));
                r
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.message().to_owned())?;
            let (input, readers) = spawn_pumps(&mut streams, in_w, out_r, err_r);
            tasks.extend(input);
            let reader = tokio::spawn(async move {
                for r in readers {
                    let _ = r.await;
                }
            });
            (client, reader)
        };
        let code = tokio::task::spawn_blocking(move || wait_exit(&mut client, None))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.message().to_owned())?;
        // Output written before the exit is delivered before the status. A terminal
        // reader ends with EIO once every slave copy is closed; bound the wait in case a
        // background process keeps one open.
        let _ = tokio::time::timeout(Duration::from_secs(2), output).await;
        for t in tasks {
            t.abort();
        }
        debug!(container = %container_id, exit_code = code, "exec finished");
        Ok(code)
    }

    async fn attach_inner(
        &self,
        container_id: String,
        tty: bool,
        mut streams: Streams,
    ) -> Result<(), String> {
        let (id, dir) =
            running_container(&self.0, &container_id).map_err(|e| e.message().to_owned())?;
        let want_in = streams.stdin.is_some();
        let want_out = streams.stdout.is_some();
        let want_err = streams.stderr.is_some() && !tty;
        let (in_r, in_w) = if want_in {
            let (r, w) = pipe().map_err(|e| e.message().to_owned())?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let (out_r, out_w) = if want_out {
            let (r, w) = pipe().map_err(|e| e.message().to_owned())?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let (err_r, err_w) = if want_err {
            let (r, w) = pipe().map_err(|e| e.message().to_owned())?;
            (Some(r), Some(w))
        } else {
            (None, None)
        };
        let dir2 = dir.clone();
        let id2 = id.clone();
        let mut client = tokio::task::spawn_blocking(move || -> Result<Client, String> {
            let mut client = Client::connect(&monitor_socket(&dir2)).map_err(|e| e.to_string())?;
            let fds: Vec<i32> = [&in_r, &out_w, &err_w]
                .iter()
                .filter_map(|f| f.as_ref().map(|f| f.as_raw_fd()))
                .collect();
            client
                .send_with_fds(
                    &Request::Attach {
                        id: id2,
                        stdin: want_in,
                        stdout: want_out,
                        stderr: want_err,
                    },
                    &fds,
                )
                .map_err(|e| e.to_string())?;
            drop((in_r, out_w, err_w));
            client
                .set_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            client.recv().map_err(|e| e.to_string())?;
            Ok(client)
        })
        .await
        .map_err(|e| e.to_string())??;
        let mut tasks = Vec::new();
        if let Some(mut rx) = streams.resize.take() {
            let dir3 = dir.clone();
            let id3 = id.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(size) = rx.recv().await {
                    let dir = dir3.clone();
                    let id = id3.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        super::monitor_call(
                            &dir,
                            &Request::Resize {
                                id,
                                width: size.width,
                                height: size.height,
                            },
                            Duration::from_secs(5),
                        )
                    })
                    .await;
                }
            }));
        }
        let (input, readers) = spawn_pumps(&mut streams, in_w, out_r, err_r);
        tasks.extend(input);
        // Attached until the container exits (the monitor answers and closes our
        // descriptors) or the client goes away (its streams end).
        let waiter = tokio::task::spawn_blocking(move || wait_exit(&mut client, None));
        let outputs = async {
            for r in readers {
                let _ = r.await;
            }
        };
        tokio::select! {
            _ = waiter => {}
            _ = outputs => {}
        }
        for t in tasks {
            t.abort();
        }
        Ok(())
    }

    async fn port_forward_inner(
        &self,
        sandbox_id: String,
        port: u16,
    ) -> Result<Box<dyn AsyncStream>, String> {
        let sb = self
            .0
            .store
            .find_sandbox(&sandbox_id)
            .ok_or_else(|| format!("sandbox {sandbox_id:?} not found"))?;
        let dir = sb.plan.state_dir.clone();
        let host_network = sb.plan.host_network;
        let stream = tokio::task::spawn_blocking(move || -> Result<std::net::TcpStream, String> {
            if host_network {
                return std::net::TcpStream::connect(("127.0.0.1", port))
                    .map_err(|e| format!("connect to port {port}: {e}"));
            }
            let status = super::monitor_status(&dir)
                .ok_or_else(|| format!("sandbox {sandbox_id} is not running"))?;
            let ns_path = format!("/proc/{}/ns/net", status.monitor_pid);
            // A thread of its own enters the pod's network namespace: the socket stays
            // bound to that namespace, and no other thread ever runs in it.
            std::thread::spawn(move || -> Result<std::net::TcpStream, String> {
                let ns =
                    std::fs::File::open(&ns_path).map_err(|e| format!("open {ns_path}: {e}"))?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("enter the pod network namespace: {e}"))?;
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .map_err(|e| format!("connect to port {port} in the pod: {e}"))
            })
            .join()
            .map_err(|_| "port-forward thread panicked".to_owned())?
        })
        .await
        .map_err(|e| e.to_string())??;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        let s = tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())?;
        Ok(Box::new(s))
    }
}

impl StreamRuntime for CriStreams {
    fn exec(
        &self,
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        streams: Streams,
    ) -> BoxFuture<Result<i32, String>> {
        let me = CriStreams(self.0.clone());
        Box::pin(async move { me.exec_inner(container_id, cmd, tty, streams).await })
    }

    fn attach(
        &self,
        container_id: String,
        tty: bool,
        streams: Streams,
    ) -> BoxFuture<Result<(), String>> {
        let me = CriStreams(self.0.clone());
        Box::pin(async move { me.attach_inner(container_id, tty, streams).await })
    }

    fn port_forward(
        &self,
        sandbox_id: String,
        port: u16,
    ) -> BoxFuture<Result<Box<dyn AsyncStream>, String>> {
        let me = CriStreams(self.0.clone());
        Box::pin(async move { me.port_forward_inner(sandbox_id, port).await })
    }
}
