//! The agent's state: what the API handlers read and change (the datapath,
//! the tracer, the cluster this node is in). `daemon` makes it and serves
//! it.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use netagent_api::types::{InterfaceCounters, ProgramStatus, Status};

use crate::{
    config::AgentConfig,
    dataplane::{counters, Datapath, DatapathError},
    model::Role,
    node::cluster::{ClusterError, ClusterRuntime},
    trace::{names::AddressBook, Tracer},
    VERSION,
};

/// Why this node cannot init or join a cluster.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("this node is already in cluster {cluster_id} as a {role}: leave it first")]
    AlreadyIn { cluster_id: String, role: Role },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl MembershipError {
    fn already_in(rt: &ClusterRuntime) -> Self {
        Self::AlreadyIn {
            cluster_id: rt.identity().cluster_id.clone(),
            role: rt.identity().role,
        }
    }
}

/// What the API handlers read and change.
pub struct AgentState {
    config: AgentConfig,
    started: Instant,
    datapath: Mutex<Datapath>,
    /// `None` when the trace maps could not be opened (logged at start).
    tracer: Option<Arc<Tracer>>,
    /// The cluster this node is in; `None` until init or join.
    cluster: tokio::sync::RwLock<Option<Arc<ClusterRuntime>>>,
}

impl AgentState {
    /// The state of an agent starting now, with its datapath loaded and the
    /// cluster it resumed (if any).
    pub fn new(
        config: AgentConfig,
        datapath: Datapath,
        tracer: Option<Arc<Tracer>>,
        cluster: Option<Arc<ClusterRuntime>>,
    ) -> Self {
        Self {
            config,
            started: Instant::now(),
            datapath: Mutex::new(datapath),
            tracer,
            cluster: tokio::sync::RwLock::new(cluster),
        }
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    fn datapath(&self) -> std::sync::MutexGuard<'_, Datapath> {
        // A panic while holding the lock leaves the datapath as the kernel
        // has it; the agent's view of it is still usable.
        crate::sync::lock(&self.datapath)
    }

    pub fn tracer(&self) -> Option<Arc<Tracer>> {
        self.tracer.clone()
    }

    /// Who the addresses the datapath sees are: every endpoint of the live
    /// nodes and this node's own, the services' VIPs and published ports,
    /// the nodes and their ingress addresses.
    pub async fn address_book(&self) -> AddressBook {
        let Some(rt) = self.cluster().await else {
            return AddressBook::default();
        };
        let mut endpoints = rt.all_endpoints().await;
        if let Some(ingress) = rt.ingress() {
            for own in ingress.pseudo_endpoints().await {
                if !endpoints.iter().any(|ep| ep.id == own.id) {
                    endpoints.push(own);
                }
            }
        }
        let nodes: Vec<_> = rt
            .view()
            .nodes
            .values()
            .filter_map(|node| node.vtep.map(|vtep| (node.name.clone(), vtep)))
            .collect();
        let book = AddressBook::build(&endpoints, &rt.services().await, &nodes);
        match rt.ingress() {
            Some(ingress) => book.with_underlay(ingress.underlay()),
            None => book,
        }
    }

    /// The cluster runtime, if this node is in a cluster.
    pub async fn cluster(&self) -> Option<Arc<ClusterRuntime>> {
        self.cluster.read().await.clone()
    }

    /// `cluster init` on this node.
    pub async fn init_cluster(
        &self,
        pool: Option<ipnet::Ipv4Net>,
    ) -> Result<Arc<ClusterRuntime>, MembershipError> {
        let mut cluster = self.cluster.write().await;
        if let Some(rt) = cluster.as_ref() {
            return Err(MembershipError::already_in(rt));
        }
        let rt = ClusterRuntime::init(&self.config, pool).await?;
        *cluster = Some(rt.clone());
        Ok(rt)
    }

    /// `cluster join` on this node.
    pub async fn join_cluster(
        &self,
        token: &str,
        manager: std::net::SocketAddr,
    ) -> Result<Arc<ClusterRuntime>, MembershipError> {
        let mut cluster = self.cluster.write().await;
        if let Some(rt) = cluster.as_ref() {
            return Err(MembershipError::already_in(rt));
        }
        let rt = ClusterRuntime::join(&self.config, token, manager).await?;
        *cluster = Some(rt.clone());
        Ok(rt)
    }

    pub async fn status(&self) -> Result<Status, DatapathError> {
        let cluster = self.cluster().await;
        let datapath = self.datapath();
        let programs = datapath
            .attachments()
            .iter()
            .map(|a| ProgramStatus {
                name: a.program.to_owned(),
                kind: "tc".to_owned(),
                ifname: a.ifname.clone(),
                direction: a.direction,
                prog_id: a.prog_id,
            })
            .collect();
        Ok(Status {
            node_name: self.config.node_name.clone(),
            version: VERSION.to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            advertise_addr: self.config.advertise_addr,
            bpffs: self.config.bpffs.display().to_string(),
            programs,
            interfaces: counters::read(&datapath)?,
            cluster_id: cluster.as_ref().map(|rt| rt.identity().cluster_id.clone()),
            role: cluster.as_ref().map(|rt| rt.identity().role),
            gossip_rejected_packets: cluster.as_ref().map(|rt| rt.gossip().rejected_packets()),
            trace: self.tracer.as_ref().map(|t| t.stats()),
        })
    }

    pub fn counters(&self) -> Result<Vec<InterfaceCounters>, DatapathError> {
        counters::read(&self.datapath())
    }
}
