use super::*;

const LIST_IMAGES: &str = "/runtime.v1.ImageService/ListImages";

/// HPACK representations as a Go or Java client writes them.
mod hpack {
    use super::super::{encode_integer, encode_string};

    /// Indexed Header Field (static or dynamic table index).
    pub fn indexed(index: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode_integer(index, 7, 0x80, &mut out);
        out
    }

    /// Literal with Incremental Indexing, indexed name: enters the dynamic table.
    pub fn indexing(name_index: usize, value: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_integer(name_index, 6, 0x40, &mut out);
        encode_string(value.as_bytes(), &mut out);
        out
    }

    /// Literal without Indexing, indexed name: leaves the dynamic table alone.
    pub fn not_indexing(name_index: usize, value: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_integer(name_index, 4, 0x00, &mut out);
        encode_string(value.as_bytes(), &mut out);
        out
    }

    /// Literal with Incremental Indexing, new name.
    pub fn indexing_new(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0x40];
        encode_string(name.as_bytes(), &mut out);
        encode_string(value.as_bytes(), &mut out);
        out
    }

    /// Dynamic Table Size Update.
    pub fn size_update(size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode_integer(size, 5, 0x20, &mut out);
        out
    }
}

/// A gRPC request's header block whose `:authority` and custom header enter the dynamic
/// table, as grpc-go's encoder does for the first request of a connection.
fn first_request(authority: Option<&str>) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(hpack::indexed(3)); // :method POST
    b.extend(hpack::indexed(6)); // :scheme http
    b.extend(hpack::indexing(4, LIST_IMAGES)); // :path
    if let Some(a) = authority {
        b.extend(hpack::indexing(1, a)); // :authority
    }
    b.extend(hpack::indexing_new("content-type", "application/grpc"));
    b.extend(hpack::indexing_new("user-agent", "grpc-go/1.58.3"));
    b.extend(hpack::indexing_new("te", "trailers"));
    b
}

/// Dynamic table indexes of `first_request`'s entries in a later request (newest first).
fn later_request(authority: bool) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(hpack::indexed(3));
    b.extend(hpack::indexed(6));
    let (te, ua, ct) = (62, 63, 64);
    let (auth, path) = if authority { (65, 66) } else { (0, 65) };
    b.extend(hpack::indexed(path));
    if authority {
        b.extend(hpack::indexed(auth));
    }
    b.extend(hpack::indexed(ct));
    b.extend(hpack::indexed(ua));
    b.extend(hpack::indexed(te));
    b
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame_header(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

fn headers(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let flags = FLAG_END_HEADERS | if end_stream { FLAG_END_STREAM } else { 0 };
    frame(TYPE_HEADERS, flags, stream, block)
}

/// An empty ListImagesRequest in one gRPC message, ending the stream.
fn grpc_empty_message(stream: u32) -> Vec<u8> {
    frame(0x0, FLAG_END_STREAM, stream, &[0, 0, 0, 0, 0])
}

fn settings() -> Vec<u8> {
    frame(0x4, 0, 0, &[])
}

/// Split `out` (what the server would read) into frames: (type, flags, stream, payload).
fn frames(mut data: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while data.len() >= FRAME_HEADER_LEN {
        let len = frame_len(data);
        let f = (
            data[3],
            data[4],
            stream_id(data),
            data[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len].to_vec(),
        );
        v.push(f);
        data = &data[FRAME_HEADER_LEN + len..];
    }
    assert!(data.is_empty(), "trailing partial frame");
    v
}

/// Decode every header block of `out` as the server's decoder would, in order.
fn server_view(out: &[u8]) -> Vec<(u32, Vec<(String, String)>)> {
    assert!(out.starts_with(PREFACE));
    let mut decoder = loona_hpack::Decoder::new();
    let mut blocks = Vec::new();
    let mut open: Option<(u32, Vec<u8>)> = None;
    for (kind, flags, stream, payload) in frames(&out[PREFACE.len()..]) {
        match kind {
            TYPE_HEADERS => {
                let (_, frag) = headers_fragment(flags, &payload).unwrap();
                open = Some((stream, frag.to_vec()));
            }
            TYPE_CONTINUATION => open.as_mut().unwrap().1.extend_from_slice(&payload),
            _ => continue,
        }
        if flags & FLAG_END_HEADERS != 0 {
            let (stream, block) = open.take().unwrap();
            let list = decoder
                .decode(&block)
                .unwrap()
                .into_iter()
                .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                .collect();
            blocks.push((stream, list));
        }
    }
    blocks
}

fn header<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn run(input: &[u8]) -> Vec<u8> {
    let mut r = AuthorityRewriter::new();
    let mut out = Vec::new();
    r.feed(input, &mut out).unwrap();
    r.finish(&mut out);
    out
}

fn connection(blocks: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    for (stream, block) in blocks {
        input.extend(headers(*stream, block, false));
        input.extend(grpc_empty_message(*stream));
    }
    input
}

#[test]
fn valid_authorities_pass_byte_for_byte() {
    for authority in [Some("localhost"), Some("127.0.0.1:1234"), None] {
        let input = connection(&[(1, first_request(authority)), (3, later_request(false))]);
        assert_eq!(run(&input), input, "authority {authority:?}");
    }
}

#[test]
fn socket_path_authority_becomes_localhost_in_every_request() {
    for path in [
        "/run/podrun/podrun.sock",
        "/tmp/x/p.sock",
        "unix:///tmp/x/p.sock",
        "",
    ] {
        let input = connection(&[
            (1, first_request(Some(path))),
            // The second request names the authority only by its dynamic table index.
            (3, later_request(true)),
            (5, later_request(true)),
        ]);
        let view = server_view(&run(&input));
        assert_eq!(view.len(), 3, "{path:?}");
        for (i, (stream, list)) in view.iter().enumerate() {
            assert_eq!(*stream, 1 + 2 * i as u32);
            assert_eq!(header(list, ":authority"), Some("localhost"), "{path:?}");
            assert_eq!(header(list, ":path"), Some(LIST_IMAGES));
            assert_eq!(header(list, ":method"), Some("POST"));
            assert_eq!(header(list, "content-type"), Some("application/grpc"));
            assert_eq!(header(list, "user-agent"), Some("grpc-go/1.58.3"));
            assert_eq!(header(list, "te"), Some("trailers"));
            assert_eq!(list.len(), 7, "nothing added or lost: {list:?}");
        }
    }
}

#[test]
fn percent_encoded_path_is_kept_when_the_server_accepts_it() {
    let path = "%2Ftmp%2Fx%2Fp.sock";
    let expected = if valid_authority(path.as_bytes()) {
        path
    } else {
        "localhost"
    };
    let input = connection(&[(1, first_request(Some(path))), (3, later_request(true))]);
    for (_, list) in server_view(&run(&input)) {
        assert_eq!(header(&list, ":authority"), Some(expected));
    }
}

#[test]
fn byte_at_a_time_gives_the_same_stream() {
    let input = connection(&[
        (1, first_request(Some("/tmp/x/p.sock"))),
        (3, later_request(true)),
    ]);
    let whole = run(&input);
    let mut r = AuthorityRewriter::new();
    let mut out = Vec::new();
    for b in &input {
        r.feed(std::slice::from_ref(b), &mut out).unwrap();
    }
    r.finish(&mut out);
    assert_eq!(out, whole);
    assert_eq!(r.rewritten(), 2);
}

#[test]
fn data_frames_are_forwarded_before_they_are_complete() {
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x0, 0, 1, &[7u8; 1000]));
    let mut r = AuthorityRewriter::new();
    let mut out = Vec::new();
    r.feed(&input[..PREFACE.len() + FRAME_HEADER_LEN + 10], &mut out)
        .unwrap();
    assert_eq!(out.len(), PREFACE.len() + FRAME_HEADER_LEN + 10);
    r.feed(&input[PREFACE.len() + FRAME_HEADER_LEN + 10..], &mut out)
        .unwrap();
    assert_eq!(out, input);
}

#[test]
fn continuation_padding_and_priority_are_handled() {
    let block = first_request(Some("/tmp/x/p.sock"));
    let (a, b) = block.split_at(10);
    // HEADERS, padded, with priority and END_STREAM, then one CONTINUATION.
    let mut payload = vec![3u8]; // pad length
    payload.extend([0x80, 0, 0, 0, 42]); // exclusive dependency on stream 0, weight 42
    payload.extend_from_slice(a);
    payload.extend([0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
        1,
        &payload,
    ));
    input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b));
    let out = run(&input);
    let fs = frames(&out[PREFACE.len()..]);
    assert_eq!(
        fs.len(),
        1,
        "one HEADERS frame carries the re-encoded block"
    );
    let (kind, flags, stream, payload) = &fs[0];
    assert_eq!((*kind, *stream), (TYPE_HEADERS, 1));
    assert_eq!(
        *flags,
        FLAG_END_HEADERS | FLAG_END_STREAM | FLAG_PRIORITY,
        "END_STREAM and priority kept, padding dropped"
    );
    assert_eq!(&payload[..5], &[0x80, 0, 0, 0, 42]);
    let view = server_view(&out);
    assert_eq!(header(&view[0].1, ":authority"), Some("localhost"));
}

#[test]
fn a_large_rewritten_block_is_split_into_continuations() {
    let mut block = first_request(Some("/tmp/x/p.sock"));
    let big = "v".repeat(40_000);
    block.extend(hpack::indexing_new("x-big", &big));
    let out = run(&connection(&[(1, block)]));
    let fs = frames(&out[PREFACE.len()..]);
    let kinds: Vec<u8> = fs.iter().map(|f| f.0).collect();
    assert_eq!(
        kinds,
        [0x4, TYPE_HEADERS, TYPE_CONTINUATION, TYPE_CONTINUATION, 0x0]
    );
    assert!(fs.iter().all(|f| f.3.len() <= MAX_FRAME_PAYLOAD));
    assert_eq!(fs[1].1 & FLAG_END_HEADERS, 0);
    assert_eq!(fs[3].1 & FLAG_END_HEADERS, FLAG_END_HEADERS);
    let view = server_view(&out);
    assert_eq!(header(&view[0].1, "x-big"), Some(big.as_str()));
    assert_eq!(header(&view[0].1, ":authority"), Some("localhost"));
}

#[test]
fn size_updates_and_eviction_follow_the_client_table() {
    // The client shrinks its table to 64 bytes: the :path entry (72 bytes) empties it,
    // the :authority entry (55 bytes) then fits, and the next request refers to it.
    let mut first = hpack::size_update(64);
    first.extend(hpack::indexed(3));
    first.extend(hpack::indexed(6));
    first.extend(hpack::indexing(4, LIST_IMAGES));
    first.extend(hpack::indexing(1, "/tmp/x/p.sock"));
    let mut second = vec![];
    second.extend(hpack::indexed(3));
    second.extend(hpack::indexed(6));
    second.extend(hpack::not_indexing(4, LIST_IMAGES));
    second.extend(hpack::indexed(62)); // the authority entry, the only one left
    let view = server_view(&run(&connection(&[(1, first), (3, second)])));
    assert_eq!(header(&view[1].1, ":authority"), Some("localhost"));
    assert_eq!(header(&view[1].1, ":path"), Some(LIST_IMAGES));
}

#[test]
fn not_http2_passes_untouched() {
    let input = b"GET / HTTP/1.1\r\nHost: /tmp/x.sock\r\n\r\n".to_vec();
    assert_eq!(run(&input), input);
}

#[test]
fn framing_errors_reach_the_server_as_sent() {
    // A DATA frame in the middle of a header block: the server must see it and fail
    // the connection itself.
    let block = first_request(Some("/tmp/x/p.sock"));
    let mut input = PREFACE.to_vec();
    input.extend(frame(TYPE_HEADERS, 0, 1, &block));
    input.extend(grpc_empty_message(1));
    input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[]));
    assert_eq!(run(&input), input);
    // A CONTINUATION outside any block.
    let mut input = PREFACE.to_vec();
    input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block));
    assert_eq!(run(&input), input);
    // Padding longer than the frame.
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        TYPE_HEADERS,
        FLAG_PADDED | FLAG_END_HEADERS,
        1,
        &[200, 1],
    ));
    assert_eq!(run(&input), input);
}

#[test]
fn undecodable_blocks_pass_until_a_rewrite_then_end_the_connection() {
    let garbage = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let input = connection(&[(1, garbage.to_vec())]);
    assert_eq!(run(&input), input, "the server reports the fault itself");

    let input = connection(&[(1, first_request(Some("/x.sock"))), (3, garbage.to_vec())]);
    let mut r = AuthorityRewriter::new();
    let err = r.feed(&input, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(err, TransportError::Hpack { stream: 3, .. }),
        "{err}"
    );
}

#[test]
fn header_blocks_are_bounded() {
    let mut input = connection(&[(1, first_request(Some("/x.sock")))]);
    let chunk = vec![0u8; MAX_FRAME_PAYLOAD];
    input.extend(frame(TYPE_HEADERS, 0, 3, &chunk));
    for _ in 0..(MAX_HEADER_BLOCK / MAX_FRAME_PAYLOAD) {
        input.extend(frame(TYPE_CONTINUATION, 0, 3, &chunk));
    }
    let mut r = AuthorityRewriter::new();
    let err = r.feed(&input, &mut Vec::new()).unwrap_err();
    assert_eq!(err, TransportError::HeaderBlockTooLarge { stream: 3 });
}

/// The same requests over a unix socket to a real tonic server: each gets its answer.
mod server {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    async fn serve(dir: &std::path::Path, filtered: bool) -> std::path::PathBuf {
        let store = Arc::new(podrun_runtime::image::ImageStore::open(dir.join("root")).unwrap());
        let images =
            crate::image_service::ImageService::new(store, dir.join("hosts"), dir.join("root"));
        let sock = dir.join("cri.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let router = tonic::transport::Server::builder().add_service(
            podrun_cri_proto::v1::image_service_server::ImageServiceServer::new(images),
        );
        if filtered {
            let incoming = async_stream::stream! {
                loop {
                    yield listener.accept().await.map(|(s, _)| AuthorityFix::new(s));
                }
            };
            tokio::spawn(router.serve_with_incoming(incoming));
        } else {
            tokio::spawn(
                router
                    .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
            );
        }
        sock
    }

    #[derive(Debug, PartialEq)]
    enum Outcome {
        /// The trailers' grpc-status.
        Status(String),
        /// RST_STREAM with this error code.
        Reset(u32),
    }

    /// Send `blocks` as requests on one connection; the outcome of each, by stream.
    async fn call(sock: &std::path::Path, blocks: &[Vec<u8>]) -> Vec<Outcome> {
        let streams: Vec<(u32, Vec<u8>)> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (1 + 2 * i as u32, b.clone()))
            .collect();
        call_raw(sock, &connection(&streams), blocks.len()).await.0
    }

    /// Send `input` (a whole client connection carrying `streams` requests); the outcome
    /// of each request, and the payloads of the PING acknowledgements received.
    async fn call_raw(
        sock: &std::path::Path,
        input: &[u8],
        streams: usize,
    ) -> (Vec<Outcome>, Vec<Vec<u8>>) {
        let mut conn = UnixStream::connect(sock).await.unwrap();
        conn.write_all(input).await.unwrap();
        let mut pongs = Vec::new();
        let mut decoder = loona_hpack::Decoder::new();
        let mut outcomes: Vec<Option<Outcome>> = (0..streams).map(|_| None).collect();
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while outcomes.iter().any(Option::is_none) {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, conn.read(&mut chunk))
                .await
                .expect("the server answers every request")
                .unwrap();
            assert!(n > 0, "server closed the connection: {outcomes:?}");
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= FRAME_HEADER_LEN && buf.len() >= FRAME_HEADER_LEN + frame_len(&buf) {
                let len = frame_len(&buf);
                let f: Vec<u8> = buf.drain(..FRAME_HEADER_LEN + len).collect();
                let (kind, flags, stream) = (f[3], f[4], stream_id(&f));
                let payload = &f[FRAME_HEADER_LEN..];
                let slot = (stream as usize).checked_sub(1).map(|s| s / 2);
                match kind {
                    TYPE_HEADERS => {
                        let (_, frag) = headers_fragment(flags, payload).unwrap();
                        let list = decoder.decode(frag).unwrap();
                        if let Some((_, v)) = list.iter().find(|(n, _)| n == b"grpc-status") {
                            outcomes[slot.unwrap()] =
                                Some(Outcome::Status(String::from_utf8_lossy(v).into()));
                        }
                    }
                    0x3 => {
                        let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                        outcomes[slot.unwrap()] = Some(Outcome::Reset(code));
                    }
                    0x4 if flags & 0x1 == 0 => {
                        conn.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap()
                    }
                    0x6 if flags & 0x1 != 0 => pongs.push(payload.to_vec()),
                    0x7 => panic!("GOAWAY from the server: {payload:?}"),
                    _ => {}
                }
            }
        }
        (outcomes.into_iter().map(Option::unwrap).collect(), pongs)
    }

    #[tokio::test]
    async fn pings_and_unknown_fields_as_a_go_client_sends_them() {
        // grpc-go's flow-control estimator PINGs along with its requests, and a newer
        // client's message may carry fields this proto does not know (field 99 here).
        let dir = tempfile::tempdir().unwrap();
        let sock = serve(dir.path(), true).await;
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(0x6, 0, 0, b"bdp-ping"));
        input.extend(headers(
            1,
            &first_request(Some("/run/podrun/podrun.sock")),
            false,
        ));
        let message = [0x98, 0x06, 0x01];
        let mut data = vec![0, 0, 0, 0, message.len() as u8];
        data.extend(message);
        input.extend(frame(0x0, FLAG_END_STREAM, 1, &data));
        let (got, pongs) = call_raw(&sock, &input, 1).await;
        assert_eq!(got, [Outcome::Status("0".into())]);
        assert_eq!(pongs, [b"bdp-ping".to_vec()]);
    }

    #[tokio::test]
    async fn every_authority_a_client_may_send_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let sock = serve(dir.path(), true).await;
        for authority in [
            Some("/run/podrun/podrun.sock"),
            Some("%2Frun%2Fpodrun%2Fpodrun.sock"),
            Some("localhost"),
            Some(""),
            None,
        ] {
            let with_table_refs = authority.is_some();
            let got = call(
                &sock,
                &[first_request(authority), later_request(with_table_refs)],
            )
            .await;
            assert_eq!(
                got,
                [Outcome::Status("0".into()), Outcome::Status("0".into())],
                "authority {authority:?}"
            );
        }
    }

    #[tokio::test]
    async fn without_the_filter_the_server_resets_a_path_authority() {
        // Why the filter exists: the HTTP/2 server alone refuses what Go clients send.
        let dir = tempfile::tempdir().unwrap();
        let sock = serve(dir.path(), false).await;
        let got = call(&sock, &[first_request(Some("/run/podrun/podrun.sock"))]).await;
        assert_eq!(got, [Outcome::Reset(0x1)], "PROTOCOL_ERROR");
        let got = call(&sock, &[first_request(Some("localhost"))]).await;
        assert_eq!(got, [Outcome::Status("0".into())]);
    }
}
