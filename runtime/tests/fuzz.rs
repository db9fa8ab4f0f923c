//! Fuzz targets for what the runtime parses from images and users: layer tars (unpacked
//! into a temporary directory, which nothing may escape), the documents of an image
//! archive (OCI index, manifest and config; docker-archive manifest) and pod YAML.
//! Seeds are in fuzz/corpus/<target>/; see fuzz/README.md.

#[path = "../../fuzz/harness.rs"]
mod harness;

use std::fs;
use std::path::Path;

use harness::{clear_error, corpus, fuzz, Target};
use podrun_runtime::image::archive::sha256_digest;
use podrun_runtime::image::unpack::unpack_layer;
use podrun_runtime::image::ImageStore;
use podrun_runtime::spec::{self, parse_manifest};

/// Absolute paths the hostile seeds aim at.
const ESCAPE_CANARIES: &[&str] = &["/tmp/podrun-fuzz-escape", "/etc/podrun-fuzz-escaped"];

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Unpacks `layer` three levels down in a fresh directory; every level above the
/// destination must hold only the next one afterwards.
#[test]
fn layer_tar() {
    for canary in ESCAPE_CANARIES {
        assert!(
            !Path::new(canary).exists(),
            "{canary} exists before fuzzing: remove it"
        );
    }
    fuzz(Target::new("layer_tar"), |layer| {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dest = tmp.path().join("o1/o2/dest");
        fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
        let result = unpack_layer(layer, &dest);
        for (dir, only) in [
            (tmp.path().to_path_buf(), "o1"),
            (tmp.path().join("o1"), "o2"),
            (tmp.path().join("o1/o2"), "dest"),
        ] {
            let found = entries(&dir);
            if found != [only] {
                return Err(format!("{} holds {found:?} after unpacking", dir.display()));
            }
        }
        for canary in ESCAPE_CANARIES {
            if Path::new(canary).symlink_metadata().is_ok() {
                let _ = fs::remove_file(canary).or_else(|_| fs::remove_dir_all(canary));
                return Err(format!("unpacking wrote {canary}"));
            }
        }
        result.map(|_| ()).or_else(clear_error)
    });
}

fn append(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, name, data)
        .expect("appending to an in-memory tar");
}

fn blob_name(data: &[u8]) -> String {
    format!(
        "blobs/sha256/{}",
        sha256_digest(data).trim_start_matches("sha256:")
    )
}

/// The valid documents of the one image the archive targets build on.
struct Image {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
    index: Vec<u8>,
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    corpus(target)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("seed {target}/{name} is missing"))
        .1
}

fn image() -> Image {
    Image {
        layer: seed("layer_tar", "hello.tar"),
        config: seed("image_config", "valid.json"),
        manifest: seed("image_manifest", "valid.json"),
        index: seed("image_oci_index", "valid.json"),
    }
}

/// An OCI layout archive of `index`, holding `blobs`.
fn oci_archive(index: &[u8], blobs: &[&[u8]]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    append(&mut b, "index.json", index);
    for blob in blobs {
        append(&mut b, &blob_name(blob), blob);
    }
    b.into_inner().expect("finishing an in-memory tar")
}

fn index_of(manifest: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256_digest(manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "docker.io/library/fuzz:1"},
        }],
    }))
    .expect("serialising an index")
}

fn manifest_of(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": sha256_digest(layer), "size": layer.len()}],
    }))
    .expect("serialising a manifest")
}

/// Loads `archive` into a fresh store; an error must say what is wrong.
fn load(archive: &[u8]) -> Result<(), String> {
    match load_ok(archive) {
        Err(e) if e.trim().is_empty() => Err("an error without a message".into()),
        _ => Ok(()),
    }
}

#[test]
fn image_oci_index() {
    let img = image();
    fuzz(Target::new("image_oci_index"), |index| {
        load(&oci_archive(
            index,
            &[&img.manifest, &img.config, &img.layer, &img.index],
        ))
    });
}

#[test]
fn image_manifest() {
    let img = image();
    fuzz(Target::new("image_manifest"), |manifest| {
        load(&oci_archive(
            &index_of(manifest),
            &[manifest, &img.config, &img.layer],
        ))
    });
}

#[test]
fn image_config() {
    let img = image();
    fuzz(Target::new("image_config"), |config| {
        let manifest = manifest_of(config, &img.layer);
        load(&oci_archive(
            &index_of(&manifest),
            &[&manifest, config, &img.layer],
        ))
    });
}

#[test]
fn image_docker_manifest() {
    let img = image();
    fuzz(Target::new("image_docker_manifest"), |manifest| {
        load(&docker_archive(&img, manifest))
    });
}

/// A docker-archive of the image's config and layer, described by `manifest`.
fn docker_archive(img: &Image, manifest: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "config.json", &img.config);
    append(&mut b, "layer0/layer.tar", &img.layer);
    append(&mut b, "manifest.json", manifest);
    b.into_inner().expect("finishing an in-memory tar")
}

#[test]
fn pod_yaml() {
    fuzz(Target::new("pod_yaml"), |input| {
        let text = String::from_utf8_lossy(input);
        let mut m = match parse_manifest(&text, Path::new("fuzz.yaml")) {
            Ok(m) => m,
            Err(e) => return clear_error(e),
        };
        // What `podrun run` does next with an accepted pod, short of running it.
        spec::apply_defaults(&mut m, Some("fuzz"));
        let _ = spec::qos_class(&m.pod);
        let _ = spec::pod_resources(&m.pod);
        let env = [("A".to_string(), "b".to_string())];
        for c in m.containers_in_start_order() {
            let _ = spec::container_resources(c);
            if let Err(e) = spec::effective_command(c, &[], &["sh".to_string()], &env) {
                clear_error(e)?;
            }
        }
        let volumes = m.pod.spec.as_ref().and_then(|s| s.volumes.clone());
        for v in volumes.unwrap_or_default() {
            if let Err(e) = spec::volume_files(&v, &m) {
                clear_error(e)?;
            }
        }
        Ok(())
    });
}

/// The targets above mutate a loadable image: if it stopped loading, they would only
/// exercise the first check that rejects it.
#[test]
fn valid_seeds_are_accepted() {
    let img = image();
    let oci = oci_archive(&img.index, &[&img.manifest, &img.config, &img.layer]);
    load_ok(&oci).expect("the OCI archive of the valid seeds loads");
    let manifest = manifest_of(&img.config, &img.layer);
    let oci = oci_archive(&index_of(&manifest), &[&manifest, &img.config, &img.layer]);
    load_ok(&oci).expect("the generated OCI archive loads");
    let docker = docker_archive(&img, &seed("image_docker_manifest", "valid.json"));
    load_ok(&docker).expect("the docker archive of the valid seeds loads");
    for name in ["sidecar_pod.yaml", "web_with_config.yaml"] {
        let text = String::from_utf8(seed("pod_yaml", name)).unwrap();
        parse_manifest(&text, Path::new(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let tmp = tempfile::tempdir().unwrap();
    unpack_layer(&img.layer[..], tmp.path()).expect("the hello layer unpacks");
    assert!(tmp.path().join("etc/hello").is_file());
}

fn load_ok(archive: &[u8]) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = tmp.path().join("image.tar");
    fs::write(&path, archive).map_err(|e| e.to_string())?;
    let store = ImageStore::open(tmp.path().join("store")).map_err(|e| e.to_string())?;
    let images = store.load_archive(&path).map_err(|e| e.to_string())?;
    if images.is_empty() {
        return Err("no image loaded".into());
    }
    Ok(())
}
