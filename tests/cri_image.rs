//! The CRI ImageService of `podrun agent`, after critest's "Image Manager" specs:
//! list, status by every name form, filters, remove (idempotent), pull from a local
//! registry on 127.0.0.1 (Debian's docker-registry, started by the test) by tag and by
//! digest, and image filesystem info.

mod common;
mod cri_common;

use cri_common::{Agent, BUSYBOX, NGINX};
use podrun_cri_proto::v1;

fn spec(image: &str) -> Option<v1::ImageSpec> {
    Some(v1::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_status_filter_and_remove_loaded_images() {
    require_root!();
    let mut a = Agent::start(&["busybox", "nginx"]).await;

    let images = a.list_images().await;
    assert_eq!(images.len(), 2, "{images:?}");
    let bb = images
        .iter()
        .find(|i| i.repo_tags.iter().any(|t| t == BUSYBOX))
        .unwrap_or_else(|| panic!("busybox not listed: {images:?}"))
        .clone();
    assert!(bb.id.starts_with("sha256:") && bb.id.len() == 71, "{bb:?}");
    assert!(bb.size > 0);
    assert!(images
        .iter()
        .any(|i| i.repo_tags.iter().any(|t| t == NGINX)));

    // Status by full reference, short name, name:tag and image ID: the same image.
    for name in [
        BUSYBOX,
        "busybox",
        "busybox:latest",
        "library/busybox",
        bb.id.as_str(),
    ] {
        let st = a
            .image_status(name)
            .await
            .unwrap_or_else(|| panic!("ImageStatus {name} found nothing"));
        assert_eq!(st.id, bb.id, "{name}");
        assert!(st.repo_tags.iter().any(|t| t == BUSYBOX), "{name}: {st:?}");
    }
    // An unknown image is no error, just no image.
    assert!(a
        .image_status("docker.io/library/no-such-image:1")
        .await
        .is_none());
    assert!(a.image_status("busybox:no-such-tag").await.is_none());

    // The list filter narrows to one image.
    let only = a
        .img
        .list_images(v1::ListImagesRequest {
            filter: Some(v1::ImageFilter {
                image: spec("busybox"),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(only.iter().map(|i| &i.id).collect::<Vec<_>>(), [&bb.id]);

    // A container of a missing image cannot be created.
    let (sb, cfg) = a.sandbox("img").await;
    let mut c = a.container_config("c", &["true"]);
    c.image = spec("docker.io/library/not-here:1");
    assert!(a.try_create_container(&sb, &cfg, c).await.is_err());
    a.remove_sandbox(&sb).await;

    // Remove by tag, then again; remove the other by ID.
    a.img
        .remove_image(v1::RemoveImageRequest {
            image: spec(BUSYBOX),
        })
        .await
        .unwrap();
    a.img
        .remove_image(v1::RemoveImageRequest {
            image: spec(BUSYBOX),
        })
        .await
        .expect("RemoveImage of an absent image succeeds");
    assert!(a.image_status(BUSYBOX).await.is_none());
    let nginx_id = a.image_status(NGINX).await.unwrap().id;
    a.img
        .remove_image(v1::RemoveImageRequest {
            image: spec(&nginx_id),
        })
        .await
        .unwrap();
    assert!(a.list_images().await.is_empty());

    let fs = a
        .img
        .image_fs_info(v1::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!fs.image_filesystems.is_empty());
    a.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_local_registry_by_tag_and_digest() {
    require_root!();
    if !common::registry::ensure_registry_installed() {
        common::cannot_run(
            "pull_from_a_local_registry_by_tag_and_digest",
            "docker-registry cannot be installed here",
        );
        return;
    }
    let reg = common::registry::Registry::start();
    let digest = reg.push_oci_archive(
        &common::image_archive("busybox"),
        "library/busybox",
        "latest",
    );
    let reference = format!("{}/library/busybox:latest", reg.host());
    let mut a = Agent::start(&[]).await;
    assert!(a.list_images().await.is_empty());

    let pulled = a
        .img
        .pull_image(v1::PullImageRequest {
            image: spec(&reference),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap_or_else(|e| panic!("PullImage {reference}: {e}\nagent log:\n{}", a.log()))
        .into_inner()
        .image_ref;
    assert!(!pulled.is_empty());
    let st = a
        .image_status(&reference)
        .await
        .expect("pulled image has a status");
    assert!(st.repo_tags.contains(&reference), "{st:?}");
    assert!(
        st.repo_digests
            .contains(&format!("{}/library/busybox@{digest}", reg.host())),
        "{st:?}"
    );
    // kubelet uses the returned ref as the image of its containers: it must resolve.
    assert_eq!(
        a.image_status(&pulled).await.map(|i| i.id),
        Some(st.id.clone())
    );

    // Again: same ref. By digest: the same image.
    let again = a
        .img
        .pull_image(v1::PullImageRequest {
            image: spec(&reference),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    assert_eq!(again, pulled);
    let by_digest = format!("{}/library/busybox@{digest}", reg.host());
    a.img
        .pull_image(v1::PullImageRequest {
            image: spec(&by_digest),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        a.image_status(&by_digest).await.map(|i| i.id),
        Some(st.id.clone())
    );
    assert_eq!(a.list_images().await.len(), 1);

    // A missing tag fails and stores nothing.
    let missing = format!("{}/library/busybox:nope", reg.host());
    let e = a
        .img
        .pull_image(v1::PullImageRequest {
            image: spec(&missing),
            ..Default::default()
        })
        .await
        .expect_err("pull of a missing tag fails");
    assert!(
        e.message().contains("nope") || !e.message().is_empty(),
        "{e}"
    );
    assert_eq!(a.list_images().await.len(), 1);

    // The pulled image runs.
    let (sb, cfg) = a.sandbox("pulled").await;
    let mut c = a.container_config("c", &["sleep", "3600"]);
    c.image = spec(&pulled);
    let c = a.run_container(&sb, &cfg, c).await;
    assert_eq!(a.exec(&c, &["echo", "pulled"]).await, "pulled\n");
    a.finish().await;
}

/// An image a container stands on is not removed from under it: RemoveImage answers
/// FailedPrecondition until the container is gone, then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_in_use_is_not_removed() {
    require_root!();
    let mut a = Agent::start(&["busybox"]).await;
    let (sb, cfg) = a.sandbox("inuse").await;
    let c = a
        .run_container(&sb, &cfg, a.container_config("c", &["sleep", "3600"]))
        .await;
    let err = a
        .img
        .remove_image(v1::RemoveImageRequest {
            image: spec(BUSYBOX),
        })
        .await
        .expect_err("removing an image in use");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    assert!(a.image_status(BUSYBOX).await.is_some());
    assert!(!a.exec(&c, &["cat", "/bin/busybox"]).await.is_empty());
    a.stop_container(&c, 0).await;
    a.remove_container(&c).await;
    a.img
        .remove_image(v1::RemoveImageRequest {
            image: spec(BUSYBOX),
        })
        .await
        .expect("removing the image once no container uses it");
    assert!(a.image_status(BUSYBOX).await.is_none());
    a.finish().await;
}
