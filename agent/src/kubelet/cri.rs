//! The kubelet half's CRI client: the RuntimeService and ImageService of the agent's own
//! socket, or of another runtime's (`--runtime-endpoint`), over gRPC on a unix socket,
//! exactly as kubelet reaches containerd or CRI-O.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use podrun_cri_proto::v1::image_service_client::ImageServiceClient;
use podrun_cri_proto::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Labels kubelet puts on every sandbox and container it creates, and finds them by.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// Messages as large as kubelet accepts from a runtime (a ListContainers of a busy node).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("runtime endpoint {0:?}: only unix sockets are supported (unix:///path or /path)")]
    Endpoint(String),
    #[error("runtime endpoint {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
}

/// Both CRI services on one HTTP/2 connection; cheap to clone.
#[derive(Clone)]
pub struct CriClient {
    pub runtime: RuntimeServiceClient<Channel>,
    pub image: ImageServiceClient<Channel>,
    pub endpoint: String,
}

/// The socket path of `unix:///run/x.sock` or `/run/x.sock`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, CriError> {
    let path = match endpoint.strip_prefix("unix://") {
        Some(p) => p,
        None if endpoint.starts_with('/') => endpoint,
        None => return Err(CriError::Endpoint(endpoint.to_owned())),
    };
    if !path.starts_with('/') {
        return Err(CriError::Endpoint(endpoint.to_owned()));
    }
    Ok(PathBuf::from(path))
}

/// Connects lazily: the first call dials, and a runtime that restarts is dialled again.
pub fn connect(endpoint: &str) -> Result<CriClient, CriError> {
    let path = socket_path(endpoint)?;
    // The authority is never used on a unix socket, but HTTP/2 needs one.
    let channel = Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }));
    Ok(CriClient {
        runtime: RuntimeServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        image: ImageServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        endpoint: endpoint.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/podrun/podrun.sock").unwrap(),
            PathBuf::from("/run/podrun/podrun.sock")
        );
        assert_eq!(
            socket_path("/run/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        for bad in ["tcp://1.2.3.4:5", "unix://relative", "run/x.sock", ""] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }
}
