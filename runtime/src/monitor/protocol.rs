//! The monitor's control protocol: one JSON request per line on the pod's unix socket
//! (`<state>/pods/<id>/monitor.sock`), answered by JSON lines. `Exec` carries the exec
//! process's stdin, stdout and stderr as SCM_RIGHTS descriptors in the same message, so
//! the process talks to the caller's terminal or pipes directly, with no copying.
//!
//! Pods whose plan is `managed` (CRI) start with no containers: the agent adds them with
//! `CreateContainer`, then drives each through `StartContainer`, `StopContainer` and
//! `RemoveContainer`, as kubelet asks. `Attach` connects descriptors to a running
//! container's stdio; the monitor copies between them and answers `Exited` on the same
//! connection when the container exits.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::cgroups::Resources;
use crate::plan::ContainerPlan;
use crate::status::PodStatus;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Stop every container gracefully; with `remove`, tear the pod down and exit.
    Stop {
        grace_secs: Option<u64>,
        remove: bool,
    },
    /// Run a process in a running container. Three descriptors accompany the request.
    Exec {
        container: String,
        args: Vec<String>,
        tty: bool,
    },
    /// Keep the pod tied to this connection: if it closes without `Release`, the pod is
    /// stopped and removed (the foreground `podrun run` died).
    Hold,
    Release,
    /// Managed pods: add a container in state Created (`Waiting{ContainerCreated}`).
    CreateContainer {
        plan: Box<ContainerPlan>,
    },
    /// Start a created container; answered once its process runs.
    StartContainer {
        id: String,
    },
    /// Send the stop signal, SIGKILL after `timeout_secs` (at once when <= 0); answered
    /// once the container exited and its output is in the log.
    StopContainer {
        id: String,
        timeout_secs: i64,
    },
    /// Kill (if running) and forget a container: its cgroup and data dir go too.
    RemoveContainer {
        id: String,
    },
    /// Reopen the container's log file at its path (after rotation renamed it).
    ReopenLog {
        id: String,
    },
    /// Apply new cgroup limits to a container and keep them in the plan.
    UpdateResources {
        id: String,
        resources: Resources,
    },
    /// Connect to a running container's stdio. One descriptor accompanies the request
    /// for each of `stdin`, `stdout`, `stderr` that is true, in that order. Answered `Ok`,
    /// then `Exited` on the same connection once the container exits.
    Attach {
        id: String,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    /// Set the terminal size of a tty container.
    Resize {
        id: String,
        width: u16,
        height: u16,
    },
    /// SIGKILL an exec process of this pod (ExecSync timeout).
    KillExec {
        pid: i32,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Status(PodStatus),
    Ok,
    Started { pid: i32 },
    Exited { exit_code: i32 },
    Error { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connect to pod monitor {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talk to pod monitor: {0}")]
    Io(#[from] std::io::Error),
    #[error("pod monitor: {0}")]
    Sys(#[from] nix::Error),
    #[error("bad message from pod monitor: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the pod monitor closed the connection")]
    Closed,
    #[error("{0}")]
    Remote(String),
}

/// Run `f` with a path to `socket` short enough for a unix socket address (108 bytes):
/// long state roots are reached through an O_PATH descriptor of the socket's directory.
pub fn with_short_path<T>(
    socket: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    if socket.as_os_str().len() < 100 {
        return f(socket);
    }
    let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
        return f(socket);
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)?;
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    f(&short)
}

/// Connect to a monitor socket, whatever the length of its path.
pub fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    with_short_path(socket, |p| UnixStream::connect(p))
}

/// A client connection to one pod monitor.
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

/// The connection's socket, to poll: a holder learns of the monitor's end as a hangup.
impl std::os::fd::AsFd for Client {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Self, ProtocolError> {
        let stream = connect(socket).map_err(|source| ProtocolError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), ProtocolError> {
        self.stream.set_read_timeout(t)?;
        Ok(())
    }

    pub fn send(&mut self, req: &Request) -> Result<(), ProtocolError> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.stream.write_all(&line)?;
        Ok(())
    }

    /// Send a request with descriptors attached.
    pub fn send_with_fds(&mut self, req: &Request, fds: &[RawFd]) -> Result<(), ProtocolError> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        let iov = [IoSlice::new(&line)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let sent = sendmsg::<()>(
            self.stream.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            None,
        )?;
        if sent < line.len() {
            self.stream.write_all(&line[sent..])?;
        }
        Ok(())
    }

    pub fn recv(&mut self) -> Result<Response, ProtocolError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ProtocolError::Closed);
        }
        let resp: Response = serde_json::from_str(&line)?;
        if let Response::Error { message } = resp {
            return Err(ProtocolError::Remote(message));
        }
        Ok(resp)
    }

    pub fn call(&mut self, req: &Request) -> Result<Response, ProtocolError> {
        self.send(req)?;
        self.recv()
    }

    /// Send a request with descriptors and read the first answer.
    pub fn call_with_fds(
        &mut self,
        req: &Request,
        fds: &[RawFd],
    ) -> Result<Response, ProtocolError> {
        self.send_with_fds(req, fds)?;
        self.recv()
    }

    /// One request on a fresh connection, with a read timeout; for calls that answer
    /// once (everything but `Exec`, `Attach` and `Hold`).
    pub fn request(
        socket: &Path,
        req: &Request,
        timeout: Option<Duration>,
    ) -> Result<Response, ProtocolError> {
        let mut c = Self::connect(socket)?;
        c.set_timeout(timeout)?;
        c.call(req)
    }

    /// The connection itself, e.g. to poll it or hand it to an async runtime.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

/// Server side: read one request line and any descriptors sent with it.
pub fn read_request(stream: &UnixStream) -> Result<(Request, Vec<OwnedFd>), ProtocolError> {
    let mut data = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 8192];
    while !data.contains(&b'\n') {
        let mut cmsg = nix::cmsg_space!([RawFd; 8]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just installed these descriptors in this process.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { crate::process::owned(fd) }),
                );
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return Err(ProtocolError::Closed);
        }
        data.extend_from_slice(&buf[..n]);
        if data.len() > 1 << 20 {
            return Err(ProtocolError::Remote("request too large".into()));
        }
    }
    let end = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    Ok((serde_json::from_slice(&data[..end])?, fds))
}

pub fn write_response(mut stream: &UnixStream, resp: &Response) -> Result<(), ProtocolError> {
    let mut line = serde_json::to_vec(resp)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_requests_are_snake_case_json() {
        let cases = [
            (
                Request::StartContainer { id: "c1".into() },
                r#"{"start_container":{"id":"c1"}}"#,
            ),
            (
                Request::StopContainer {
                    id: "c1".into(),
                    timeout_secs: -1,
                },
                r#"{"stop_container":{"id":"c1","timeout_secs":-1}}"#,
            ),
            (
                Request::RemoveContainer { id: "c1".into() },
                r#"{"remove_container":{"id":"c1"}}"#,
            ),
            (
                Request::ReopenLog { id: "c1".into() },
                r#"{"reopen_log":{"id":"c1"}}"#,
            ),
            (
                Request::Attach {
                    id: "c1".into(),
                    stdin: true,
                    stdout: true,
                    stderr: false,
                },
                r#"{"attach":{"id":"c1","stdin":true,"stdout":true,"stderr":false}}"#,
            ),
            (
                Request::Resize {
                    id: "c1".into(),
                    width: 80,
                    height: 24,
                },
                r#"{"resize":{"id":"c1","width":80,"height":24}}"#,
            ),
            (Request::KillExec { pid: 42 }, r#"{"kill_exec":{"pid":42}}"#),
        ];
        for (req, json) in cases {
            assert_eq!(serde_json::to_string(&req).unwrap(), json);
            assert_eq!(serde_json::from_str::<Request>(json).unwrap(), req);
        }
        let update: Request = serde_json::from_str(
            r#"{"update_resources":{"id":"c1","resources":{"cpu_shares":512,"cpu_quota":null,"cpu_period":null,"memory_limit":1048576,"pids_limit":null,"cpuset_cpus":null,"cpuset_mems":null}}}"#,
        )
        .unwrap();
        assert!(matches!(
            update,
            Request::UpdateResources { ref id, ref resources }
                if id == "c1" && resources.memory_limit == Some(1 << 20)
        ));
    }

    #[test]
    fn request_round_trip_with_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut client = Client {
            reader: BufReader::new(a.try_clone().unwrap()),
            stream: a,
        };
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let req = Request::Exec {
            container: "web".into(),
            args: vec!["ls".into()],
            tty: false,
        };
        client
            .send_with_fds(&req, &[devnull.as_raw_fd(); 3])
            .unwrap();
        let (got, fds) = read_request(&b).unwrap();
        assert_eq!(got, req);
        assert_eq!(fds.len(), 3);
        write_response(&b, &Response::Exited { exit_code: 3 }).unwrap();
        assert_eq!(client.recv().unwrap(), Response::Exited { exit_code: 3 });
        write_response(
            &b,
            &Response::Error {
                message: "no such container".into(),
            },
        )
        .unwrap();
        assert!(matches!(client.recv(), Err(ProtocolError::Remote(m)) if m == "no such container"));
    }
}
