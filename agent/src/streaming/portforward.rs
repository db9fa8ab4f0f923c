//! Port forwarding (Kubernetes' `portforward.k8s.io` protocol) over SPDY or WebSocket.
//!
//! SPDY: for each connection it forwards, the client opens an `error` stream and a
//! `data` stream, both carrying `port` and `requestID` headers; the pair is joined by
//! request id, the runtime dials the port in the pod, and bytes are copied both ways.
//! Failures go as text on the pair's error stream. The session lasts until the client
//! closes it.
//!
//! WebSocket: the ports come from the `ports` query parameter (or the CRI request);
//! port i uses channel 2i for data and 2i+1 for errors, and the first message on each is
//! the port as two little-endian bytes.

use std::collections::HashMap;
use std::sync::Arc;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use podrun_cri_proto::v1::PortForwardRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::spdy::{self, header, Stream};
use super::websocket::{self, Mux};
use super::{plain, HttpResponse, StreamRuntime};

pub const PROTOCOL_V1: &str = "portforward.k8s.io";
/// SPDY port forwarding tunnelled through a WebSocket (binary messages carry the SPDY
/// byte stream), as kubectl does from Kubernetes 1.30 on.
pub const PROTOCOL_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

/// WebSocket sub-protocols for port forwarding.
pub const WS_PROTOCOLS: &[&str] = &[
    PROTOCOL_TUNNEL,
    websocket::V4_BINARY,
    websocket::V4_BASE64,
    PROTOCOL_V1,
    websocket::BINARY,
    websocket::BASE64,
];

#[derive(Default)]
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
}

pub(crate) fn serve_spdy(
    req: Request<Incoming>,
    pf: PortForwardRequest,
    runtime: Arc<dyn StreamRuntime>,
) -> HttpResponse {
    super::upgrade_spdy(req, &[PROTOCOL_V1], move |_protocol, session, incoming| {
        run_spdy_session(pf.pod_sandbox_id, runtime, session, incoming)
    })
}

/// Serves one SPDY port-forward session until the client ends it.
async fn run_spdy_session(
    sandbox: String,
    runtime: Arc<dyn StreamRuntime>,
    session: spdy::Session,
    mut incoming: spdy::Incoming,
) {
    {
        let mut pairs: HashMap<String, Pair> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(s) = incoming.accept().await {
            let kind = header(&s.headers, "streamtype")
                .unwrap_or("")
                .to_ascii_lowercase();
            // Old clients send no requestID; kubelet then pairs a data stream with the
            // error stream opened just before it.
            let request_id = match header(&s.headers, "requestid") {
                Some(id) => id.to_string(),
                None if kind == "data" => s.id.saturating_sub(2).to_string(),
                None => s.id.to_string(),
            };
            let pair = pairs.entry(request_id.clone()).or_default();
            let slot = match kind.as_str() {
                "data" => &mut pair.data,
                "error" => &mut pair.error,
                other => {
                    tracing::debug!(stream_type = %other, "port-forward: unknown stream type");
                    s.writer.reset(spdy::rst::PROTOCOL_ERROR);
                    continue;
                }
            };
            if slot.is_some() {
                s.writer.reset(spdy::rst::PROTOCOL_ERROR);
                continue;
            }
            *slot = Some(s);
            if pair.data.is_some() && pair.error.is_some() {
                let Pair {
                    data: Some(data),
                    error: Some(error),
                } = pairs.remove(&request_id).unwrap_or_default()
                else {
                    continue;
                };
                let runtime = runtime.clone();
                let sandbox = sandbox.clone();
                let session = session.clone();
                tasks.spawn(async move {
                    tokio::select! {
                        () = forward_spdy(runtime, sandbox, data, error) => {}
                        () = session.closed() => {}
                    }
                });
            }
        }
        // The client went away or sent GOAWAY; let what is running finish.
        while tasks.join_next().await.is_some() {}
        session.close().await;
    }
}

async fn forward_spdy(
    runtime: Arc<dyn StreamRuntime>,
    sandbox: String,
    mut data: Stream,
    error: Stream,
) {
    let Some(port) = port_from_header(data.header("port")) else {
        let _ = error
            .writer
            .write_all(format!("invalid port {:?}", data.header("port").unwrap_or("")).as_bytes())
            .await;
        let _ = error.writer.close().await;
        let _ = data.writer.close().await;
        return;
    };
    let conn = match runtime.port_forward(sandbox.clone(), port).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(pod = %sandbox, port, error = %e, "port-forward dial failed");
            let msg = format!("error forwarding port {port} to pod {sandbox}: {e}");
            let _ = error.writer.write_all(msg.as_bytes()).await;
            let _ = error.writer.close().await;
            let _ = data.writer.close().await;
            return;
        }
    };
    let (mut cr, mut cw) = tokio::io::split(conn);
    let up = async {
        // Client to pod; the client's FIN becomes a write shutdown.
        let _ = tokio::io::copy(&mut data.reader, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    let writer = data.writer.clone();
    let down = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if writer.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = error
                        .writer
                        .write_all(format!("error reading from port {port}: {e}").as_bytes())
                        .await;
                    break;
                }
            }
        }
        let _ = writer.close().await;
        let _ = error.writer.close().await;
    };
    tokio::join!(up, down);
}

/// The most ports one WebSocket port-forward connection carries: channels are one byte,
/// two per port.
pub const MAX_WEBSOCKET_PORTS: usize = 128;

/// The port a SPDY data stream's `port` header names, if it is one (1-65535).
pub fn port_from_header(value: Option<&str>) -> Option<u16> {
    value.and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0)
}

/// The ports of a WebSocket port-forward request's query: `ports=80,443` (the comma may
/// be escaped) or repeated `port=`. Empty when the query names none; the error is the
/// message for the client.
pub fn ports_from_query(query: &str) -> Result<Vec<u16>, String> {
    let mut ports: Vec<u16> = Vec::new();
    for kv in query.split('&') {
        let Some(v) = kv
            .strip_prefix("ports=")
            .or_else(|| kv.strip_prefix("port="))
        else {
            continue;
        };
        let v = v.replace("%2C", ",").replace("%2c", ",");
        for p in v.split(',') {
            match p.parse::<u16>() {
                Ok(p) if p > 0 => ports.push(p),
                _ => return Err(format!("invalid port {p:?}")),
            }
            if ports.len() > MAX_WEBSOCKET_PORTS {
                return Err(format!(
                    "more than {MAX_WEBSOCKET_PORTS} ports requested: at most {MAX_WEBSOCKET_PORTS} fit one connection"
                ));
            }
        }
    }
    Ok(ports)
}

pub(crate) fn serve_websocket(
    req: Request<Incoming>,
    pf: PortForwardRequest,
    runtime: Arc<dyn StreamRuntime>,
) -> HttpResponse {
    let mut ports = match ports_from_query(req.uri().query().unwrap_or("")) {
        Ok(p) => p,
        Err(msg) => return plain(StatusCode::BAD_REQUEST, msg),
    };
    if ports.is_empty() {
        ports = pf
            .port
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .collect();
    }
    // Each port takes a data and an error channel, numbered in one byte.
    if ports.len() > MAX_WEBSOCKET_PORTS {
        return plain(
            StatusCode::BAD_REQUEST,
            format!(
                "{} ports requested: at most {MAX_WEBSOCKET_PORTS} fit one connection",
                ports.len()
            ),
        );
    }
    // The tunnel carries ports in its SPDY stream headers; the channel protocols need
    // them up front.
    let supported = if ports.is_empty() {
        let offered = super::header_list(&req, "sec-websocket-protocol");
        if !offered.iter().any(|p| p == PROTOCOL_TUNNEL) {
            return plain(
                StatusCode::BAD_REQUEST,
                "query parameter \"port\" is required",
            );
        }
        &[PROTOCOL_TUNNEL][..]
    } else {
        WS_PROTOCOLS
    };
    websocket::upgrade(req, supported, move |protocol, ws| async move {
        if protocol == PROTOCOL_TUNNEL {
            let (session, incoming) = spdy::Session::new(websocket::tunnel(ws), spdy::Role::Server);
            run_spdy_session(pf.pod_sandbox_id, runtime, session, incoming).await;
            return;
        }
        let inputs: Vec<u8> = (0..ports.len()).map(|i| (i * 2) as u8).collect();
        let (mux, mut rxs) = Mux::start(ws, websocket::is_base64(protocol), &inputs);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, port) in ports.iter().copied().enumerate() {
            let (data_ch, err_ch) = ((i * 2) as u8, (i * 2 + 1) as u8);
            let _ = mux.send(data_ch, &port.to_le_bytes()).await;
            let _ = mux.send(err_ch, &port.to_le_bytes()).await;
            let Some(mut rx) = rxs.remove(&data_ch) else {
                continue;
            };
            let runtime = runtime.clone();
            let sandbox = pf.pod_sandbox_id.clone();
            let mux = mux.clone();
            tasks.spawn(async move {
                let conn = match runtime.port_forward(sandbox.clone(), port).await {
                    Ok(c) => c,
                    Err(e) => {
                        let msg = format!("error forwarding port {port} to pod {sandbox}: {e}");
                        let _ = mux.send(err_ch, msg.as_bytes()).await;
                        return;
                    }
                };
                let (mut cr, mut cw) = tokio::io::split(conn);
                let up = async {
                    while let Some(b) = rx.recv().await {
                        if cw.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    let _ = cw.shutdown().await;
                };
                let down = async {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match cr.read(&mut buf).await {
                            Ok(0) => break,
                            Ok(n) => {
                                if mux.send(data_ch, &buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            Err(e) => {
                                let msg = format!("error reading from port {port}: {e}");
                                let _ = mux.send(err_ch, msg.as_bytes()).await;
                                break;
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = async { tokio::join!(up, down) } => {}
                    () = mux.closed() => {}
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        mux.close().await;
    })
}
