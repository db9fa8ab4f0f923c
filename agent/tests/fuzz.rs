//! Fuzz targets for what the streaming server parses from its peers: SPDY frames and
//! header blocks, WebSocket channel messages, sub-protocol negotiation, and the ports of
//! a port-forward request. Seeds are in fuzz/corpus/<target>/; see fuzz/README.md.

#[path = "../../fuzz/harness.rs"]
mod harness;

use bytes::{Bytes, BytesMut};
use harness::{check_strategy, clear_error, fuzz, show, Target};
use podrun_agent::streaming::remotecommand::ResizeDecoder;
use podrun_agent::streaming::spdy::{
    encode_frame, read_frame, Frame, HeaderDecoder, HeaderEncoder, Headers,
};
use podrun_agent::streaming::{header_values, negotiate, portforward, remotecommand, websocket};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio_tungstenite::tungstenite::Message;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("building a current-thread runtime")
}

/// Decodes every frame of `wire` with one decoder, as a session's reader does.
fn read_all(rt: &tokio::runtime::Runtime, wire: &[u8]) -> (Vec<Frame>, Option<String>) {
    rt.block_on(async {
        let mut dec = HeaderDecoder::new();
        let mut r = wire;
        let mut frames = Vec::new();
        loop {
            match read_frame(&mut r, &mut dec).await {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, None),
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    })
}

#[test]
fn spdy_frames() {
    let rt = runtime();
    fuzz(Target::new("spdy_frames"), |input| {
        let (_, err) = read_all(&rt, input);
        err.as_deref().map_or(Ok(()), clear_error)
    });
}

#[test]
fn spdy_header_block() {
    fuzz(
        Target::new("spdy_header_block"),
        |input| match HeaderDecoder::new().decode(input) {
            Ok(_) => Ok(()),
            Err(e) => clear_error(e),
        },
    );
}

/// Header names as SPDY/3 carries them (lower case) and values without NUL, which
/// separates the values of one name on the wire.
fn headers() -> impl Strategy<Value = Headers> {
    vec(("[a-z0-9:_-]{1,20}", "[^\u{0}]{0,40}"), 0..8)
}

fn frame() -> impl Strategy<Value = Frame> {
    let id = 0u32..=0x7fff_ffff;
    prop_oneof![
        (id.clone(), id.clone(), 0u8..8, any::<u8>(), headers()).prop_map(
            |(stream_id, associated_id, priority, flags, headers)| Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                headers,
            }
        ),
        (id.clone(), any::<u8>(), headers()).prop_map(|(stream_id, flags, headers)| {
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
        }),
        (id.clone(), any::<u8>(), headers()).prop_map(|(stream_id, flags, headers)| {
            Frame::Headers {
                stream_id,
                flags,
                headers,
            }
        }),
        (id.clone(), any::<u32>())
            .prop_map(|(stream_id, status)| Frame::RstStream { stream_id, status }),
        (
            any::<u8>(),
            vec((any::<u8>(), 0u32..=0x00ff_ffff, any::<u32>()), 0..6)
        )
            .prop_map(|(flags, entries)| Frame::Settings { flags, entries }),
        any::<u32>().prop_map(|id| Frame::Ping { id }),
        (id.clone(), any::<u32>()).prop_map(|(last_good_stream_id, status)| Frame::GoAway {
            last_good_stream_id,
            status,
        }),
        (id.clone(), 0u32..=0x7fff_ffff)
            .prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
        (id, any::<u8>(), vec(any::<u8>(), 0..512)).prop_map(|(stream_id, flags, data)| {
            Frame::Data {
                stream_id,
                flags,
                data: Bytes::from(data),
            }
        }),
    ]
}

#[test]
fn spdy_frames_round_trip() {
    let rt = runtime();
    check_strategy(
        Target::new("spdy_frames_round_trip"),
        vec(frame(), 1..8),
        |frames| {
            let mut enc = HeaderEncoder::new();
            let mut wire = BytesMut::new();
            for f in &frames {
                encode_frame(f, &mut enc, &mut wire).map_err(|e| e.to_string())?;
            }
            let (decoded, err) = read_all(&rt, &wire);
            if let Some(e) = err {
                return Err(format!("decoding what was encoded: {e}"));
            }
            if decoded != frames {
                return Err(format!("decoded {decoded:?}"));
            }
            Ok(())
        },
    );
}

#[test]
fn spdy_header_block_round_trip() {
    check_strategy(
        Target::new("spdy_header_block_round_trip"),
        vec(headers(), 1..4),
        |blocks| {
            // One compression context across blocks, as on a connection.
            let mut enc = HeaderEncoder::new();
            let mut dec = HeaderDecoder::new();
            for h in &blocks {
                let wire = enc.encode(h).map_err(|e| e.to_string())?;
                let back = dec.decode(&wire).map_err(|e| e.to_string())?;
                if &back != h {
                    return Err(format!("decoded {back:?}"));
                }
            }
            Ok(())
        },
    );
}

/// The first byte picks the message type; the rest is its payload.
fn message(input: &[u8]) -> Message {
    match input.split_first() {
        Some((kind, rest)) if kind % 2 == 1 => {
            Message::Text(String::from_utf8_lossy(rest).into_owned().into())
        }
        Some((_, rest)) => Message::Binary(Bytes::copy_from_slice(rest)),
        None => Message::Binary(Bytes::new()),
    }
}

#[test]
fn websocket_message() {
    fuzz(Target::new("websocket_message"), |input| {
        let _ = websocket::decode(&message(input));
        Ok(())
    });
}

#[test]
fn websocket_message_round_trip() {
    // Base64 channels are single digits: the channel travels as one ASCII character.
    let strategy = prop_oneof![
        (any::<u8>(), vec(any::<u8>(), 0..256), Just(false)),
        (0u8..10, vec(any::<u8>(), 0..256), Just(true)),
    ];
    check_strategy(
        Target::new("websocket_message_round_trip"),
        strategy,
        |(channel, data, base64)| {
            let msg = websocket::encode(channel, &data, base64);
            match websocket::decode(&msg) {
                Some((c, d)) if c == channel && d[..] == data[..] => Ok(()),
                other => Err(format!("decoded {other:?}")),
            }
        },
    );
}

/// Lines of the input are values of the sub-protocol header a client offers.
fn offered_protocols(input: &[u8]) -> Vec<String> {
    let mut headers = http::HeaderMap::new();
    for line in input.split(|b| *b == b'\n') {
        if let Ok(v) = http::HeaderValue::from_bytes(line) {
            headers.append("sec-websocket-protocol", v);
        }
    }
    header_values(&headers, "sec-websocket-protocol")
}

#[test]
fn websocket_protocol() {
    fuzz(Target::new("websocket_protocol"), |input| {
        let offered = offered_protocols(input);
        for supported in [
            remotecommand::SPDY_PROTOCOLS,
            &[
                websocket::V5_BINARY,
                websocket::V4_BINARY,
                websocket::V4_BASE64,
                websocket::BINARY,
                websocket::BASE64,
            ][..],
        ] {
            if let Some(p) = negotiate(&offered, supported) {
                if !offered.iter().any(|o| o == p) {
                    return Err(format!("negotiated {p:?}, which was not offered"));
                }
                let _ = remotecommand::Version::from_protocol(p);
                let _ = websocket::is_base64(p);
            }
        }
        Ok(())
    });
}

#[test]
fn portforward_query() {
    fuzz(Target::new("portforward_query"), |input| {
        let query = String::from_utf8_lossy(input);
        match portforward::ports_from_query(&query) {
            Ok(ports) if ports.len() > portforward::MAX_WEBSOCKET_PORTS => {
                Err(format!("{} ports accepted", ports.len()))
            }
            Ok(ports) if ports.contains(&0) => Err("port 0 accepted".into()),
            Ok(_) => Ok(()),
            Err(e) => clear_error(&e),
        }
    });
}

#[test]
fn portforward_port_header() {
    fuzz(Target::new("portforward_port_header"), |input| {
        let value = String::from_utf8_lossy(input);
        match portforward::port_from_header(Some(&value)) {
            Some(0) => Err(format!("port 0 from {}", show(input))),
            _ => Ok(()),
        }
    });
}

/// The first byte sets the chunk size the rest arrives in; the events must not depend on
/// how the stream was split.
#[test]
fn resize_events() {
    fuzz(Target::new("resize_events"), |input| {
        let Some((size, stream)) = input.split_first() else {
            return Ok(());
        };
        let mut chunked = ResizeDecoder::default();
        let mut events = Vec::new();
        let mut chunked_ok = true;
        for chunk in stream.chunks(usize::from(size % 64) + 1) {
            let (got, status) = chunked.push(chunk);
            events.extend(got);
            if let Err(e) = status {
                clear_error(e)?;
                chunked_ok = false;
                break;
            }
        }
        let (whole, status) = ResizeDecoder::default().push(stream);
        if chunked_ok && status.is_ok() && whole != events {
            return Err(format!("whole {whole:?}, chunked {events:?}"));
        }
        Ok(())
    });
}
