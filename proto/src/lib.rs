//! Kubernetes' Container Runtime Interface, package `runtime.v1`, wire-identical to the
//! upstream definition: the messages, the `RuntimeService` and `ImageService` servers
//! and clients.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

#[cfg(test)]
mod tests {
    use super::v1;
    use prost::Message;

    #[test]
    fn service_names_match_upstream() {
        // kubelet and crictl call these exact paths; a different package or service
        // name would make every call Unimplemented.
        assert_eq!(
            v1::runtime_service_server::SERVICE_NAME,
            "runtime.v1.RuntimeService"
        );
        assert_eq!(
            v1::image_service_server::SERVICE_NAME,
            "runtime.v1.ImageService"
        );
    }

    #[test]
    fn run_pod_sandbox_request_encodes_upstream_tags() {
        let req = v1::RunPodSandboxRequest {
            config: Some(v1::PodSandboxConfig {
                metadata: Some(v1::PodSandboxMetadata {
                    name: "a".into(),
                    ..Default::default()
                }),
                hostname: "h".into(),
                ..Default::default()
            }),
            runtime_handler: "rh".into(),
        };
        let expected: &[u8] = &[
            0x0a, 0x08, // config = 1, 8 bytes
            0x0a, 0x03, // metadata = 1, 3 bytes
            0x0a, 0x01, b'a', // name = 1
            0x12, 0x01, b'h', // hostname = 2
            0x12, 0x02, b'r', b'h', // runtime_handler = 2
        ];
        assert_eq!(req.encode_to_vec(), expected);
        assert_eq!(v1::RunPodSandboxRequest::decode(expected).unwrap(), req);
    }

    #[test]
    fn high_field_numbers_and_enums_match_upstream() {
        let sc = v1::LinuxContainerSecurityContext {
            run_as_group: Some(v1::Int64Value { value: 5 }),
            ..Default::default()
        };
        // run_as_group is field 12 although it sits next to run_as_user (5).
        assert_eq!(sc.encode_to_vec(), [0x62, 0x02, 0x08, 0x05]);

        let cfg = v1::ContainerConfig {
            stop_signal: v1::Signal::Sigterm as i32,
            ..Default::default()
        };
        // stop_signal = 18 (varint), SIGTERM = 23.
        assert_eq!(cfg.encode_to_vec(), [0x90, 0x01, 23]);

        let spec = v1::ImageSpec {
            user_specified_image: "x".into(),
            ..Default::default()
        };
        // user_specified_image = 18 (length-delimited).
        assert_eq!(spec.encode_to_vec(), [0x92, 0x01, 0x01, b'x']);

        assert_eq!(v1::ContainerState::ContainerExited as i32, 2);
        assert_eq!(v1::PodSandboxState::SandboxNotready as i32, 1);
        assert_eq!(v1::NamespaceMode::Node as i32, 2);
        assert_eq!(v1::CgroupDriver::Cgroupfs as i32, 1);
        assert_eq!(v1::security_profile::ProfileType::Localhost as i32, 2);
    }
}
