//! Forwarding to the upstream resolvers: each in turn over UDP with a timeout, again
//! over TCP when the UDP answer comes truncated. Only names outside the cluster zone
//! ever come here.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The upstream resolvers and how long each may take.
#[derive(Debug, Clone)]
pub struct Forwarder {
    upstream: Vec<SocketAddr>,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("encoding the query: {0}")]
    Encode(hickory_proto::ProtoError),
    #[error("decoding the answer: {0}")]
    Decode(hickory_proto::serialize::binary::DecodeError),
    #[error("the answer is for another question")]
    Mismatch,
}

impl Forwarder {
    pub fn new(upstream: Vec<SocketAddr>, timeout: Duration) -> Self {
        Forwarder { upstream, timeout }
    }

    pub fn upstream(&self) -> &[SocketAddr] {
        &self.upstream
    }

    /// Ask the upstream resolvers `request` (its ID is replaced on the wire and restored
    /// in the answer). None when none of them answers.
    pub async fn forward(&self, request: &Message) -> Option<Message> {
        let mut outgoing = request.clone();
        outgoing.metadata.id = rand::random();
        let bytes = match outgoing.to_vec() {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %ForwardError::Encode(e), "forwarding");
                return None;
            }
        };
        for server in &self.upstream {
            match self.exchange(*server, &outgoing, &bytes).await {
                Ok(mut answer) => {
                    answer.metadata.id = request.metadata.id;
                    return Some(answer);
                }
                Err(e) => tracing::debug!(upstream = %server, error = %e, "upstream resolver"),
            }
        }
        None
    }

    async fn exchange(
        &self,
        server: SocketAddr,
        outgoing: &Message,
        bytes: &[u8],
    ) -> Result<Message, ForwardError> {
        let answer = tokio::time::timeout(self.timeout, udp_exchange(server, outgoing, bytes))
            .await
            .map_err(|_| ForwardError::Timeout(self.timeout))??;
        if !answer.metadata.truncation {
            return Ok(answer);
        }
        tokio::time::timeout(self.timeout, tcp_exchange(server, outgoing, bytes))
            .await
            .map_err(|_| ForwardError::Timeout(self.timeout))?
    }
}

async fn udp_exchange(
    server: SocketAddr,
    outgoing: &Message,
    bytes: &[u8],
) -> Result<Message, ForwardError> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    // Connected, so only the server's datagrams arrive and a closed port is an error.
    socket.connect(server).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        match Message::from_vec(&buf[..n]) {
            // Stray datagrams (a late answer to someone else's ID) are skipped.
            Ok(answer) if answer.metadata.id == outgoing.metadata.id => {
                return check(outgoing, answer)
            }
            _ => continue,
        }
    }
}

async fn tcp_exchange(
    server: SocketAddr,
    outgoing: &Message,
    bytes: &[u8],
) -> Result<Message, ForwardError> {
    let mut stream = TcpStream::connect(server).await?;
    let len = u16::try_from(bytes.len()).map_err(|_| ForwardError::Mismatch)?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    let answer = Message::from_vec(&buf).map_err(ForwardError::Decode)?;
    if answer.metadata.id != outgoing.metadata.id {
        return Err(ForwardError::Mismatch);
    }
    check(outgoing, answer)
}

/// An answer must be to the question asked.
fn check(outgoing: &Message, answer: Message) -> Result<Message, ForwardError> {
    let same =
        answer.queries.len() == outgoing.queries.len()
            && answer.queries.iter().zip(&outgoing.queries).all(|(a, q)| {
                a.query_type() == q.query_type() && a.name().eq_ignore_root(q.name())
            });
    if same {
        Ok(answer)
    } else {
        Err(ForwardError::Mismatch)
    }
}
