//! Bad input is refused with an error that names the file and the field, and leaves
//! nothing behind: broken manifests, name clashes, images that are missing, have no
//! command, or try to write outside the store.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Env;

const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 3600 & wait $!; done";

/// `podrun run -d FILE` must fail; returns stderr after checking it names the file and
/// every one of `words` (field paths, values), and that nothing was left behind.
fn refused(env: &Env, name: &str, yaml: &str, words: &[&str]) -> String {
    let f = env.manifest(name, yaml);
    let (code, stdout, stderr) = env.fail(&["run", "-d", f.to_str().unwrap()]);
    eprintln!("{name}: {stderr}");
    assert_ne!(code, 0);
    assert!(
        stderr.contains(name),
        "{name}: the error names the file:\n{stderr}"
    );
    for w in words {
        assert!(
            stderr.contains(w),
            "{name}: the error names {w:?}:\n{stderr}"
        );
    }
    assert!(!stdout.contains("started"), "{stdout}");
    assert!(
        env.pods_json().as_array().unwrap().is_empty(),
        "{name}: no pod is left"
    );
    env.assert_no_leaks();
    stderr
}

fn pod(name: &str, containers: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n{containers}"
    )
}

#[test]
fn malformed_manifests_are_refused_naming_file_and_field() {
    require_root!();
    let env = Env::new(&["busybox"]);

    // Not YAML at all.
    refused(
        &env,
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: broken\nspec: [\n",
        &[],
    );
    // A misspelt field is an error, not silently ignored.
    refused(
        &env,
        "typo.yaml",
        &pod("typo", "  - name: c\n    image: busybox\n    imagePullPolcy: Never\n    command: [sleep, '60']\n"),
        &["imagePullPolcy", "spec.containers[0]"],
    );
    // Something that is not a Pod.
    refused(
        &env,
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n",
        &["Deployment"],
    );
    // Two containers with one name.
    refused(
        &env,
        "dup.yaml",
        &pod("dup", "  - name: same\n    image: busybox\n    command: [sleep, '60']\n  - name: same\n    image: busybox\n    command: [sleep, '60']\n"),
        &["same", "spec.containers[1].name"],
    );
    // An image that is not in the store.
    refused(
        &env,
        "noimage.yaml",
        &pod(
            "noimage",
            "  - name: c\n    image: example.invalid/nosuchimage:1.0\n    command: [sleep, '60']\n",
        ),
        &["example.invalid/nosuchimage:1.0", "\"c\""],
    );
    // Pod names that would be paths.
    for (file, name) in [
        ("slash.yaml", "a/b"),
        ("dots.yaml", ".."),
        ("dotdot.yaml", "../etc"),
    ] {
        refused(
            &env,
            file,
            &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: \"{name}\"\nspec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, '60']\n"),
            &["metadata.name"],
        );
    }
    // Wrong types.
    refused(
        &env,
        "types.yaml",
        &pod(
            "types",
            "  - name: c\n    image: busybox\n    command: sleep 60\n",
        ),
        &["spec.containers[0].command"],
    );
    // A volume mount of a volume that does not exist.
    refused(
        &env,
        "novol.yaml",
        &pod("novol", "  - name: c\n    image: busybox\n    command: [sleep, '60']\n    volumeMounts: [{name: nope, mountPath: /x}]\n"),
        &["volumeMounts[0]", "nope"],
    );
    // Field paths index lists by position, as kube-apiserver's do, never by name.
    let stderr = refused(
        &env,
        "sizelimit.yaml",
        &format!(
            "{}  volumes:\n  - name: scratch\n    emptyDir: {{medium: Memory, sizeLimit: lots}}\n",
            pod("sizelimit", "  - name: c\n    image: busybox\n    command: [sleep, '60']\n    volumeMounts: [{name: scratch, mountPath: /x}]\n")
        ),
        &["spec.volumes[0].emptyDir.sizeLimit"],
    );
    assert!(!stderr.contains("spec.volumes[scratch]"), "{stderr}");
    let stderr = refused(
        &env,
        "subpath.yaml",
        &format!(
            "{}  volumes:\n  - name: data\n    emptyDir: {{}}\n",
            pod("subpath", "  - name: c\n    image: busybox\n    command: [sleep, '60']\n    volumeMounts: [{name: data, mountPath: /x, subPath: ../up}]\n")
        ),
        &["spec.containers[0].volumeMounts[0].subPath"],
    );
    assert!(
        !stderr.contains("container \"c\": volumeMounts"),
        "{stderr}"
    );
    // A file that does not exist.
    let (_, _, stderr) = env.fail(&[
        "run",
        "-d",
        env.dir.path().join("missing.yaml").to_str().unwrap(),
    ]);
    assert!(stderr.contains("missing.yaml"), "{stderr}");
    env.assert_no_leaks();
}

/// A "billion laughs" manifest: ten aliases of ten aliases of ..., nine levels deep.
fn yaml_bomb() -> String {
    let mut text = String::from(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bomb\n  annotations:\n    a0: &a0 [\"lol\"]\n",
    );
    for level in 1..10 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        text.push_str(&format!("    a{level}: &a{level} [{refs}]\n"));
    }
    text.push_str(
        "spec:\n  containers:\n  - name: c\n    image: busybox\n    command: [sleep, '60']\n",
    );
    text
}

#[test]
fn a_yaml_bomb_is_refused_saying_what_is_wrong() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let stderr = refused(
        &env,
        "bomb.yaml",
        &yaml_bomb(),
        &[
            "bomb.yaml: document 1: YAML aliases expand beyond the allowed size",
            "at most 100 alias expansions per node",
            "a YAML bomb?",
            // The parser's own words follow as the cause.
            "repetition limit exceeded",
        ],
    );
    assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
    env.assert_no_leaks();
}

#[test]
fn second_run_of_the_same_pod_is_refused_and_the_first_keeps_running() {
    require_root!();
    let env = Env::new(&["busybox"]);
    let yaml = pod(
        "twice",
        &format!("  - name: c\n    image: busybox\n    command: [sh, -c, \"{IDLE}\"]\n"),
    );
    env.run_pod("twice.yaml", &yaml);
    env.wait_state("twice", "c", "running", Duration::from_secs(20));
    let first = env.pod_json("twice").unwrap();

    let f = env.manifest("twice-again.yaml", &yaml);
    let (_, _, stderr) = env.fail(&["run", "-d", f.to_str().unwrap()]);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(stderr.contains("twice"), "{stderr}");

    let pods = env.pods_json();
    assert_eq!(pods.as_array().unwrap().len(), 1);
    let now = env.pod_json("twice").unwrap();
    assert_eq!(now["id"], first["id"], "the first pod is untouched");
    assert_eq!(
        now["status_detail"]["containers"][0]["state"],
        first["status_detail"]["containers"][0]["state"]
    );
    env.exec_ok("twice", "c", &["true"]);
    // The same name in another namespace is another pod.
    env.ok(&["-n", "other", "run", "-d", f.to_str().unwrap()]);
    assert_eq!(env.pods_json().as_array().unwrap().len(), 2);

    env.rm(&["twice"]);
    env.ok(&["-n", "other", "rm", "--grace-period", "0", "twice"]);
    env.assert_no_leaks();
}

// ---- hand-made image archives ---------------------------------------------------------

/// One tar member.
enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

fn octal(field: &mut [u8], value: u64) {
    let s = format!("{:0width$o}", value, width = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

/// A ustar archive written byte by byte, names unchecked (that is the point).
fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (name, kind, link, data, mode): (&str, u8, &str, &[u8], u64) = match e {
            Entry::File(n, d) => (n, b'0', "", d, 0o644),
            Entry::Dir(n) => (n, b'5', "", &[], 0o755),
            Entry::Symlink(n, l) => (n, b'2', l, &[], 0o777),
            Entry::Hardlink(n, l) => (n, b'1', l, &[], 0o644),
        };
        let mut h = [0u8; 512];
        assert!(
            name.len() < 100 && link.len() < 100,
            "names fit the plain ustar fields"
        );
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], mode);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 1_700_000_000);
        h[148..156].copy_from_slice(b"        ");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A docker-archive (`docker save` layout) of one image with one layer; returns its path.
fn docker_archive(dir: &Path, tag: &str, layer: &[Entry], config: &str) -> PathBuf {
    let layer = tar(layer);
    let diff_id = sha256_hex(&layer);
    let config = format!(
        r#"{{"architecture":"{}","os":"linux","config":{config},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}}}}"#,
        go_arch()
    );
    let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
    let manifest = format!(
        r#"[{{"Config":"{config_name}","RepoTags":["{tag}"],"Layers":["{diff_id}/layer.tar"]}}]"#
    );
    let layer_path = format!("{diff_id}/layer.tar");
    let archive = tar(&[
        Entry::File("manifest.json", manifest.as_bytes()),
        Entry::File(&config_name, config.as_bytes()),
        Entry::Dir(&format!("{diff_id}/")),
        Entry::File(&layer_path, &layer),
    ]);
    let path = dir.join(format!("{}.tar", tag.replace([':', '/'], "_")));
    std::fs::write(&path, archive).unwrap();
    path
}

fn load_nocmd(env: &Env) {
    let archive = docker_archive(
        env.dir.path(),
        "nocmd:latest",
        &[Entry::File("hello.txt", b"hi\n")],
        r#"{"Env":["PATH=/bin"]}"#,
    );
    env.ok(&["image", "load", archive.to_str().unwrap()]);
    assert!(env.ok(&["images"]).contains("nocmd"));
}

#[test]
fn image_without_a_command_needs_one_in_the_pod() {
    require_root!();
    let env = Env::new(&[]);
    load_nocmd(&env);
    // No command in the image nor in the pod; an empty command is no command either.
    for (file, containers) in [
        ("nocmd.yaml", "  - name: c\n    image: nocmd\n"),
        (
            "emptycmd.yaml",
            "  - name: c\n    image: nocmd\n    command: []\n",
        ),
    ] {
        let f = env.manifest(file, &pod("nocmd", containers));
        let (_, _, stderr) = env.fail(&["run", "-d", f.to_str().unwrap()]);
        assert!(stderr.contains("no command"), "{stderr}");
        assert!(
            stderr.contains("c:") || stderr.contains("\"c\""),
            "names the container: {stderr}"
        );
        assert!(env.pods_json().as_array().unwrap().is_empty());
        env.assert_no_leaks();
    }
}

#[test]
fn no_command_error_names_the_file_and_the_field_once() {
    require_root!();
    let env = Env::new(&[]);
    load_nocmd(&env);
    let stderr = refused(
        &env,
        "nocmd.yaml",
        &pod("nocmd", "  - name: c\n    image: nocmd\n"),
        &["c: no command", "spec.containers[0].command"],
    );
    assert_eq!(
        stderr.matches("no command").count(),
        1,
        "said once: {stderr}"
    );
}

/// Every file of `dir` (recursively) whose name starts with `prefix`.
fn find_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with(prefix) {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(find_named(&p, prefix));
        }
    }
    out
}

/// Inside an unpacked layer of the store: `<root>/layers/<chain id>/diff/...`.
fn inside_a_layer(env: &Env, p: &Path) -> bool {
    let Ok(rel) = p.strip_prefix(env.root.join("layers")) else {
        return false;
    };
    let parts: Vec<_> = rel.components().collect();
    parts.len() >= 3 && parts[1].as_os_str() == "diff"
}

#[test]
fn hostile_image_archives_stay_inside_the_store() {
    require_root!();
    let env = Env::new(&[]);
    let outside = env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let unique = format!(
        "prt-escape-{}-{}",
        std::process::id(),
        env.cgroup_root.rsplit('-').next().unwrap()
    );
    let outside_abs = outside.to_str().unwrap().to_owned();
    let depth = "../".repeat(20);
    let outside_rel = format!("{depth}{}", outside_abs.trim_start_matches('/'));
    let tmp_escape = format!("{depth}tmp/{unique}-deep");
    let parent_escape = format!("../{unique}-parent");
    let through_abs = format!("link/{unique}-abs");
    let through_rel = format!("rel/{unique}-rel");
    let passwd = format!("{depth}etc/passwd");
    let hostile: Vec<(&str, Vec<Entry>)> = vec![
        // A symlink to a host directory, then a file written through it.
        (
            "abs-symlink",
            vec![
                Entry::Symlink("link", &outside_abs),
                Entry::File(&through_abs, b"x"),
            ],
        ),
        (
            "rel-symlink",
            vec![
                Entry::Symlink("rel", &outside_rel),
                Entry::File(&through_rel, b"x"),
            ],
        ),
        // Names that climb out of the layer.
        ("parent", vec![Entry::File(&parent_escape, b"x")]),
        ("deep", vec![Entry::File(&tmp_escape, b"x")]),
        // A hard link to a host file.
        ("hardlink", vec![Entry::Hardlink("passwd", &passwd)]),
    ];
    let archives: Vec<(&str, PathBuf)> = hostile
        .iter()
        .map(|(tag, layer)| {
            (
                *tag,
                docker_archive(
                    env.dir.path(),
                    &format!("hostile-{tag}:latest"),
                    layer,
                    "{}",
                ),
            )
        })
        .collect();

    let host_passwd = std::fs::metadata("/etc/passwd").unwrap();
    for (tag, archive) in &archives {
        let out = env.podrun(&["image", "load", archive.to_str().unwrap()]);
        let (code, stdout, stderr) = common::text(&out);
        let listed = env.ok(&["images"]).contains(&format!("hostile-{tag}"));
        if code == 0 {
            // Accepted: then only with the entries kept inside the layer.
            assert!(listed, "{tag}: loaded but not listed");
            eprintln!("{tag}: loaded: {stdout}");
        } else {
            assert!(
                stderr.contains(archive.file_name().unwrap().to_str().unwrap()),
                "{tag}: the error names the archive: {stderr}"
            );
            assert!(!listed, "{tag}: a refused image is not listed");
            eprintln!("{tag}: refused: {stderr}");
        }
        // Nothing was written outside the store's layers.
        let escaped: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            escaped.is_empty(),
            "{tag}: files written through a symlink: {escaped:?}"
        );
        assert!(
            !Path::new(&format!("/tmp/{unique}-deep")).exists(),
            "{tag}: wrote /tmp/{unique}-deep"
        );
        for p in find_named(env.dir.path(), &unique) {
            assert!(
                inside_a_layer(&env, &p),
                "{tag}: {} is outside the layers",
                p.display()
            );
        }
        // No file in the store is the host's /etc/passwd.
        for p in find_named(&env.root, "passwd") {
            let m = std::fs::symlink_metadata(&p).unwrap();
            assert!(
                !(std::os::unix::fs::MetadataExt::ino(&m)
                    == std::os::unix::fs::MetadataExt::ino(&host_passwd)
                    && std::os::unix::fs::MetadataExt::dev(&m)
                        == std::os::unix::fs::MetadataExt::dev(&host_passwd)),
                "{tag}: {} is a hard link to the host's /etc/passwd",
                p.display()
            );
        }
        assert!(
            std::fs::read_dir(env.root.join("tmp"))
                .map(|d| d.count() == 0)
                .unwrap_or(true),
            "{tag}: unpack leftovers in the store's tmp"
        );
    }
    let _ = std::fs::remove_file(format!("/tmp/{unique}-deep"));
    env.assert_no_leaks();
}

#[test]
fn bad_config_files_are_refused_naming_file_and_key() {
    require_root!();
    let env = Env::new(&[]);
    let conf = env.dir.path().join("config.toml");
    std::fs::write(&conf, "cgroup_drvier = \"systemd\"\n").unwrap();
    let out = env
        .cmd(&["--config", conf.to_str().unwrap(), "pods"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(conf.to_str().unwrap()) && err.contains("cgroup_drvier"),
        "{err}"
    );
    std::fs::write(&conf, "root = [").unwrap();
    let out = env
        .cmd(&["--config", conf.to_str().unwrap(), "pods"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid TOML"));
    // A named file that does not exist is an error too; the default may be missing.
    let out = env
        .cmd(&["--config", "/nonexistent/podrun.toml", "pods"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A good file applies: the cgroup driver it names is refused by the flag parser.
    std::fs::write(&conf, "cgroup_driver = \"bogus\"\n").unwrap();
    let out = env
        .cmd(&["--config", conf.to_str().unwrap(), "pods"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bogus"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.assert_no_leaks();
}
