//! The daemon: start-up, the state the API reads, and shutdown.
//!
//! Start-up order: data and run directories, the datapath (adopting what an
//! earlier run left; tracing switched off), then the API. Shutdown stops the
//! API and leaves the datapath in the kernel, so that traffic keeps flowing
//! while the agent is down or being upgraded.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    api::{
        self,
        types::{InterfaceCounters, ProgramStatus, Status},
    },
    cluster::ClusterRuntime,
    config::AgentConfig,
    dataplane::{counters, interfaces, Datapath, DatapathError},
    trace::{names::AddressBook, NameSource, Tracer},
    VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create the data directory {path}: {source}: run netagent as root, or pass another --data-dir")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(
        "no interface of this node holds the advertise address {0}: pass the address of one of its interfaces"
    )]
    AdvertiseAddrNotLocal(std::net::IpAddr),
    #[error(transparent)]
    Serve(#[from] api::server::ServeError),
    #[error("cannot rejoin the cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot install the signal handlers: {0}: report this bug with the agent's log")]
    Signals(std::io::Error),
    #[error("the local API failed: {0}: restart netagent and see its log")]
    Api(std::io::Error),
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
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    fn datapath(&self) -> std::sync::MutexGuard<'_, Datapath> {
        // A panic while holding the lock leaves the datapath as the kernel
        // has it; the agent's view of it is still usable.
        self.datapath
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        let mut endpoints = crate::api::routes::all_endpoints(&rt).await;
        if let Some(ingress) = &rt.ingress {
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
        match &rt.ingress {
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
    ) -> Result<Arc<ClusterRuntime>, crate::api::server::ApiError> {
        let mut cluster = self.cluster.write().await;
        if let Some(rt) = cluster.as_ref() {
            return Err(already_in(rt));
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
    ) -> Result<Arc<ClusterRuntime>, crate::api::server::ApiError> {
        let mut cluster = self.cluster.write().await;
        if let Some(rt) = cluster.as_ref() {
            return Err(already_in(rt));
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
            gossip_rejected_packets: cluster.as_ref().map(|rt| rt.gossip.rejected_packets()),
            trace: self.tracer.as_ref().map(|t| t.stats()),
        })
    }

    pub fn counters(&self) -> Result<Vec<InterfaceCounters>, DatapathError> {
        counters::read(&self.datapath())
    }
}

fn already_in(rt: &ClusterRuntime) -> crate::api::server::ApiError {
    crate::api::server::ApiError::with_status(
        axum::http::StatusCode::CONFLICT,
        format!(
            "this node is already in cluster {} as a {}: leave it first",
            rt.identity().cluster_id,
            rt.identity().role
        ),
    )
}

/// The trace reader's names: the agent's model, as long as the agent lives.
fn name_source(state: &Arc<AgentState>) -> NameSource {
    let weak = Arc::downgrade(state);
    Box::new(move || {
        let weak = weak.clone();
        Box::pin(async move {
            match weak.upgrade() {
                Some(state) => state.address_book().await,
                None => AddressBook::default(),
            }
        })
    })
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| AgentError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let underlay = interfaces::interface_with_addr(config.advertise_addr)
        .ok_or(AgentError::AdvertiseAddrNotLocal(config.advertise_addr))?;

    let mut datapath = Datapath::load(&config.bpffs, &config.lb_maps)?;
    counters::watch(&mut datapath, &underlay)?;
    // Tracing is optional: an agent that cannot trace still forwards.
    let tracer = match Tracer::open(&mut datapath, &config.node_name) {
        Ok(tracer) => Some(tracer),
        Err(error) => {
            warn!(%error, "tracing unavailable");
            None
        }
    };

    let cluster = ClusterRuntime::resume(&config).await?;
    let listener = api::server::bind(&config.api_socket()).await?;
    let socket_path = config.api_socket();
    let state = Arc::new(AgentState {
        config,
        started: Instant::now(),
        datapath: Mutex::new(datapath),
        tracer,
        cluster: tokio::sync::RwLock::new(cluster),
    });
    if let Some(tracer) = &state.tracer {
        if let Err(error) = tracer.spawn(name_source(&state)) {
            warn!(%error, "tracing unavailable");
        }
    }
    info!(
        node = %state.config.node_name,
        advertise_addr = %state.config.advertise_addr,
        underlay = %underlay,
        version = VERSION,
        "netagent running"
    );

    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => info!("SIGTERM: shutting down"),
            _ = sigint.recv() => info!("SIGINT: shutting down"),
        }
    };
    let served = axum::serve(listener, api::server::router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    // Teardown, reverse of start-up: the API socket goes; the datapath stays.
    if let Err(error) = std::fs::remove_file(&socket_path) {
        warn!(socket = %socket_path.display(), %error, "could not remove the API socket");
    }
    served.map_err(AgentError::Api)?;
    info!("netagent stopped; the datapath stays in place");
    Ok(())
}
