//! The embedded DNS of this node's containers: one resolver per container
//! namespace (127.0.0.11, steered to a private port), all answering from
//! one table that follows the gossip view and the services.
//!
//! A container's scope is the set of networks its endpoints are on: it sees
//! the names of those networks only.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::{
    dataplane::{dns_redirect, overlay::OverlayError},
    dns::{ContainerResolver, DnsError, DnsShared, DnsTable},
    gossip::GossipView,
    model::{Endpoint, Network, Service},
    node::endpoint_store::LocalEndpoint,
};

/// Why a container's resolver did not start (logged; the next pass tries
/// again).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Sockets(#[from] OverlayError),
    #[error(transparent)]
    Resolver(#[from] DnsError),
}

/// All upstream attempts of one forwarded query share this budget.
pub const FORWARD_BUDGET: Duration = Duration::from_secs(4);

struct Running {
    /// Detaches 127.0.0.11:53 from the resolver when dropped (first, so no
    /// query is steered to a closing socket).
    _steering: dns_redirect::Steering,
    /// Kept for its lifetime: dropping it stops the resolver.
    _resolver: ContainerResolver,
    scope: Arc<ArcSwap<Vec<String>>>,
}

/// What the table was last built from.
#[derive(PartialEq)]
struct TableInputs {
    services: Vec<Service>,
    endpoints: Vec<Endpoint>,
    networks: Vec<Network>,
    drained: BTreeSet<String>,
}

/// The resolvers of this node's containers, by container namespace.
pub struct Resolvers {
    shared: Arc<DnsShared>,
    running: Mutex<BTreeMap<PathBuf, Running>>,
    /// The periodic pass mostly finds nothing new: comparing is much cheaper
    /// than building (and freeing) a table of every name, and a rebuild
    /// every 2 s would compete with the resolver thread for the CPU.
    built_from: std::sync::Mutex<Option<TableInputs>>,
}

impl Resolvers {
    pub fn new(upstreams: Vec<std::net::SocketAddr>) -> Self {
        Self {
            shared: DnsShared::new(upstreams, FORWARD_BUDGET),
            running: Mutex::new(BTreeMap::new()),
            built_from: std::sync::Mutex::new(None),
        }
    }

    /// Rebuilds the table every resolver answers from, when its inputs
    /// changed. The tasks of `drained` nodes leave dnsrr answers.
    pub fn update_table(
        &self,
        services: &[Service],
        view: &GossipView,
        local: &[Endpoint],
        networks: &[Network],
        drained: &BTreeSet<String>,
    ) {
        let inputs = TableInputs {
            services: services.to_vec(),
            // This node's own endpoints count even before gossip shows them.
            endpoints: view.endpoints_with(local),
            networks: networks.to_vec(),
            drained: drained.clone(),
        };
        let mut built_from = crate::sync::lock(&self.built_from);
        if built_from.as_ref() == Some(&inputs) {
            return;
        }
        self.shared.update(DnsTable::build_draining(
            &inputs.services,
            &inputs.endpoints,
            &inputs.networks,
            &inputs.drained,
        ));
        *built_from = Some(inputs);
    }

    /// Brings the resolvers in line with the local endpoints: one per
    /// container namespace that has endpoints, scoped to their networks.
    /// A failure for one container is logged and retried on the next call.
    pub async fn sync(&self, local: &[LocalEndpoint]) {
        let mut wanted: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
        for entry in local {
            let scope = wanted.entry(entry.container_netns.clone()).or_default();
            if !scope.contains(&entry.endpoint.network_id) {
                scope.push(entry.endpoint.network_id.clone());
            }
        }
        let mut running = self.running.lock().await;
        let gone: Vec<PathBuf> = running
            .keys()
            .filter(|netns| !wanted.contains_key(*netns))
            .cloned()
            .collect();
        for netns in gone {
            running.remove(&netns);
            info!(netns = %netns.display(), "container resolver stopped");
        }
        for (netns, scope) in wanted {
            if let Some(existing) = running.get(&netns) {
                existing.scope.store(Arc::new(scope));
                continue;
            }
            match self.start(&netns, scope).await {
                Ok(started) => {
                    running.insert(netns, started);
                }
                Err(error) => {
                    warn!(netns = %netns.display(), %error, "cannot start the container's resolver")
                }
            }
        }
    }

    async fn start(&self, netns: &Path, scope: Vec<String>) -> Result<Running, StartError> {
        let dns_redirect::ResolverSockets { udp, tcp, steering } =
            dns_redirect::open_resolver_sockets(netns).await?;
        let scope = Arc::new(ArcSwap::from_pointee(scope));
        let resolver = ContainerResolver::spawn(self.shared.clone(), udp, tcp, scope.clone())?;
        info!(netns = %netns.display(), "container resolver at 127.0.0.11");
        Ok(Running {
            _steering: steering,
            _resolver: resolver,
            scope,
        })
    }
}
