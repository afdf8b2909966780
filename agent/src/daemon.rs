//! The daemon: start-up and shutdown.
//!
//! Start-up order: data and run directories, the datapath (adopting what an
//! earlier run left; tracing switched off), then the API. Shutdown stops the
//! API and leaves the datapath in the kernel, so that traffic keeps flowing
//! while the agent is down or being upgraded.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    api,
    config::AgentConfig,
    dataplane::{counters, interfaces, Datapath, DatapathError},
    node::cluster::ClusterRuntime,
    node::state::AgentState,
    trace::{names::AddressBook, NameSource, Tracer},
    VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create the data directory {path}: {cause}: run netagent as root, or pass another --data-dir")]
    DataDir {
        path: std::path::PathBuf,
        cause: std::io::Error,
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
    Cluster(crate::node::cluster::ClusterError),
    #[error("cannot install the signal handlers: {0}: report this bug with the agent's log")]
    Signals(std::io::Error),
    #[error("the local API failed: {0}: restart netagent and see its log")]
    Api(std::io::Error),
}

impl From<crate::node::cluster::ClusterError> for AgentError {
    fn from(cause: crate::node::cluster::ClusterError) -> Self {
        Self::Cluster(cause)
    }
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
        cause: source,
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
    let state = Arc::new(AgentState::new(config, datapath, tracer, cluster));
    if let Some(tracer) = state.tracer() {
        if let Err(error) = tracer.spawn(name_source(&state)) {
            warn!(%error, "tracing unavailable");
        }
    }
    info!(
        node = %state.config().node_name,
        advertise_addr = %state.config().advertise_addr,
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
