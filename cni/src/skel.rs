//! The plugin side of the protocol: reading `CNI_*` environment variables and the
//! stdin configuration, dispatching to a plugin's add/del/check/gc/status, and writing
//! the result or the error JSON on stdout with the matching exit status.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use serde_json::Value;

use crate::spec::{code, CniError, CniResult, NetConf, VersionInfo};

/// The CNI command from `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }
}

/// Everything a plugin invocation gets from its caller.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: Vec<PathBuf>,
    pub stdin: Vec<u8>,
    pub conf: NetConf,
}

impl CmdArgs {
    /// `CNI_ARGS` as key/value pairs (`K1=V1;K2=V2`).
    pub fn cni_args(&self) -> HashMap<String, String> {
        self.args
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The raw stdin configuration as JSON.
    pub fn raw_conf(&self) -> Value {
        serde_json::from_slice(&self.stdin).unwrap_or(Value::Null)
    }
}

/// A CNI plugin: the three main operations plus GC and STATUS.
pub trait Plugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError>;
    fn del(&self, args: &CmdArgs) -> Result<(), CniError>;
    fn check(&self, args: &CmdArgs) -> Result<(), CniError>;
    fn gc(&self, args: &CmdArgs) -> Result<(), CniError>;
    fn status(&self, args: &CmdArgs) -> Result<(), CniError>;
}

/// What a plugin run produced: stdout text and the process exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Runs one invocation from an explicit environment and stdin (testable without a
/// process).
pub fn dispatch(plugin: &dyn Plugin, env: &HashMap<String, String>, stdin: &[u8]) -> Outcome {
    let version_of_conf = || {
        serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_default()
    };
    match run(plugin, env, stdin) {
        Ok(Some(out)) => Outcome {
            stdout: out,
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Err(mut e) => {
            if e.cni_version.is_empty() {
                e.cni_version = version_of_conf();
                if crate::spec::check_version(&e.cni_version).is_err() {
                    e.cni_version = crate::spec::CURRENT_VERSION.to_string();
                }
            }
            Outcome {
                stdout: serde_json::to_string(&e).unwrap_or_default(),
                exit_code: 1,
            }
        }
    }
}

fn run(
    plugin: &dyn Plugin,
    env: &HashMap<String, String>,
    stdin: &[u8],
) -> Result<Option<String>, CniError> {
    let get = |k: &str| env.get(k).cloned().unwrap_or_default();
    let command_str = get("CNI_COMMAND");
    let command = Command::parse(&command_str).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND {command_str:?}"),
        )
    })?;
    if command == Command::Version {
        return Ok(Some(
            serde_json::to_string(&VersionInfo::podrun()).unwrap_or_default(),
        ));
    }
    let required: &[&str] = match command {
        Command::Add | Command::Check => {
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
        }
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
        _ => &[],
    };
    for key in required {
        if get(key).is_empty() {
            return Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("required environment variable {key} is missing"),
            ));
        }
    }
    let container_id = get("CNI_CONTAINERID");
    if !container_id.is_empty() && !valid_container_id(&container_id) {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("invalid CNI_CONTAINERID {container_id:?}"),
        ));
    }
    let ifname = get("CNI_IFNAME");
    if !ifname.is_empty() && !valid_ifname(&ifname) {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("invalid CNI_IFNAME {ifname:?}"),
        ));
    }
    let conf = NetConf::parse(stdin)?;
    let args = CmdArgs {
        command,
        container_id,
        netns: get("CNI_NETNS"),
        ifname,
        args: get("CNI_ARGS"),
        path: std::env::split_paths(&get("CNI_PATH"))
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        stdin: stdin.to_vec(),
        conf,
    };
    let version = args.conf.cni_version.clone();
    let older_than =
        |v: crate::spec::Version| crate::spec::Version::parse(&version).is_some_and(|cur| cur < v);
    match command {
        Command::Add => {
            let result = plugin.add(&args)?;
            Ok(Some(
                serde_json::to_string(&result.to_value(&version)).unwrap_or_default(),
            ))
        }
        Command::Del => plugin.del(&args).map(|_| None),
        Command::Check => {
            if older_than(crate::spec::Version(0, 4, 0)) {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    "CHECK needs cniVersion 0.4.0 or later",
                ));
            }
            plugin.check(&args).map(|_| None)
        }
        Command::Gc | Command::Status => {
            if older_than(crate::spec::Version(1, 1, 0)) {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("{} needs cniVersion 1.1.0 or later", command.as_str()),
                ));
            }
            if command == Command::Gc {
                plugin.gc(&args).map(|_| None)
            } else {
                plugin.status(&args).map(|_| None)
            }
        }
        Command::Version => unreachable!("handled above"),
    }
}

/// The spec allows alphanumerics plus `_`, `.` and `-` in container IDs.
fn valid_container_id(id: &str) -> bool {
    id.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

/// Linux interface names: 1-15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// The whole `main` of a plugin binary: reads the real environment and stdin, prints
/// the outcome, and returns the exit status.
pub fn plugin_main(plugin: &dyn Plugin, about: &str) -> i32 {
    let env: HashMap<String, String> = std::env::vars().collect();
    if env.get("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        eprintln!("{about}");
        eprintln!(
            "CNI protocol versions supported: {}",
            crate::spec::SUPPORTED_VERSIONS.join(", ")
        );
        return 1;
    }
    let mut stdin = Vec::new();
    if env.get("CNI_COMMAND").map(String::as_str) != Some("VERSION") {
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            let err = CniError::new(code::IO_FAILURE, format!("failed to read stdin: {e}"));
            println!("{}", serde_json::to_string(&err).unwrap_or_default());
            return 1;
        }
    }
    let outcome = dispatch(plugin, &env, &stdin);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    outcome.exit_code
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<(Command, String)>>,
    }

    impl Plugin for Recorder {
        fn add(&self, a: &CmdArgs) -> Result<CniResult, CniError> {
            self.calls
                .lock()
                .unwrap()
                .push((a.command, a.container_id.clone()));
            Ok(CniResult::default())
        }
        fn del(&self, a: &CmdArgs) -> Result<(), CniError> {
            self.calls
                .lock()
                .unwrap()
                .push((a.command, a.container_id.clone()));
            Ok(())
        }
        fn check(&self, a: &CmdArgs) -> Result<(), CniError> {
            self.calls
                .lock()
                .unwrap()
                .push((a.command, a.container_id.clone()));
            Ok(())
        }
        fn gc(&self, a: &CmdArgs) -> Result<(), CniError> {
            self.calls
                .lock()
                .unwrap()
                .push((a.command, a.container_id.clone()));
            Ok(())
        }
        fn status(&self, a: &CmdArgs) -> Result<(), CniError> {
            self.calls
                .lock()
                .unwrap()
                .push((a.command, a.container_id.clone()));
            Ok(())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const CONF: &[u8] = br#"{"cniVersion":"1.1.0","name":"n","type":"podrun-bridge"}"#;

    fn error_code(o: &Outcome) -> u64 {
        serde_json::from_str::<Value>(&o.stdout).unwrap()["code"]
            .as_u64()
            .unwrap()
    }

    #[test]
    fn version_needs_nothing_else() {
        let o = dispatch(
            &Recorder::default(),
            &env(&[("CNI_COMMAND", "VERSION")]),
            b"",
        );
        assert_eq!(o.exit_code, 0);
        let v: VersionInfo = serde_json::from_str(&o.stdout).unwrap();
        assert!(v.supported_versions.contains(&"1.1.0".to_string()));
    }

    #[test]
    fn missing_environment_is_code_4() {
        let p = Recorder::default();
        let o = dispatch(
            &p,
            &env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c")]),
            CONF,
        );
        assert_eq!((o.exit_code, error_code(&o)), (1, 4));
        let o = dispatch(&p, &env(&[("CNI_COMMAND", "BOGUS")]), CONF);
        assert_eq!(error_code(&o), 4);
        assert!(p.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn del_does_not_need_netns_and_gc_needs_1_1() {
        let p = Recorder::default();
        let base = [
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        let mut e = env(&base);
        e.insert("CNI_COMMAND".into(), "DEL".into());
        assert_eq!(dispatch(&p, &e, CONF).exit_code, 0);
        let mut e = env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]);
        assert_eq!(dispatch(&p, &e, CONF).exit_code, 0);
        e.insert("CNI_COMMAND".into(), "GC".into());
        let old = br#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#;
        let o = dispatch(&p, &e, old);
        assert_eq!(error_code(&o), 1);
    }

    #[test]
    fn bad_config_and_bad_names() {
        let p = Recorder::default();
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]);
        assert_eq!(error_code(&dispatch(&p, &e, b"{")), 6);
        assert_eq!(
            error_code(&dispatch(
                &p,
                &e,
                br#"{"cniVersion":"3.0.0","name":"n","type":"t"}"#
            )),
            1
        );
        let mut bad_if = e.clone();
        bad_if.insert("CNI_IFNAME".into(), "../../etc".into());
        assert_eq!(error_code(&dispatch(&p, &bad_if, CONF)), 4);
        assert_eq!(dispatch(&p, &e, CONF).exit_code, 0);
    }
}
