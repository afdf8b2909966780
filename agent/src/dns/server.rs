//! What the resolver of one container shares between its loops, and its
//! TCP loop, on sockets opened in the container's namespace. (UDP: the
//! node's resolver threads, [`super::udp`].)
//!
//! TCP: one task per connection, at most [`MAX_CONNECTIONS`]; a connection
//! is closed when idle for [`IDLE`], when a read or write takes longer than
//! [`IO_TIMEOUT`], or when a query is larger than [`MAX_TCP_QUERY`].
//! Forwarded queries (UDP and TCP alike) are answered from the cache when
//! it can, else by the forwarder; on UDP at most [`MAX_FORWARDS`] per
//! container are in flight (beyond, SERVFAIL at once).

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinSet,
    time::timeout,
};

use super::{
    answers::Answers,
    handler::{self, Action, Scratch, Transport},
};

pub const MAX_FORWARDS: usize = 256;
pub const MAX_CONNECTIONS: usize = 64;
pub const IDLE: Duration = Duration::from_secs(10);
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_TCP_QUERY: usize = 4096;
/// Pause after a failed accept (out of descriptors), not to spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the loops of one container share.
pub struct Context {
    pub answers: Arc<Answers>,
    /// Ids of the networks the container is attached to.
    pub scope: Arc<ArcSwap<Vec<String>>>,
    pub forwards: Arc<Semaphore>,
}

impl Context {
    /// The local pass against the current table and scope.
    fn answer(
        &self,
        request: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
        scratch: &mut Scratch,
    ) -> Action {
        let (table, scope) = (self.answers.table(), self.scope.load());
        handler::answer(request, &table, &scope, transport, out, scratch)
    }
}

pub async fn serve_tcp(listener: TcpListener, ctx: Arc<Context>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        tracing::debug!(%peer, "dns: too many TCP connections, closing");
                        continue;
                    }
                    connections.spawn(connection(stream, ctx.clone()));
                }
                Err(error) => {
                    tracing::debug!(%error, "dns: TCP accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Queries of one TCP connection, one after the other, until it closes,
/// idles or misbehaves.
async fn connection(mut stream: TcpStream, ctx: Arc<Context>) {
    let mut request = Vec::new();
    let mut out = Vec::new();
    let mut scratch = Scratch::default();
    loop {
        let Ok(Ok(len)) = timeout(IDLE, stream.read_u16()).await else {
            return;
        };
        let len = usize::from(len);
        if len > MAX_TCP_QUERY {
            tracing::debug!(len, "dns: TCP query too large, closing");
            return;
        }
        request.resize(len, 0);
        let Ok(Ok(_)) = timeout(IO_TIMEOUT, stream.read_exact(&mut request)).await else {
            return;
        };
        out.clear();
        out.extend_from_slice(&[0, 0]);
        match ctx.answer(&request, Transport::Tcp, &mut out, &mut scratch) {
            Action::Reply => {}
            Action::Drop => continue,
            Action::Forward(query) if ctx.answers.cached(&request, query, &mut out) => {}
            Action::Forward(query) => {
                let answer = ctx.answers.forward(&request, query).await;
                out.extend_from_slice(&answer);
            }
        }
        let Ok(len) = u16::try_from(out.len() - 2) else {
            return;
        };
        out[..2].copy_from_slice(&len.to_be_bytes());
        if !matches!(
            timeout(IO_TIMEOUT, stream.write_all(&out)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}
