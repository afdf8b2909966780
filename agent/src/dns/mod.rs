//! CONTRACT STUB (issue 4): the embedded DNS resolver (127.0.0.11 in each
//! container). The DNS helper replaces the bodies and splits the work into
//! modules (table, handler, forward, server); the signatures below are what
//! the rest of the agent calls.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;

use crate::model::{Endpoint, Network, Service};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{0}")]
    Other(String),
}

/// Every name the cluster answers, built from the services, the endpoints of
/// the live nodes and the networks; immutable, swapped in whole.
#[derive(Debug, Default)]
pub struct DnsTable {}

impl DnsTable {
    /// Unhealthy endpoints are left out.
    pub fn build(_services: &[Service], _endpoints: &[Endpoint], _networks: &[Network]) -> Self {
        DnsTable {}
    }
}

/// What every container resolver of the node shares.
pub struct DnsShared {
    table: ArcSwap<DnsTable>,
    #[allow(dead_code)]
    upstreams: Vec<SocketAddr>,
    #[allow(dead_code)]
    budget: Duration,
}

impl DnsShared {
    /// `upstreams`: the node's resolvers (from resolv.conf or --upstream-dns);
    /// every forwarded query shares one `budget` (at most 5 s) across them.
    pub fn new(upstreams: Vec<SocketAddr>, budget: Duration) -> Arc<Self> {
        Arc::new(Self {
            table: ArcSwap::from_pointee(DnsTable::default()),
            upstreams,
            budget,
        })
    }

    /// Swaps in a new table; queries in flight finish with the old one.
    pub fn update(&self, table: DnsTable) {
        self.table.store(Arc::new(table));
    }
}

/// One container's resolver, answering on sockets opened in the container's
/// namespace, with the names of the networks in `networks` (network ids) only.
/// Stops when dropped.
pub struct ContainerResolver {}

impl ContainerResolver {
    pub fn spawn(
        _shared: Arc<DnsShared>,
        _udp: std::net::UdpSocket,
        _tcp: std::net::TcpListener,
        _networks: Arc<ArcSwap<Vec<String>>>,
    ) -> Result<Self, DnsError> {
        Err(DnsError::Other("not implemented".into()))
    }
}
