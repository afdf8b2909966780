//! Forwarding names the cluster does not know to the node's upstream
//! resolvers, from the agent's own namespace.
//!
//! Each upstream is asked over UDP (the request as the client sent it, EDNS
//! included, under a fresh random id) and again over TCP when the answer is
//! truncated. All attempts share one time budget: each upstream gets an equal
//! share of what is left, so a dead first upstream cannot starve the next, and
//! when nothing answers in time the client gets SERVFAIL. A SERVFAIL or
//! REFUSED from one upstream moves on to the next one; the last such answer is
//! returned when none does better.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::{timeout_at, Instant},
};

use super::handler::{server_failure, Forward};

/// The longest budget a forwarded query may have.
pub const MAX_BUDGET: Duration = Duration::from_secs(5);

const TRUNCATED: u8 = 0x02;
const QR: u8 = 0x80;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_REFUSED: u8 = 5;

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("no answer in time")]
    Timeout,
    #[error("{0}")]
    Io(io::Error),
    #[error("the answer does not match the query")]
    Mismatch,
}

impl From<io::Error> for ExchangeError {
    fn from(cause: io::Error) -> Self {
        Self::Io(cause)
    }
}

#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    budget: Duration,
}

impl Forwarder {
    /// `budget` is capped at [`MAX_BUDGET`].
    pub fn new(upstreams: Vec<SocketAddr>, budget: Duration) -> Self {
        Forwarder {
            upstreams,
            budget: budget.min(MAX_BUDGET),
        }
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The upstream answer to `request` under the client's id, or SERVFAIL.
    pub async fn forward(&self, request: &[u8], query: Forward) -> Vec<u8> {
        let deadline = Instant::now() + self.budget;
        let mut fallback = None;
        let mut upstream_query = request.to_vec();
        for (index, upstream) in self.upstreams.iter().enumerate() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let share = (deadline - now) / (self.upstreams.len() - index) as u32;
            let id: u16 = rand::random();
            upstream_query[..2].copy_from_slice(&id.to_be_bytes());
            match exchange(*upstream, &upstream_query, query, now + share).await {
                Ok(mut answer) => {
                    answer[..2].copy_from_slice(&request[..2]);
                    let rcode = answer[3] & 0x0f;
                    if rcode != RCODE_SERVFAIL && rcode != RCODE_REFUSED {
                        return answer;
                    }
                    tracing::debug!(%upstream, rcode, "dns: upstream failed the query, trying the next");
                    fallback = Some(answer);
                }
                Err(error) => tracing::debug!(%upstream, %error, "dns: upstream did not answer"),
            }
        }
        fallback.unwrap_or_else(|| {
            let mut out = Vec::with_capacity(query.question_end);
            server_failure(request, query, &mut out);
            out
        })
    }
}

/// UDP, then TCP when truncated; a truncated answer stands when TCP fails or
/// the full one does not fit the client's transport.
async fn exchange(
    upstream: SocketAddr,
    request: &[u8],
    query: Forward,
    deadline: Instant,
) -> Result<Vec<u8>, ExchangeError> {
    let answer = over_udp(upstream, request, query, deadline).await?;
    if answer[2] & TRUNCATED == 0 {
        return Ok(answer);
    }
    match over_tcp(upstream, request, query, deadline).await {
        Ok(full) if full.len() <= query.limit => Ok(full),
        Ok(_) => Ok(answer),
        Err(error) => {
            tracing::debug!(%upstream, %error, "dns: TCP retry of a truncated answer failed");
            Ok(answer)
        }
    }
}

async fn over_udp(
    upstream: SocketAddr,
    request: &[u8],
    query: Forward,
    deadline: Instant,
) -> Result<Vec<u8>, ExchangeError> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(request).await?;
    // One byte more than the client takes: an answer that fills it is too
    // large (the upstream ignored the advertised size) and is cut to a
    // truncated header and question, which the TCP retry then replaces.
    let payload = usize::from(query.payload);
    let mut buf = vec![0u8; payload + 1];
    loop {
        let len = timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| ExchangeError::Timeout)??;
        // Anything else on the socket (late or forged) is ignored.
        if !answers(request, &buf[..len], query.question_end) {
            continue;
        }
        if len > payload {
            buf.truncate(query.question_end);
            buf[2] |= TRUNCATED;
            buf[6..12].fill(0);
        } else {
            buf.truncate(len);
        }
        return Ok(buf);
    }
}

async fn over_tcp(
    upstream: SocketAddr,
    request: &[u8],
    query: Forward,
    deadline: Instant,
) -> Result<Vec<u8>, ExchangeError> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        stream.set_nodelay(true)?;
        let mut framed = Vec::with_capacity(request.len() + 2);
        framed.extend_from_slice(&(request.len() as u16).to_be_bytes());
        framed.extend_from_slice(request);
        stream.write_all(&framed).await?;
        let len = usize::from(stream.read_u16().await?);
        let mut answer = vec![0u8; len];
        stream.read_exact(&mut answer).await?;
        if answers(request, &answer, query.question_end) {
            Ok(answer)
        } else {
            Err(ExchangeError::Mismatch)
        }
    };
    timeout_at(deadline, exchange)
        .await
        .map_err(|_| ExchangeError::Timeout)?
}

/// Whether `answer` is the response to `request`: same id, a response, the
/// same question (case aside).
fn answers(request: &[u8], answer: &[u8], question_end: usize) -> bool {
    answer.len() >= question_end
        && answer[..2] == request[..2]
        && answer[2] & QR != 0
        && answer[4..6] == [0, 1]
        && answer[12..question_end].eq_ignore_ascii_case(&request[12..question_end])
}
