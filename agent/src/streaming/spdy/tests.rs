use bytes::{Bytes, BytesMut};
use flate2::{Decompress, FlushDecompress};
use tokio::io::AsyncWriteExt;

use super::*;

fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
    let mut enc = HeaderEncoder::new();
    let mut buf = BytesMut::new();
    for f in frames {
        encode_frame(f, &mut enc, &mut buf).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut dec = HeaderDecoder::new();
        let mut r = &buf[..];
        let mut out = Vec::new();
        while let Some(f) = read_frame(&mut r, &mut dec).await.unwrap() {
            out.push(f);
        }
        out
    })
}

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn dictionary_matches_spec_size() {
    // The SPDY/3 dictionary is 1423 bytes (ending in ",enq=0.").
    assert_eq!(dictionary().len(), 1423);
    assert!(dictionary().ends_with(b",*,enq=0."));
    assert!(dictionary().starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
}

#[test]
fn frames_roundtrip() {
    let frames = vec![
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 3,
            flags: FLAG_FIN,
            headers: h(&[("streamtype", "error"), ("port", "80")]),
        },
        Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: vec![],
        },
        Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from_static(b"hello"),
        },
        Frame::Data {
            stream_id: 3,
            flags: FLAG_FIN,
            data: Bytes::new(),
        },
        Frame::RstStream {
            stream_id: 5,
            status: rst::CANCEL,
        },
        Frame::Settings {
            flags: 0,
            entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)],
        },
        Frame::Ping { id: 7 },
        Frame::GoAway {
            last_good_stream_id: 9,
            status: 0,
        },
        Frame::Headers {
            stream_id: 1,
            flags: 0,
            headers: h(&[("a", "b")]),
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 65536,
        },
        // The compression context carries over between header blocks.
        Frame::SynStream {
            stream_id: 3,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers: h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
        },
    ];
    assert_eq!(roundtrip(&frames), frames);
}

#[test]
fn data_frame_wire_format() {
    let mut enc = HeaderEncoder::new();
    let mut buf = BytesMut::new();
    let f = Frame::Data {
        stream_id: 5,
        flags: FLAG_FIN,
        data: Bytes::from_static(b"ab"),
    };
    encode_frame(&f, &mut enc, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0, 0, 0, 5, 1, 0, 0, 2, b'a', b'b']);
    buf.clear();
    encode_frame(&Frame::Ping { id: 2 }, &mut enc, &mut buf).unwrap();
    assert_eq!(&buf[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 2]);
}

#[test]
fn header_compression_roundtrip_many_blocks() {
    let mut enc = HeaderEncoder::new();
    let mut dec = HeaderDecoder::new();
    for i in 0..50 {
        let headers = h(&[
            ("streamtype", "stdout"),
            ("requestid", &i.to_string()),
            ("x-long", &"v".repeat(i * 100)),
        ]);
        let block = enc.encode(&headers).unwrap();
        assert_eq!(dec.decode(&block).unwrap(), headers);
    }
}

#[test]
fn header_names_are_lowercased_and_nul_values_split() {
    let mut enc = HeaderEncoder::new();
    let mut dec = HeaderDecoder::new();
    let block = enc.encode(&h(&[("StreamType", "a\0b")])).unwrap();
    assert_eq!(
        dec.decode(&block).unwrap(),
        h(&[("streamtype", "a"), ("streamtype", "b")])
    );
}

#[test]
fn dictionary_compresses_common_names() {
    // Compression against the dictionary makes "content-type" etc. nearly free;
    // a decoder without it must fail, which shows the dictionary is in play.
    let mut enc = HeaderEncoder::new();
    let block = enc
        .encode(&h(&[("content-type", "text/plain"), ("status", "200 OK")]))
        .unwrap();
    let mut plain = Decompress::new(true);
    let mut out = Vec::with_capacity(1024);
    let err = plain
        .decompress_vec(&block, &mut out, FlushDecompress::Sync)
        .unwrap_err();
    assert!(err.needs_dictionary().is_some());
}

#[tokio::test]
async fn server_answers_ping_and_stops_accepting_after_goaway() {
    let (a, b) = tokio::io::duplex(4096);
    let (_server, mut incoming) = Session::new(b, Role::Server);
    let (mut rd, mut wr) = tokio::io::split(a);
    let mut enc = HeaderEncoder::new();
    let mut dec = HeaderDecoder::new();
    let send = |f: Frame, enc: &mut HeaderEncoder| {
        let mut buf = BytesMut::new();
        encode_frame(&f, enc, &mut buf).unwrap();
        buf
    };
    wr.write_all(&send(Frame::Ping { id: 1 }, &mut enc))
        .await
        .unwrap();
    assert_eq!(
        read_frame(&mut rd, &mut dec).await.unwrap(),
        Some(Frame::Ping { id: 1 })
    );
    let syn = Frame::SynStream {
        stream_id: 1,
        associated_id: 0,
        priority: 0,
        flags: 0,
        headers: vec![("streamtype".into(), "stdin".into())],
    };
    wr.write_all(&send(syn, &mut enc)).await.unwrap();
    assert!(matches!(
        read_frame(&mut rd, &mut dec).await.unwrap(),
        Some(Frame::SynReply { stream_id: 1, .. })
    ));
    let mut s = incoming.accept().await.unwrap();
    let goaway = Frame::GoAway {
        last_good_stream_id: 0,
        status: 0,
    };
    wr.write_all(&send(goaway, &mut enc)).await.unwrap();
    assert!(incoming.accept().await.is_none());
    // Streams already open keep working after GOAWAY.
    let data = Frame::Data {
        stream_id: 1,
        flags: FLAG_FIN,
        data: Bytes::from_static(b"x"),
    };
    wr.write_all(&send(data, &mut enc)).await.unwrap();
    assert_eq!(s.reader.read_to_end().await, b"x");
}

#[tokio::test]
async fn session_open_data_fin_ping_and_flow_control() {
    let (a, b) = tokio::io::duplex(4096);
    let (client, _cin) = Session::new(a, Role::Client);
    let (server, mut sin) = Session::new(b, Role::Server);
    let srv = tokio::spawn(async move {
        let mut s = sin.accept().await.unwrap();
        assert_eq!(s.header("streamType"), Some("data"));
        // Echo everything back, then FIN.
        while let Some(chunk) = s.reader.read_chunk().await {
            s.writer.write_all(&chunk).await.unwrap();
        }
        s.writer.close().await.unwrap();
        server
    });
    let mut s = client
        .open(
            vec![("streamtype".into(), "data".into())],
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let w = s.writer.clone();
    let p2 = payload.clone();
    let sender = tokio::spawn(async move {
        w.write_all(&p2).await.unwrap();
        w.close().await.unwrap();
    });
    let got = s.reader.read_to_end().await;
    sender.await.unwrap();
    assert_eq!(got.len(), payload.len());
    assert!(got == payload);
    client.ping(1);
    let server = srv.await.unwrap();
    // Both sides did flow control with each other.
    assert!(server.shared.state.lock().unwrap().peer_flow_control);
    client.close().await;
    server.closed().await;
}
