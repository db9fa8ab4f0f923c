//! From request bytes to a response: header flags, EDNS, the zone's answer or the
//! decision to forward, and truncation to what a UDP client can take. No I/O here.

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};

use super::zone::{Resolution, Zone};

/// The payload size podrun advertises in its EDNS OPT: the size the DNS flag day 2020
/// agreed on, which avoids IP fragmentation.
pub const EDNS_PAYLOAD: u16 = 1232;

/// The largest UDP response podrun sends, whatever a client advertises.
const MAX_UDP_PAYLOAD: usize = 4096;

/// What to do with one request.
#[derive(Debug)]
pub enum Outcome {
    /// Send this response.
    Respond(Message),
    /// The cluster answered with a CNAME out of the zone: ask upstream for the target
    /// (`query`) and append what it answers to `response`.
    Chase { response: Message, query: Query },
    /// The name is not the cluster's: ask upstream with `request`, answer with `response`
    /// (a SERVFAIL, whose header and OPT are used if no upstream answers).
    Forward { request: Message, response: Message },
    /// Not even a DNS header: say nothing.
    Drop,
}

/// Decide what `bytes` ask for and answer it from `zone` if the cluster owns the name.
pub fn handle(zone: &Zone, bytes: &[u8]) -> Outcome {
    handle_udp(zone, bytes).0
}

/// [`handle`], and the size a UDP response may have (see [`udp_limit`]), from one
/// parse of the request.
pub fn handle_udp(zone: &Zone, bytes: &[u8]) -> (Outcome, usize) {
    match Message::from_vec(bytes) {
        Ok(request) => {
            let limit = udp_limit(request.max_payload());
            (handle_request(zone, request), limit)
        }
        Err(_) => (malformed(bytes), 512),
    }
}

fn handle_request(zone: &Zone, request: Message) -> Outcome {
    if request.metadata.message_type != MessageType::Query {
        return Outcome::Drop;
    }
    let mut response = response_to(&request);
    if request.metadata.op_code != OpCode::Query {
        response.metadata.response_code = ResponseCode::NotImp;
        return Outcome::Respond(response);
    }
    let [query] = request.queries.as_slice() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return Outcome::Respond(response);
    };
    if query.query_class() != DNSClass::IN && zone.is_cluster_name(query.name()) {
        response.metadata.response_code = ResponseCode::Refused;
        return Outcome::Respond(response);
    }
    match zone.resolve(query.name(), query.query_type()) {
        Resolution::Forward => {
            response.metadata.response_code = ResponseCode::ServFail;
            Outcome::Forward { request, response }
        }
        Resolution::Answer(answer) => {
            response.metadata.response_code = answer.rcode;
            response.metadata.authoritative = answer.authoritative;
            response.answers = answer.answers;
            response.authorities = answer.authorities;
            response.additionals = answer.additionals;
            match answer.external_target {
                Some(target) if query.query_type() != RecordType::CNAME => Outcome::Chase {
                    response,
                    query: Query::query(target, query.query_type()),
                },
                _ => Outcome::Respond(response),
            }
        }
    }
}

/// The response skeleton: ID, opcode, RD and CD copied, RA set, the question echoed,
/// and an OPT record when the request had one.
pub fn response_to(request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.recursion_available = true;
    response.queries = request.queries.clone();
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_version(0);
        response.set_edns(edns);
    }
    response
}

/// A FORMERR for a request whose header parses but whose body does not.
fn malformed(bytes: &[u8]) -> Outcome {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        // Too short for a header, or a response: answering could start a loop.
        return Outcome::Drop;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let op_code = OpCode::from_u8((bytes[2] >> 3) & 0x0f);
    let mut response = Message::error_msg(id, op_code, ResponseCode::FormErr);
    response.metadata.recursion_desired = bytes[2] & 0x01 != 0;
    response.metadata.recursion_available = true;
    Outcome::Respond(response)
}

/// The size a UDP response to `request` may have: 512 bytes, or the EDNS size the
/// client advertised (at most [`MAX_UDP_PAYLOAD`]).
pub fn udp_limit(request_max_payload: u16) -> usize {
    usize::from(request_max_payload).clamp(512, MAX_UDP_PAYLOAD)
}

/// Encode `response`; when it is larger than `limit` (UDP), send it without its record
/// sections and with TC set, so the client asks again over TCP.
pub fn encode(mut response: Message, limit: Option<usize>) -> Option<Vec<u8>> {
    let bytes = match response.to_vec() {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "encoding a DNS response");
            response.answers.clear();
            response.authorities.clear();
            response.additionals.clear();
            response.metadata.response_code = ResponseCode::ServFail;
            return response.to_vec().ok();
        }
    };
    match limit {
        Some(limit) if bytes.len() > limit => {
            // Only the additional section may go without saying so (RFC 2181 9).
            if !response.additionals.is_empty() {
                let mut trimmed = response.clone();
                trimmed.additionals.clear();
                if let Ok(b) = trimmed.to_vec() {
                    if b.len() <= limit {
                        return Some(b);
                    }
                }
            }
            response.answers.clear();
            response.authorities.clear();
            response.additionals.clear();
            response.metadata.truncation = true;
            response.to_vec().ok()
        }
        _ => Some(bytes),
    }
}

/// A fresh query for `name` (used by tests and the measurements).
pub fn query(id: u16, name: &str, qtype: RecordType) -> Option<Message> {
    let name = Name::from_ascii(name).ok()?;
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, qtype));
    Some(message)
}
