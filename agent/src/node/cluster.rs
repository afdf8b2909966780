//! This node's membership of a cluster: the control-plane client (and the
//! manager role on managers), gossip, the overlay data plane, and the
//! reconcile loop that keeps the kernel in step with them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Weak,
    },
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use tokio::{
    sync::{Mutex, Notify, RwLock},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::{
    config::AgentConfig,
    control::{ClusterIdentity, ControlError, ControlPlane, Manager, ManagerClient, NodeRecord},
    dataplane::overlay::{Overlay, OverlayConfig, OverlayError},
    gossip::{Gossip, GossipConfig, GossipError, GossipView},
    ingress::Ingress,
    lb::LoadBalancer,
    model::{Endpoint, Network, Role, Service},
    node::endpoint_store::{EndpointStore, StoreError},
    node::resolvers::Resolvers,
    node::steps::{
        self, DnsTable, IngressPrograms, OverlayPeers, Pass, PublishedPorts, RemoteTasks, VipMaps,
    },
};

/// How often the reconcile loop runs when nothing wakes it earlier, and how
/// often a node refreshes its copy of the networks, services and node
/// records from the managers (so a node's drain reaches every datapath
/// within about this period plus one pass).
const RECONCILE_PERIOD: Duration = Duration::from_secs(2);
/// How long a freshly started agent lets its gossip view fill before it
/// removes remote entries: one failure-detection period (see `gossip`).
const VIEW_SETTLE_TIME: Duration = Duration::from_secs(4);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Gossip(#[from] GossipError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct ClusterRuntime {
    identity: ClusterIdentity,
    manager_task: Option<JoinHandle<()>>,
    pub(super) control: ManagerClient,
    pub(super) gossip: Gossip,
    pub(super) overlay: Overlay,
    networks: RwLock<Vec<Network>>,
    services: RwLock<Vec<Service>>,
    /// The services have been read from the managers at least once.
    services_loaded: AtomicBool,
    /// The drained nodes (names), as last read from the managers.
    drained: RwLock<BTreeSet<String>>,
    /// The embedded DNS of this node's containers.
    pub(super) resolvers: Resolvers,
    /// Address blocks this node holds, by network id.
    pub(super) blocks: Mutex<BTreeMap<String, Vec<Ipv4Net>>>,
    /// Local endpoints; the lock also serialises attach and detach.
    pub(super) endpoints: Mutex<EndpointStore>,
    /// The VIP load balancer; `None` when its maps cannot be opened (no
    /// bpffs): services then resolve but their VIPs carry no traffic.
    pub(super) lb: Option<LoadBalancer>,
    /// Published ports; `None` without the load balancer (they use its
    /// tables).
    pub(super) ingress: Option<Ingress>,
    kick: Arc<Notify>,
    /// When the copies from the managers were last read (or tried).
    last_refresh: Mutex<Option<Instant>>,
    started: Instant,
}

impl ClusterRuntime {
    /// `cluster init`: this node becomes the first manager of a new cluster.
    pub async fn init(
        config: &AgentConfig,
        pool: Option<Ipv4Net>,
    ) -> Result<Arc<Self>, ClusterError> {
        let (manager, identity) = Manager::init(
            &config.data_dir,
            &config.node_name,
            config.advertise_addr,
            pool,
        )
        .await?;
        // Manager::init has saved the identity with the store, as one step.
        Self::start(config, identity, Some(manager)).await
    }

    /// `cluster join`: this node joins through the manager at `manager`.
    pub async fn join(
        config: &AgentConfig,
        token: &str,
        manager: SocketAddr,
    ) -> Result<Arc<Self>, ClusterError> {
        let identity =
            crate::control::join(manager, token, &config.node_name, config.advertise_addr).await?;
        identity.save(&config.data_dir)?;
        let manager = match identity.role {
            Role::Manager => Some(Manager::open(&config.data_dir, &identity).await?),
            Role::Worker => None,
        };
        Self::start(config, identity, manager).await
    }

    /// A restarted agent picks up the cluster it was in, if any.
    pub async fn resume(config: &AgentConfig) -> Result<Option<Arc<Self>>, ClusterError> {
        let Some(identity) = ClusterIdentity::load(&config.data_dir)? else {
            return Ok(None);
        };
        let manager = match identity.role {
            Role::Manager => Some(Manager::open(&config.data_dir, &identity).await?),
            Role::Worker => None,
        };
        Self::start(config, identity, manager).await.map(Some)
    }

    async fn start(
        config: &AgentConfig,
        identity: ClusterIdentity,
        manager: Option<Manager>,
    ) -> Result<Arc<Self>, ClusterError> {
        let manager_task = manager.map(|manager| {
            let listen = SocketAddr::new(config.advertise_addr, config.control_port);
            tokio::spawn(async move {
                if let Err(error) = manager.serve(listen).await {
                    warn!(%error, "the control plane stopped serving");
                }
            })
        });
        let control = ManagerClient::new(&identity)?;
        let endpoints = EndpointStore::open(&config.data_dir)?;
        let IpAddr::V4(vtep) = config.advertise_addr else {
            return Err(OverlayError::Config(format!(
                "the advertise address {} is not IPv4 (the VXLAN underlay is IPv4): restart netagent with an IPv4 --advertise-addr",
                config.advertise_addr
            ))
            .into());
        };
        let seeds = identity
            .managers
            .iter()
            .map(|manager| SocketAddr::new(manager.ip(), config.gossip_port))
            .filter(|seed| seed.ip() != config.advertise_addr)
            .collect();
        let gossip = Gossip::start(
            GossipConfig {
                node_name: config.node_name.clone(),
                cluster_id: identity.cluster_id.clone(),
                listen_addr: SocketAddr::new(config.advertise_addr, config.gossip_port),
                seeds,
                cluster_key: identity.cluster_key,
                vtep,
                gossip_interval: Duration::from_millis(200),
            },
            endpoints.endpoints(),
        )
        .await?;
        let underlay = crate::dataplane::interfaces::interface_with_addr(config.advertise_addr)
            .unwrap_or_default();
        let overlay = Overlay::new(OverlayConfig {
            netns_prefix: config.netns_prefix.clone(),
            owner: crate::dataplane::sandbox::owner_mark(&config.data_dir),
            underlay: underlay.clone(),
            vtep,
            node_netns: None,
        })?;
        let lb = match LoadBalancer::load(&config.bpffs, config.lb_maps) {
            Ok(lb) => Some(lb),
            Err(error) => {
                warn!(%error, "VIP load balancing is off");
                None
            }
        };
        let ingress = match &lb {
            Some(_) => match Ingress::load(&config.bpffs, &config.lb_maps, vtep, &underlay) {
                Ok(ingress) => Some(ingress),
                Err(error) => {
                    warn!(%error, "published ports are off");
                    None
                }
            },
            None => None,
        };
        info!(
            cluster = %identity.cluster_id,
            node_id = %identity.node_id,
            role = %identity.role,
            "cluster member"
        );
        let runtime = Arc::new(Self {
            identity,
            manager_task,
            control,
            gossip,
            overlay,
            networks: RwLock::new(Vec::new()),
            services: RwLock::new(Vec::new()),
            services_loaded: AtomicBool::new(false),
            drained: RwLock::new(BTreeSet::new()),
            resolvers: Resolvers::new(config.upstream_dns.clone()),
            blocks: Mutex::new(BTreeMap::new()),
            endpoints: Mutex::new(endpoints),
            lb,
            ingress,
            kick: Arc::new(Notify::new()),
            last_refresh: Mutex::new(None),
            started: Instant::now(),
        });
        tokio::spawn(reconcile_loop(
            Arc::downgrade(&runtime),
            runtime.kick.clone(),
            runtime.gossip.subscribe(),
        ));
        Ok(runtime)
    }

    pub fn identity(&self) -> &ClusterIdentity {
        &self.identity
    }

    /// Wakes the reconcile loop now.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// The networks as last read from the managers.
    pub async fn networks(&self) -> Vec<Network> {
        self.networks.read().await.clone()
    }

    /// Reads the networks from the managers; on failure keeps the last copy.
    pub async fn refresh_networks(&self) -> Result<Vec<Network>, ControlError> {
        let fresh = self.control.networks().await?;
        *self.networks.write().await = fresh.clone();
        Ok(fresh)
    }

    /// The services as last read from the managers.
    pub async fn services(&self) -> Vec<Service> {
        self.services.read().await.clone()
    }

    /// Reads the services from the managers; on failure keeps the last copy.
    pub async fn refresh_services(&self) -> Result<Vec<Service>, ControlError> {
        let fresh = self.control.services().await?;
        *self.services.write().await = fresh.clone();
        self.services_loaded.store(true, Ordering::Relaxed);
        Ok(fresh)
    }

    /// Reads the node records from the managers and keeps the drained
    /// ones; on failure keeps the last copy. Whether that set changed.
    async fn refresh_drained(&self) -> Result<bool, ControlError> {
        let nodes: Vec<NodeRecord> = self.control.nodes().await?;
        let fresh = crate::node::availability::drained_nodes(&nodes);
        let mut drained = self.drained.write().await;
        let changed = *drained != fresh;
        *drained = fresh;
        Ok(changed)
    }

    /// Makes the next reconcile pass re-read everything from the managers,
    /// now (after a change made through this node).
    pub async fn refresh_soon(&self) {
        *self.last_refresh.lock().await = None;
        self.kick();
    }

    /// How long until the copies from the managers are due for a refresh.
    async fn refresh_due_in(&self) -> Duration {
        match *self.last_refresh.lock().await {
            Some(at) => RECONCILE_PERIOD.saturating_sub(at.elapsed()),
            None => RECONCILE_PERIOD,
        }
    }

    /// The network called `name`, asking the managers if this node has not
    /// heard of it yet.
    pub async fn network(&self, name: &str) -> Result<Option<Network>, ControlError> {
        if let Some(network) = self.networks.read().await.iter().find(|n| n.name == name) {
            return Ok(Some(network.clone()));
        }
        Ok(self
            .refresh_networks()
            .await?
            .into_iter()
            .find(|n| n.name == name))
    }

    /// The managers (through the mTLS client).
    pub fn control(&self) -> &ManagerClient {
        &self.control
    }

    pub fn gossip(&self) -> &Gossip {
        &self.gossip
    }

    /// The VIP load balancer, when its maps could be opened.
    pub fn lb(&self) -> Option<&LoadBalancer> {
        self.lb.as_ref()
    }

    /// Published ports, when the load balancer runs.
    pub fn ingress(&self) -> Option<&Ingress> {
        self.ingress.as_ref()
    }

    pub fn view(&self) -> Arc<GossipView> {
        self.gossip.subscribe().borrow().clone()
    }

    /// Fills `blocks` (the locked `self.blocks`) with the address blocks
    /// this node holds, asked from the managers the first time a network is
    /// seen since start.
    pub async fn learn_blocks(
        &self,
        blocks: &mut BTreeMap<String, Vec<Ipv4Net>>,
        network: &Network,
    ) -> Result<(), ControlError> {
        if !blocks.contains_key(&network.id) {
            for (network_id, block) in self.control.node_blocks(&self.identity.node_id).await? {
                blocks.entry(network_id).or_default().push(block);
            }
            blocks.entry(network.id.clone()).or_default();
        }
        Ok(())
    }

    /// Every endpoint of the live nodes, plus this node's own (published or
    /// not), sorted by network, node and address.
    pub async fn all_endpoints(&self) -> Vec<Endpoint> {
        let local = self.endpoints.lock().await.endpoints();
        let mut endpoints = self.view().endpoints_with(&local);
        endpoints.sort_by(|a, b| (&a.network, &a.node, a.ip).cmp(&(&b.network, &b.node, b.ip)));
        endpoints
    }

    /// Puts the load balancer on every local endpoint's veth once per run
    /// (after a restart: replaces the programs in place).
    async fn attach_lb(&self, lb: &LoadBalancer, local: &[Endpoint], networks: &[Network]) {
        for endpoint in local {
            let Some(network) = networks.iter().find(|n| n.id == endpoint.network_id) else {
                continue;
            };
            let sandbox = crate::dataplane::netns::named_path(&self.overlay.sandbox_name(network));
            let ifname = crate::dataplane::endpoint::host_veth_name(&endpoint.id);
            if let Err(error) = lb.ensure_attached(&endpoint.id, &sandbox, &ifname).await {
                debug!(endpoint = %endpoint.id, %error, "load balancer not attached yet");
            }
        }
    }

    /// Reads the copies from the managers when a period has passed since
    /// the last read (or try); returns whether the drained nodes changed.
    async fn refresh_if_due(&self) -> bool {
        let stale = self
            .last_refresh
            .lock()
            .await
            .is_none_or(|at| at.elapsed() >= RECONCILE_PERIOD);
        if !stale {
            return false;
        }
        // Tried, even if it fails: the next try is a period away.
        *self.last_refresh.lock().await = Some(Instant::now());
        if let Err(error) = self.refresh_networks().await {
            warn!(%error, "cannot refresh the networks; using the last copy");
        }
        if let Err(error) = self.refresh_services().await {
            debug!(%error, "cannot refresh the services; using the last copy");
        }
        match self.refresh_drained().await {
            Ok(changed) => changed,
            Err(error) => {
                debug!(%error, "cannot refresh the nodes; using the last copy");
                false
            }
        }
    }

    /// What this pass works from, read once.
    async fn read_pass(&self) -> Pass {
        let drained = self.drained.read().await.clone();
        let local_entries = self.endpoints.lock().await.all().to_vec();
        let local: Vec<_> = local_entries.iter().map(|e| e.endpoint.clone()).collect();
        let view = self.view();
        let mut all = local.clone();
        all.extend(
            view.nodes
                .values()
                .flat_map(|n| n.endpoints.values().cloned()),
        );
        // The load balancer and the published ports see drained nodes'
        // tasks as draining.
        crate::node::availability::drain_tasks(&mut all, &drained);
        let services_loaded = self.services_loaded.load(Ordering::Relaxed);
        let services = self.services().await;
        // Never from an empty copy the managers have not confirmed.
        let published = if services_loaded {
            crate::ingress::plan::plan(&self.identity.node_name, &services, &all)
        } else {
            Default::default()
        };
        Pass {
            node_name: self.identity.node_name.clone(),
            networks: self.networks().await,
            local_entries,
            local,
            view,
            services,
            services_loaded,
            drained,
            all,
            published,
            settled: self.started.elapsed() >= VIEW_SETTLE_TIME,
        }
    }

    /// One reconcile pass: its inputs read once, then each step in order
    /// (`steps::run` logs a failed one; the next pass tries again).
    async fn reconcile_once(&self) {
        let drain_changed = self.refresh_if_due().await;
        let pass = self.read_pass().await;
        // DNS first: names must follow the view even when the kernel cannot
        // be read.
        steps::run(&DnsTable(&self.resolvers), &pass).await;
        if let Some(lb) = &self.lb {
            if pass.services_loaded && steps::run(&VipMaps(lb), &pass).await {
                if drain_changed {
                    info!(drained = ?pass.drained, "load balancing follows the drained nodes");
                }
                // The published ports' tables are among the VIP maps.
                if let Some(ingress) = &self.ingress {
                    steps::run(&PublishedPorts(ingress), &pass).await;
                }
            }
            self.attach_lb(lb, &pass.local, &pass.networks).await;
        }
        if let Some(ingress) = &self.ingress {
            steps::run(&IngressPrograms(ingress), &pass).await;
        }
        // Without the overlay's state, nothing after it can be planned.
        if !steps::run(&OverlayPeers(&self.overlay), &pass).await {
            return;
        }
        if let Some(ingress) = &self.ingress {
            if pass.services_loaded {
                self.sync_return_paths(
                    ingress,
                    &pass.networks,
                    &pass.published.networks,
                    &pass.local,
                )
                .await;
                steps::run(&RemoteTasks(ingress), &pass).await;
            }
        }
    }
}

impl Drop for ClusterRuntime {
    fn drop(&mut self) {
        if let Some(task) = self.manager_task.take() {
            task.abort();
        }
    }
}

/// Reconciles on every gossip change, every kick, and every period; ends
/// when the runtime goes (it holds the runtime only while a pass runs).
async fn reconcile_loop(
    runtime: Weak<ClusterRuntime>,
    kick: Arc<Notify>,
    mut view: tokio::sync::watch::Receiver<Arc<GossipView>>,
) {
    loop {
        match runtime.upgrade() {
            Some(rt) => rt.reconcile_once().await,
            None => return,
        }
        // Woken by the refresh falling due, not a full period after the
        // last pass: a pass for a gossip change must not push the next
        // refresh (and so a node's drain) back by up to a period.
        let refresh_due = match runtime.upgrade() {
            Some(rt) => rt.refresh_due_in().await,
            None => return,
        };
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            _ = kick.notified() => {}
            _ = tokio::time::sleep(refresh_due) => {}
        }
    }
}
