//! The reconcile loop's steps, in one shape. A pass reads its inputs once
//! (`Pass`); each kind of object it keeps in step with the cluster (the
//! DNS table, the VIP maps, the published-port maps, the overlay's peers,
//! the remote tasks' entries) is a `Reconciler` that plans from the pass
//! and applies the difference, and `run` is the one error policy: a step
//! that fails is logged with its name and the pass goes on; the next pass
//! tries again.

use std::{collections::BTreeSet, convert::Infallible, fmt::Display, sync::Arc};

use tracing::warn;

use super::{endpoint_store::LocalEndpoint, reconcile, resolvers::Resolvers};
use crate::{
    dataplane::overlay::{Overlay, OverlayError},
    gossip::GossipView,
    ingress::{self, Ingress, IngressError},
    lb::{LbError, LoadBalancer, Seen},
    model::{Endpoint, Network, Service},
};

/// What one pass works from, read once at its start.
pub struct Pass {
    pub node_name: String,
    pub networks: Vec<Network>,
    /// This node's endpoints, with their containers.
    pub local_entries: Vec<LocalEndpoint>,
    pub local: Vec<Endpoint>,
    pub view: Arc<GossipView>,
    pub services: Vec<Service>,
    /// The services were read from the managers at least once: before,
    /// an empty copy proves nothing and no step removes for lack of one.
    pub services_loaded: bool,
    /// The drained nodes (names).
    pub drained: BTreeSet<String>,
    /// Every endpoint, this node's and the view's, drained nodes' tasks
    /// marked draining (what the load balancer and published ports use).
    pub all: Vec<Endpoint>,
    /// The published ports this node serves (none until the services are
    /// loaded).
    pub published: ingress::plan::Plan,
    /// The view has settled: what it does not mention is gone.
    pub settled: bool,
}

/// One kind of object a pass keeps in step.
#[allow(async_fn_in_trait)]
pub trait Reconciler {
    /// What the log calls the step.
    const NAME: &'static str;
    type Error: Display;
    /// Plans what the objects should be from `pass`, and writes only what
    /// differs.
    async fn reconcile(&self, pass: &Pass) -> Result<(), Self::Error>;
}

/// Runs one step: the loop's error policy. Returns whether it went through.
pub async fn run<R: Reconciler>(step: &R, pass: &Pass) -> bool {
    match step.reconcile(pass).await {
        Ok(()) => true,
        Err(error) => {
            warn!(step = R::NAME, %error, "reconcile step failed; retrying on the next pass");
            false
        }
    }
}

/// The embedded DNS: the shared table, then one resolver per container.
pub struct DnsTable<'a>(pub &'a Resolvers);

impl Reconciler for DnsTable<'_> {
    const NAME: &'static str = "dns";
    type Error = Infallible;

    async fn reconcile(&self, pass: &Pass) -> Result<(), Infallible> {
        self.0.update_table(
            &pass.services,
            &pass.view,
            &pass.local,
            &pass.networks,
            &pass.drained,
        );
        self.0.sync(&pass.local_entries).await;
        Ok(())
    }
}

/// The VIPs' maps, and the host-mode published ports' tables with them.
pub struct VipMaps<'a>(pub &'a LoadBalancer);

impl Reconciler for VipMaps<'_> {
    const NAME: &'static str = "load balancer";
    type Error = LbError;

    async fn reconcile(&self, pass: &Pass) -> Result<(), LbError> {
        // The nodes the view shows: their tasks it does not mention are gone.
        let live_nodes = pass.view.nodes.keys().cloned().collect();
        let seen = Seen {
            settled: pass.settled,
            live_nodes: &live_nodes,
        };
        let tables = pass.published.host_tables.clone();
        self.0.sync_with(&pass.services, &pass.all, tables, &seen)
    }
}

/// The published ports' maps (INGRESS_LOCAL, INGRESS_PORTS).
pub struct PublishedPorts<'a>(pub &'a Ingress);

impl Reconciler for PublishedPorts<'_> {
    const NAME: &'static str = "published ports";
    type Error = IngressError;

    async fn reconcile(&self, pass: &Pass) -> Result<(), IngressError> {
        self.0.sync_maps(&pass.published, &pass.local)
    }
}

/// The published ports' programs on the underlay interface (once per run).
pub struct IngressPrograms<'a>(pub &'a Ingress);

impl Reconciler for IngressPrograms<'_> {
    const NAME: &'static str = "published-port programs";
    type Error = IngressError;

    async fn reconcile(&self, _: &Pass) -> Result<(), IngressError> {
        self.0.ensure_attached()
    }
}

/// Where published-port flows to remote tasks go (INGRESS_REMOTE).
pub struct RemoteTasks<'a>(pub &'a Ingress);

impl Reconciler for RemoteTasks<'_> {
    const NAME: &'static str = "remote tasks";
    type Error = IngressError;

    async fn reconcile(&self, pass: &Pass) -> Result<(), IngressError> {
        let remote = ingress::remote::plan(
            &pass.node_name,
            &pass.networks,
            &pass.published.networks,
            &pass.view,
        );
        self.0.sync_remote_tasks(&remote)
    }
}

/// The sandboxes and the peers programmed in each (FDB and neighbours).
pub struct OverlayPeers<'a>(pub &'a Overlay);

impl Reconciler for OverlayPeers<'_> {
    const NAME: &'static str = "overlay";
    type Error = OverlayError;

    async fn reconcile(&self, pass: &Pass) -> Result<(), OverlayError> {
        let observed = reconcile::observe(self.0, &pass.networks).await?;
        // Until the services have been read once, a sandbox kept for a
        // published port cannot be told from a stale one: keep them all.
        let keep = if pass.services_loaded {
            pass.published.networks.clone()
        } else {
            pass.networks
                .iter()
                .filter(|n| observed.sandboxes.contains_key(&n.vni))
                .map(|n| n.id.clone())
                .collect()
        };
        let actions = reconcile::plan_with(
            &pass.node_name,
            &pass.networks,
            &pass.local,
            &keep,
            &pass.view,
            &observed,
            pass.settled,
        );
        if !actions.is_empty() {
            // Each failed action is logged by `execute`; the next pass
            // plans it again.
            reconcile::execute(self.0, &actions).await;
        }
        Ok(())
    }
}
