//! A layer of the CRI server that logs every failed call with its method, code and
//! message, as containerd does, so an operator finds in the agent's log why kubelet or
//! crictl got an error. A NotFound answer to a status query is routine (kubelet asks about
//! what it just removed) and is logged at debug level only.

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::Code;

/// Wraps the gRPC router; see the module documentation.
#[derive(Clone)]
pub struct LogFailures<S> {
    inner: S,
}

impl<S> LogFailures<S> {
    pub fn new(inner: S) -> Self {
        LogFailures { inner }
    }
}

/// Whether a failure with `code` on `method` is worth an operator's attention.
pub(crate) fn is_notable(method: &str, code: Code) -> bool {
    !(code == Code::NotFound && method.ends_with("Status"))
}

impl<S, B, RB> tower::Service<http::Request<B>> for LogFailures<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // A handler's error is answered trailers-only: its status is in the headers.
            if let Some(status) = tonic::Status::from_header_map(resp.headers()) {
                if status.code() != Code::Ok {
                    let method = method.rsplit('/').next().unwrap_or(&method);
                    if is_notable(method, status.code()) {
                        tracing::warn!(
                            method,
                            code = ?status.code(),
                            message = status.message(),
                            "CRI call failed"
                        );
                    } else {
                        tracing::debug!(
                            method,
                            code = ?status.code(),
                            message = status.message(),
                            "CRI call failed"
                        );
                    }
                }
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_queries_for_gone_objects_are_routine() {
        assert!(!is_notable("ContainerStatus", Code::NotFound));
        assert!(!is_notable("PodSandboxStatus", Code::NotFound));
        assert!(is_notable("PullImage", Code::NotFound));
        assert!(is_notable("ContainerStatus", Code::Internal));
        assert!(is_notable("RunPodSandbox", Code::AlreadyExists));
    }
}
