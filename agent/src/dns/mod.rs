//! The embedded DNS resolver (127.0.0.11 in each container).
//!
//! * [`table`]: names → records, built from the model, swapped in whole;
//! * [`handler`]: a query in, a response out (cluster names answered from the
//!   table, the rest handed to the forwarder);
//! * [`forward`]: the node's upstream resolvers, one time budget per query;
//! * [`cache`]: forwarded answers, shared by the node's resolvers;
//! * [`udp`]: two threads answering the UDP queries of every container of
//!   the node, by batches ([`batch`]); cache misses go to tokio tasks;
//! * [`server`]: what one container's resolver shares, and its TCP loop
//!   (tokio);
//! * `answers`: the table, the forwarder and the cache, which both loops
//!   answer from.
//!
//! Lookups take no lock: each UDP batch (each TCP query) loads the current
//! table (`ArcSwap`) and the container's network scope.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{sync::Semaphore, task::AbortHandle};

mod answers;
mod batch;
pub mod cache;
pub mod forward;
pub mod handler;
pub mod server;
pub mod table;
mod udp;

pub use table::DnsTable;

#[cfg(test)]
mod tests;

use answers::Answers;
use udp::{Registration, UdpLoop};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{0}")]
    Other(String),
    #[error("the DNS resolver started outside the async runtime ({0}): report this bug with the agent's log (`journalctl -u netagent`)")]
    Runtime(tokio::runtime::TryCurrentError),
    #[error("the DNS resolver cannot set up its socket: {0}: check that netagent runs as root and see its log (`journalctl -u netagent`)")]
    Socket(std::io::Error),
    #[error("cannot start the DNS resolver threads: {0}: the node may be out of memory or at its thread limit (the unit's TasksMax, `ulimit -u`)")]
    Threads(std::io::Error),
}

impl From<std::io::Error> for DnsError {
    fn from(cause: std::io::Error) -> Self {
        Self::Socket(cause)
    }
}

impl From<tokio::runtime::TryCurrentError> for DnsError {
    fn from(cause: tokio::runtime::TryCurrentError) -> Self {
        Self::Runtime(cause)
    }
}

/// What every container resolver of the node shares: the answers, and the
/// UDP resolver threads, started with the first container resolver.
pub struct DnsShared {
    answers: Arc<Answers>,
    udp: Mutex<Option<UdpLoop>>,
}

impl DnsShared {
    /// `upstreams`: the node's resolvers (from resolv.conf or --upstream-dns);
    /// every forwarded query shares one `budget` (at most 5 s) across them.
    pub fn new(upstreams: Vec<SocketAddr>, budget: Duration) -> Arc<Self> {
        Arc::new(Self {
            answers: Arc::new(Answers::new(upstreams, budget)),
            udp: Mutex::new(None),
        })
    }

    /// Swaps in a new table; queries in flight finish with the old one.
    pub fn update(&self, table: DnsTable) {
        self.answers.update(table);
    }

    /// Hands `socket` to the UDP resolver threads (started on first use).
    fn register_udp(
        &self,
        socket: std::net::UdpSocket,
        ctx: Arc<server::Context>,
        runtime: tokio::runtime::Handle,
    ) -> Result<Registration, DnsError> {
        let mut running = crate::sync::lock(&self.udp);
        let udp = match &mut *running {
            Some(udp) => udp,
            None => running.insert(UdpLoop::start().map_err(DnsError::Threads)?),
        };
        Ok(udp.register(socket, ctx, runtime)?)
    }
}

/// One container's resolver, answering on sockets opened in the container's
/// namespace, with the names of the networks in `networks` (network ids) only.
/// Stops when dropped: its UDP socket leaves the resolver threads, its TCP
/// task ends (forwarded queries in flight still finish within the budget).
pub struct ContainerResolver {
    tcp: AbortHandle,
    _udp: Registration,
}

impl ContainerResolver {
    /// Must be called within a tokio runtime.
    pub fn spawn(
        shared: Arc<DnsShared>,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        networks: Arc<ArcSwap<Vec<String>>>,
    ) -> Result<Self, DnsError> {
        let runtime = tokio::runtime::Handle::try_current()?;
        let _context = runtime.enter();
        tcp.set_nonblocking(true)?;
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let ctx = Arc::new(server::Context {
            answers: shared.answers.clone(),
            scope: networks,
            forwards: Arc::new(Semaphore::new(server::MAX_FORWARDS)),
        });
        let udp = shared.register_udp(udp, ctx.clone(), runtime.clone())?;
        let tcp = runtime.spawn(server::serve_tcp(tcp, ctx));
        Ok(ContainerResolver {
            tcp: tcp.abort_handle(),
            _udp: udp,
        })
    }
}

impl Drop for ContainerResolver {
    fn drop(&mut self) {
        self.tcp.abort();
    }
}
