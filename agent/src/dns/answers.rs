//! What answers a query, whichever loop received it: the table (swapped in
//! whole), the upstream forwarder and the cache of its answers.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::{ArcSwap, Guard};

use super::{cache::ForwardCache, forward::Forwarder, handler::Forward, table::DnsTable};

pub struct Answers {
    table: ArcSwap<DnsTable>,
    forwarder: Forwarder,
    cache: ForwardCache,
}

impl Answers {
    pub fn new(upstreams: Vec<SocketAddr>, budget: Duration) -> Self {
        Self {
            table: ArcSwap::from_pointee(DnsTable::default()),
            forwarder: Forwarder::new(upstreams, budget),
            cache: ForwardCache::default(),
        }
    }

    /// Swaps in a new table; queries in flight finish with the old one.
    pub fn update(&self, table: DnsTable) {
        self.table.store(Arc::new(table));
    }

    /// The current table (a lock-free load).
    pub fn table(&self) -> Guard<Arc<DnsTable>> {
        self.table.load()
    }

    /// Appends the cached answer to a query the local pass would forward;
    /// `false` on a miss.
    pub fn cached(&self, request: &[u8], query: Forward, out: &mut Vec<u8>) -> bool {
        self.cache.get(request, query, Instant::now(), out)
    }

    /// The upstream answer (or SERVFAIL), kept in the cache when it may be.
    pub async fn forward(&self, request: &[u8], query: Forward) -> Vec<u8> {
        let answer = self.forwarder.forward(request, query).await;
        self.cache.insert(request, query, &answer, Instant::now());
        answer
    }
}
