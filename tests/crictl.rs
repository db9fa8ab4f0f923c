//! The real crictl (cri-tools v1.29.0, a Go gRPC client as kubelet is) drives
//! `podrun agent`: every command of the README's crictl session, with the outputs a user
//! reads. The binary is found by [`crictl_bin`]; a test that cannot find it fails.

mod common;
mod cri_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cri_common::{unique, Agent};
use serde_json::Value;

const CRICTL_XZ: &str = "../shared/tools/crictl-v1.29.0-linux-amd64.xz";
const WAIT: Duration = Duration::from_secs(30);

/// crictl: `$CRICTL`, else `target/tools/crictl` (put there by scripts/setup.sh), else
/// unpacked from the shared tools folder beside this repository.
fn crictl_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CRICTL") {
            return PathBuf::from(p);
        }
        let repo = common::repo();
        let unpacked = repo.join("target/tools/crictl");
        if unpacked.exists() {
            return unpacked;
        }
        let xz = repo.join(CRICTL_XZ);
        assert!(
            xz.exists(),
            "crictl v1.29.0 is needed: set CRICTL=/path/to/crictl, or run scripts/setup.sh \
             with {} present (cri-tools v1.29.0, linux/amd64, xz-compressed)",
            xz.display()
        );
        std::fs::create_dir_all(unpacked.parent().unwrap()).unwrap();
        let tmp = unpacked.with_extension(format!("tmp{}", std::process::id()));
        let out = std::fs::File::create(&tmp).unwrap();
        let st = Command::new("xz")
            .arg("-dc")
            .arg(&xz)
            .stdout(out)
            .status()
            .expect("run xz");
        assert!(st.success(), "xz -dc {}", xz.display());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &unpacked).unwrap();
        unpacked
    })
    .clone()
}

/// crictl pointed at one agent, with no host config (/etc/crictl.yaml) in play.
struct Crictl {
    bin: PathBuf,
    endpoint: String,
    config: PathBuf,
    dir: PathBuf,
}

impl Crictl {
    fn new(a: &Agent) -> Crictl {
        assert!(
            common::is_root(),
            "the crictl tests run pods: run them as root"
        );
        let dir = a.env.dir.path().to_path_buf();
        let config = dir.join("crictl.yaml");
        std::fs::write(&config, "").unwrap();
        Crictl {
            bin: crictl_bin(),
            endpoint: format!("unix://{}", a.socket.display()),
            config,
            dir,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config")
            .arg(&self.config)
            .args(["--runtime-endpoint", &self.endpoint])
            .args(["--image-endpoint", &self.endpoint])
            .args(["--timeout", "60s"])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run crictl")
    }

    /// Run and require success; stdout.
    fn ok(&self, a: &Agent, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "crictl {args:?} failed ({}):\nstdout: {}\nstderr: {}\nagent log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            a.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, a: &Agent, args: &[&str]) -> Value {
        let out = self.ok(a, args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("crictl {args:?}: {e}: {out}"))
    }

    /// A file in the test's dir holding `v` as JSON, for runp and create.
    fn file(&self, name: &str, v: &Value) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// The README's sandbox file with this test's name, uid and log directory.
    fn pod_config(&self, name: &str) -> Value {
        let mut v = example("sandbox.json");
        v["metadata"]["name"] = Value::from(name);
        v["metadata"]["uid"] = Value::from(unique("uid"));
        v["hostname"] = Value::from(name);
        v["log_directory"] = Value::from(self.dir.join("podlogs").join(name).to_str().unwrap());
        v["labels"] = serde_json::json!({"app": name});
        v
    }

    /// runp, create and start: (pod id, container id, pod config file).
    fn pod_with(&self, a: &Agent, name: &str, container: Value) -> (String, String, String) {
        let pod_file = self.file(&format!("{name}-pod.json"), &self.pod_config(name));
        let ctr_file = self.file(&format!("{name}-ctr.json"), &container);
        let pod = self.ok(a, &["runp", &pod_file]).trim().to_owned();
        assert_eq!(pod.len(), 64, "runp prints the sandbox id: {pod:?}");
        let ctr = self
            .ok(a, &["create", &pod, &ctr_file, &pod_file])
            .trim()
            .to_owned();
        assert_eq!(ctr.len(), 64, "create prints the container id: {ctr:?}");
        assert_eq!(self.ok(a, &["start", &ctr]).trim(), ctr);
        (pod, ctr, pod_file)
    }
}

/// A file of examples/crictl, which the README's session uses.
fn example(file: &str) -> Value {
    let p = common::repo().join("examples/crictl").join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn busybox(name: &str, command: &[&str]) -> Value {
    serde_json::json!({
        "metadata": {"name": name},
        "image": {"image": cri_common::BUSYBOX},
        "command": command,
        "log_path": format!("{name}.log"),
        "linux": {}
    })
}

/// A process whose stdin, stdout and stderr are the slave of a new pseudo-terminal, as
/// when a user types into crictl; everything it prints is collected.
struct PtySession {
    master: std::fs::File,
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl PtySession {
    fn spawn(mut cmd: Command) -> PtySession {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; the child makes the terminal on
        // its stdin its controlling terminal, as a login shell's child has.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn under a pty");
        drop(cmd); // the parent's copies of the slave
        let master = std::fs::File::from(pty.master);
        let out = Arc::new(Mutex::new(Vec::new()));
        let (mut r, sink) = (master.try_clone().unwrap(), out.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once every holder of the slave is gone.
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        PtySession { master, child, out }
    }

    fn send(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).unwrap();
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Wait until the output contains `needle`; the output so far.
    fn wait_for(&mut self, needle: &str) -> String {
        let end = Instant::now() + WAIT;
        loop {
            let t = self.text();
            if t.contains(needle) {
                return t;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                // The reader may still be draining the last output: poll it a while longer.
                let drained = Instant::now() + Duration::from_secs(5);
                loop {
                    let t = self.text();
                    if t.contains(needle) {
                        return t;
                    }
                    assert!(
                        Instant::now() < drained,
                        "exited ({st}) before {needle:?}: {t:?}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {needle:?}: {t:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > end {
                kill(&mut self.child);
                panic!("did not exit: {:?}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// SIGTERM a child of this test by its PID and reap it.
fn kill(child: &mut Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// A child's stdout, line by line, collected by a thread.
fn collect_lines(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (out, sink) = (child.stdout.take().unwrap(), lines.clone());
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            match l {
                Ok(l) => sink.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    });
    lines
}

fn wait_line(lines: &Arc<Mutex<Vec<String>>>, what: &str, pred: impl Fn(&str) -> bool) {
    let end = Instant::now() + WAIT;
    while !lines.lock().unwrap().iter().any(|l| pred(l)) {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}: {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The memory limit of the cgroup named in a /proc/<pid>/cgroup file (v1 or v2).
fn memory_limit(proc_cgroup: &str) -> Option<u64> {
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else {
            continue;
        };
        if let Ok(v) = std::fs::read_to_string(file) {
            if let Ok(n) = v.trim().parse() {
                return Some(n);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_runs_the_readme_session() {
    let reg = common::registry::Registry::start();
    reg.push_oci_archive(
        &common::image_archive("busybox"),
        "library/busybox",
        "latest",
    );
    let a = Agent::start(&[]).await;
    let c = Crictl::new(&a);

    let version = c.ok(&a, &["version"]);
    assert!(version.contains("RuntimeName:  podrun"), "{version}");
    assert!(version.contains("RuntimeApiVersion:  v1"), "{version}");
    let info = c.json(&a, &["info"]);
    let conditions = info["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|x| x["type"] == "RuntimeReady" && x["status"] == true),
        "{info}"
    );

    // Images: pull from the local registry, list, inspect, file system usage.
    let remote = format!("{}/library/busybox:latest", reg.host());
    let pulled = c.ok(&a, &["pull", &remote]);
    assert!(
        pulled.starts_with("Image is up to date for sha256:"),
        "{pulled}"
    );
    let images = c.ok(&a, &["images"]);
    assert!(
        images.contains(&format!("{}/library/busybox", reg.host())) && images.contains("latest"),
        "{images}"
    );
    let inspecti = c.json(&a, &["inspecti", &remote]);
    assert!(
        inspecti["status"]["repoTags"]
            .as_array()
            .unwrap()
            .contains(&Value::from(remote.clone())),
        "{inspecti}"
    );
    // Through a mirror in the agent's hosts dir (PODRUN_HOSTS_DIR): Docker Hub's name,
    // served by the local registry; the upstream is a closed port.
    let mirror = a.env.hosts_dir().join("docker.io");
    std::fs::create_dir_all(&mirror).unwrap();
    std::fs::write(
        mirror.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:1\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.url()
        ),
    )
    .unwrap();
    let mirrored = c.ok(&a, &["pull", "busybox"]);
    assert!(
        mirrored.starts_with("Image is up to date for sha256:"),
        "{mirrored}"
    );
    assert_eq!(mirrored, pulled, "the same image by its Docker Hub name");
    assert!(c.ok(&a, &["images"]).contains("docker.io/library/busybox"));

    // A failed call is in the agent's log with its method and reason.
    let missing = c.run(&["pull", "127.0.0.1:9/none/such:1"]);
    assert!(!missing.status.success(), "{missing:?}");
    let log = a.log();
    assert!(
        log.lines()
            .any(|l| l.contains("CRI call failed") && l.contains("PullImage")),
        "{log}"
    );
    let fsinfo = c.json(&a, &["imagefsinfo"]);
    let used = fsinfo["status"]["imageFilesystems"][0]["usedBytes"]["value"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(used > 0, "the pulled layers take space: {fsinfo}");

    // A pod with a container that waits for a file before it logs again.
    let mut ctr_cfg = busybox(
        "app",
        &[
            "sh",
            "-c",
            "echo started; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after-follow; exec sleep 1000",
        ],
    );
    ctr_cfg["image"]["image"] = Value::from(remote.clone());
    let (pod, ctr, pod_file) = c.pod_with(&a, "session", ctr_cfg);

    let ps = c.json(&a, &["ps", "-o", "json"]);
    let listed = &ps["containers"][0];
    assert_eq!(listed["id"], ctr.as_str(), "{ps}");
    assert_eq!(listed["state"], "CONTAINER_RUNNING", "{ps}");
    assert_eq!(listed["podSandboxId"], pod.as_str(), "{ps}");
    let quiet = c.ok(&a, &["ps", "-q"]);
    assert_eq!(quiet.trim(), ctr);
    let pods = c.ok(&a, &["pods"]);
    assert!(
        pods.contains(&pod[..13]) && pods.contains("Ready") && pods.contains("session"),
        "{pods}"
    );
    let by_label = c.ok(&a, &["pods", "-q", "--label", "app=session"]);
    assert_eq!(by_label.trim(), pod);
    let inspectp = c.json(&a, &["inspectp", &pod]);
    assert_eq!(inspectp["status"]["state"], "SANDBOX_READY", "{inspectp}");
    assert_eq!(inspectp["status"]["metadata"]["name"], "session");
    let inspect = c.json(&a, &["inspect", &ctr]);
    assert_eq!(inspect["status"]["state"], "CONTAINER_RUNNING", "{inspect}");
    assert_eq!(inspect["status"]["image"]["image"], remote.as_str());

    // exec -s: output and exit code.
    let out = c.ok(&a, &["exec", "-s", &ctr, "sh", "-c", "echo out-$((40+2))"]);
    assert_eq!(out.trim(), "out-42");
    let failed = c.run(&["exec", "-s", &ctr, "sh", "-c", "exit 3"]);
    // crictl itself exits 1 and names the command's code, as against containerd.
    assert!(
        !failed.status.success()
            && String::from_utf8_lossy(&failed.stderr).contains("exited with 3"),
        "{failed:?}"
    );

    // exec over the streaming server: stdout and stderr apart, the exit code named.
    let streamed = c.run(&["exec", &ctr, "sh", "-c", "echo out; echo err >&2; exit 4"]);
    let stderr = String::from_utf8_lossy(&streamed.stderr);
    assert_eq!(
        String::from_utf8_lossy(&streamed.stdout),
        "out\n",
        "{streamed:?}"
    );
    assert!(
        stderr.starts_with("err\n") && stderr.contains("command terminated with exit code 4"),
        "{streamed:?}"
    );
    // exec -i: stdin reaches the process and its end closes it.
    let mut piped = c.cmd(&["exec", "-i", &ctr, "sh", "-c", "cat; echo eof"]);
    let mut piped = piped
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    piped
        .stdin
        .take()
        .unwrap()
        .write_all(b"from-stdin\n")
        .unwrap();
    let out = piped.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-stdin\neof\n");

    // logs, then logs -f sees a line written after it started.
    let logs = c.ok(&a, &["logs", &ctr]);
    assert_eq!(logs.trim(), "started");
    let mut follow = c.cmd(&["logs", "-f", &ctr]);
    let mut follow = follow.stdout(Stdio::piped()).spawn().unwrap();
    let lines = collect_lines(&mut follow);
    wait_line(&lines, "logs -f: the first line", |l| l == "started");
    c.ok(&a, &["exec", "-s", &ctr, "touch", "/tmp/go"]);
    wait_line(&lines, "logs -f: a line written later", |l| {
        l == "after-follow"
    });
    kill(&mut follow);

    // stats and statsp name the container and the pod.
    let stats = c.json(&a, &["stats", "-o", "json"]);
    assert_eq!(
        stats["stats"][0]["attributes"]["id"],
        ctr.as_str(),
        "{stats}"
    );
    assert!(
        stats["stats"][0]["memory"]["workingSetBytes"]["value"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            > 0,
        "{stats}"
    );
    let statsp = c.json(&a, &["statsp", "-o", "json"]);
    assert_eq!(
        statsp["stats"][0]["attributes"]["id"],
        pod.as_str(),
        "{statsp}"
    );

    // update: new limits show in inspect and in the cgroup.
    c.ok(
        &a,
        &[
            "update",
            "--memory",
            "67108864",
            "--cpu-quota",
            "50000",
            "--cpu-period",
            "100000",
            &ctr,
        ],
    );
    let inspect = c.json(&a, &["inspect", &ctr]);
    let res = &inspect["status"]["resources"]["linux"];
    assert_eq!(res["memoryLimitInBytes"], "67108864", "{inspect}");
    assert_eq!(res["cpuQuota"], "50000", "{inspect}");
    // info.pid is the host's PID of the container, as containerd reports it: its
    // memory cgroup holds the new limit.
    let verbose = c.json(&a, &["inspect", &ctr]);
    let pid = verbose["info"]["pid"].as_i64().unwrap_or(0);
    let ns_pid = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        ns_pid
            .lines()
            .any(|l| l.starts_with("NSpid:")
                && l.split_whitespace().nth(1) == Some(&pid.to_string())),
        "info.pid {pid} is a host PID of this machine: {ns_pid}"
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let limit = memory_limit(&cgroup).unwrap_or_else(|| panic!("no memory limit for {cgroup}"));
    assert_eq!(limit, 67_108_864);

    // events: stopping the container is reported while crictl watches. crictl prints
    // nothing until a first event, so a probe container is created (and removed) until
    // its CREATED event shows that the stream is open.
    let mut events = c.cmd(&["events", "-o", "json"]);
    let mut events = events.stdout(Stdio::piped()).spawn().unwrap();
    let event_lines = collect_lines(&mut events);
    let mut probe_cfg = busybox("probe", &["true"]);
    probe_cfg["image"]["image"] = Value::from(remote.clone());
    let probe_cfg = c.file("probe.json", &probe_cfg);
    let end = Instant::now() + WAIT;
    loop {
        let probe = c
            .ok(&a, &["create", &pod, &probe_cfg, &pod_file])
            .trim()
            .to_owned();
        let seen = Instant::now() + Duration::from_secs(2);
        let opened = loop {
            if event_lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(&probe))
            {
                break true;
            }
            if Instant::now() > seen {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        c.ok(&a, &["rm", &probe]);
        if opened {
            break;
        }
        assert!(
            Instant::now() < end,
            "crictl events reported nothing: {}",
            a.log()
        );
    }
    c.ok(&a, &["stop", "--timeout", "1", &ctr]);
    wait_line(&event_lines, "CONTAINER_STOPPED_EVENT", |l| {
        l.contains("CONTAINER_STOPPED_EVENT")
    });
    kill(&mut events);
    let inspect = c.json(&a, &["inspect", &ctr]);
    assert_eq!(inspect["status"]["state"], "CONTAINER_EXITED");

    // rm, stopp, rmp, rmi.
    assert_eq!(c.ok(&a, &["rm", &ctr]).trim(), ctr);
    assert!(c.ok(&a, &["ps", "-a", "-q"]).trim().is_empty());
    let stopped = c.ok(&a, &["stopp", &pod]);
    assert!(
        stopped.contains(&format!("Stopped sandbox {pod}")),
        "{stopped}"
    );
    let removed = c.ok(&a, &["rmp", &pod]);
    assert!(
        removed.contains(&format!("Removed sandbox {pod}")),
        "{removed}"
    );
    assert!(c.ok(&a, &["pods", "-q"]).trim().is_empty());
    let rmi = c.ok(&a, &["rmi", &remote]);
    assert!(rmi.contains("Deleted:"), "{rmi}");
    assert!(!c.ok(&a, &["images", "-q"]).contains("sha256"));
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_exec_it_and_attach_through_a_terminal() {
    let a = Agent::start(&["busybox"]).await;
    let c = Crictl::new(&a);
    let (_, ctr, _) = c.pod_with(&a, "tty", busybox("shell", &["sleep", "1000"]));

    // exec -it: a shell on a terminal of the container's own devpts.
    let mut s = PtySession::spawn(c.cmd(&["exec", "-it", &ctr, "sh"]));
    s.send("echo T=$(tty); test -e $(tty) && echo exists-$((1+2))\n");
    let out = s.wait_for("exists-3");
    assert!(out.contains("T=/dev/pts/"), "{out:?}");
    s.send("stty size; exit\n");
    assert!(s.wait_exit().success(), "{:?}", s.text());

    // attach to a container whose init has a terminal and stdin.
    // The README's container file: sh on a terminal, with stdin.
    let cfg = example("shell.json");
    assert_eq!(
        (&cfg["tty"], &cfg["stdin"]),
        (&Value::from(true), &Value::from(true))
    );
    let (_, console, _) = c.pod_with(&a, "attach", cfg);
    let mut s = PtySession::spawn(c.cmd(&["attach", "-it", &console]));
    s.send("echo T=$(tty); echo attached-$((2+3))\n");
    let out = s.wait_for("attached-5");
    assert!(out.contains("T=/dev/pts/0"), "{out:?}");
    s.send("exit\n");
    s.wait_exit();
    let inspect = c.json(&a, &["inspect", &console]);
    assert_eq!(inspect["status"]["state"], "CONTAINER_EXITED", "{inspect}");
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_port_forward_reaches_the_pod() {
    let a = Agent::start(&["nginx"]).await;
    let c = Crictl::new(&a);
    // The README's container file, as it is.
    let (pod, ctr, _) = c.pod_with(&a, "web", example("nginx.json"));
    // nginx answers inside the pod first.
    let end = Instant::now() + WAIT;
    while !c
        .run(&["exec", "-s", &ctr, "test", "-e", "/run/nginx.pid"])
        .status
        .success()
    {
        assert!(Instant::now() < end, "nginx did not start: {}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let port = cri_common::free_port();
    let mut pf = c.cmd(&["port-forward", &pod, &format!("{port}:80")]);
    let mut pf = pf.stdout(Stdio::piped()).spawn().unwrap();
    let lines = collect_lines(&mut pf);
    wait_line(&lines, "Forwarding from", |l| {
        l.starts_with("Forwarding from")
    });
    let body = cri_common::http_get(port).unwrap_or_default();
    assert!(body.contains("Welcome to nginx"), "{body:?}");
    kill(&mut pf);
    a.finish().await;
}
