//! Hands a client's upgrade request (SPDY/3.1 or WebSocket) on to the URL the CRI
//! streaming server gave, and once that server has switched protocols, answers the
//! client with its 101 and copies bytes both ways until either side closes. The
//! streaming server negotiates the sub-protocol itself; nothing here reads the stream.

use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{full, text, Body};

/// How long to wait for the streaming server to take the connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Request headers that belong to one hop, or to the client's credentials, and are not
/// passed on. `Connection` and `Upgrade` are, since the upgrade is the point.
const DROPPED: &[&str] = &[
    "host",
    "authorization",
    "proxy-authorization",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
];

/// Whether the request asks to switch protocols.
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

pub(super) async fn upgrade(mut req: Request<Incoming>, url: &str) -> Response<Body> {
    if !is_upgrade(req.headers()) {
        return text(StatusCode::BAD_REQUEST, "Upgrade request required");
    }
    let uri: Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the runtime's streaming URL {url:?}: {e}"),
            )
        }
    };
    let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the runtime's streaming URL {url:?} is not http://host:port/..."),
        );
    };
    let authority = authority.to_string();
    let tcp = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(authority.as_str()),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("error dialing the streaming server {authority}: {e}"),
            )
        }
        Err(_) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("error dialing the streaming server {authority}: timed out"),
            )
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(x) => x,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the streaming server {authority}: {e}"),
            )
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "streaming server connection");
        }
    });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let mut out = Request::builder().method(req.method().clone()).uri(path);
    if let Some(h) = out.headers_mut() {
        for (k, v) in req.headers() {
            if !DROPPED.contains(&k.as_str()) {
                h.append(k, v.clone());
            }
        }
        if let Ok(v) = HeaderValue::from_str(&authority) {
            h.insert(header::HOST, v);
        }
    }
    let out = match out.body(Empty::<bytes::Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let client_side = hyper::upgrade::on(&mut req);
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the streaming server {authority}: {e}"),
            )
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The streaming server's refusal (an unknown token, no protocol in common)
        // goes to the client as it is.
        let (parts, body) = resp.into_parts();
        let body = body.map_err(std::io::Error::other).boxed();
        return Response::from_parts(parts, body);
    }
    let server_side = hyper::upgrade::on(&mut resp);
    let mut answer = Response::new(full(bytes::Bytes::new()));
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *answer.headers_mut() = resp.headers().clone();
    tokio::spawn(async move {
        let (client, server) = match tokio::try_join!(client_side, server_side) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "streaming upgrade");
                return;
            }
        };
        let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
            tracing::debug!(error = %e, "streaming session ended");
        }
    });
    answer
}
