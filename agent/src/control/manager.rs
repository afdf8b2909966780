//! The manager role: the control-plane logic over the [`Store`], and the
//! TCP 2377 server (HTTP/JSON over TLS) in front of it.
//!
//! Every change is an optimistic transaction: read what the rule needs,
//! decide with the pure [`allocator`] functions, then commit only if the
//! guard keys read are unchanged (else read again). A guard key is rewritten
//! by every change of what it protects: `guard/networks` for the set of
//! networks, `guard/alloc/<network>` for that network's blocks and
//! reservations. So two racing allocations can never both commit the same
//! address, whatever process or manager they run in.
//!
//! Authentication: TLS asks for a client certificate but also accepts
//! anonymous clients, because a joining node has none yet. Each request is
//! then authorised: `POST /v1/join` by its token; everything else needs a
//! certificate signed by the cluster CA *and* still recorded in the store
//! (a removed node's certificate stops working). Workers may read, and
//! allocate or reserve for themselves only; the rest needs a manager.
//!
//! Parts: `core` (the rules, as transactions over the store), `services`
//! (the service rules, more of `Core`), `keys` (the key schema), `records`
//! (what is stored under them), `txn` (operations, guard compares, one
//! network's allocations), `tls` (the server's certificates and client
//! verification), `http` (connections, authorisation, dispatch).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::Arc,
};

use ipnet::Ipv4Net;
use tokio::net::TcpListener;
use tracing::info;

use netagent_api::types::{CreateNetwork, CreateService, UpdateNode, UpdateService};

use super::{
    error::ControlError,
    identity::ClusterIdentity,
    node::NodeRecord,
    plane::ControlPlane,
    store::{RedbStore, Store},
};
use crate::model::{Network, Role, Service};

mod core;
mod http;
mod keys;
mod records;
mod services;
mod tls;
mod txn;

use self::core::blocking;
pub use self::core::{Core, CONTROL_PORT, ID_LEN};
pub use records::CertRecord;

/// The manager role, running in this agent.
pub struct Manager {
    core: Arc<Core>,
}

impl Manager {
    /// `cluster init`: a new cluster with this node as its first manager.
    /// Creates the CA, the tokens and the gossip key, records this node, and
    /// returns the node's identity (also saved in `data_dir`). Fails if
    /// `data_dir` already holds a cluster.
    pub async fn init(
        data_dir: &Path,
        node_name: &str,
        advertise_addr: IpAddr,
        default_pool: Option<Ipv4Net>,
    ) -> Result<(Manager, ClusterIdentity), ControlError> {
        let data_dir = data_dir.to_owned();
        let node_name = node_name.to_owned();
        let (core, identity) =
            blocking(move || core::init(&data_dir, &node_name, advertise_addr, default_pool))
                .await?;
        Ok((
            Manager {
                core: Arc::new(core),
            },
            identity,
        ))
    }

    /// Opens the store of a manager that was initialised before (restart).
    pub async fn open(
        data_dir: &Path,
        identity: &ClusterIdentity,
    ) -> Result<Manager, ControlError> {
        if !RedbStore::exists(data_dir) {
            return Err(ControlError::Invalid(format!(
                "no control-plane store in {}: this node is not a manager of cluster {} (run `netctl cluster leave` and init or join again)",
                data_dir.display(),
                identity.cluster_id
            )));
        }
        let data_dir = data_dir.to_owned();
        let identity = identity.clone();
        blocking(move || {
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(&data_dir)?);
            let core = Core::new(store, &identity)?;
            Ok(Manager {
                core: Arc::new(core),
            })
        })
        .await
    }

    /// The store, for watchers and other engineers' records.
    pub fn store(&self) -> Arc<dyn Store> {
        self.core.store.clone()
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Core) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<T, ControlError> {
        let core = self.core.clone();
        blocking(move || work(&core)).await
    }

    /// Serves the control plane on `listen` (TCP, mutual TLS; joining nodes
    /// authenticate with a token instead of a certificate) until dropped.
    pub async fn serve(&self, listen: SocketAddr) -> Result<(), ControlError> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            ControlError::Unavailable(format!(
                "cannot listen on {listen} for the control plane: {e}: free the port or pick another address"
            ))
        })?;
        let local = listener.local_addr().unwrap_or(listen);
        let advertised = if local.ip().is_unspecified() {
            SocketAddr::new(self.core.addr, local.port())
        } else {
            local
        };
        self.run(move |core| core.record_manager(advertised))
            .await?;
        info!(%local, "control plane listening");
        http::serve(self.core.clone(), listener).await
    }
}

impl ControlPlane for Manager {
    async fn nodes(&self) -> Result<Vec<NodeRecord>, ControlError> {
        self.run(|core| core.nodes()).await
    }
    async fn update_node(
        &self,
        id_or_name: &str,
        request: UpdateNode,
    ) -> Result<NodeRecord, ControlError> {
        let id_or_name = id_or_name.to_owned();
        self.run(move |core| core.update_node(&id_or_name, &request))
            .await
    }
    async fn remove_node(&self, id_or_name: &str) -> Result<NodeRecord, ControlError> {
        let id_or_name = id_or_name.to_owned();
        self.run(move |core| core.remove_node(&id_or_name)).await
    }
    async fn create_network(&self, request: CreateNetwork) -> Result<Network, ControlError> {
        self.run(move |core| core.create_network(request)).await
    }
    async fn networks(&self) -> Result<Vec<Network>, ControlError> {
        self.run(|core| core.networks()).await
    }
    async fn remove_network(&self, name: &str) -> Result<Network, ControlError> {
        let name = name.to_owned();
        self.run(move |core| core.remove_network(&name)).await
    }
    async fn allocate_block(
        &self,
        network_id: &str,
        node_id: &str,
    ) -> Result<Ipv4Net, ControlError> {
        let (network_id, node_id) = (network_id.to_owned(), node_id.to_owned());
        self.run(move |core| core.allocate_block(&network_id, &node_id))
            .await
    }
    async fn node_blocks(&self, node_id: &str) -> Result<Vec<(String, Ipv4Net)>, ControlError> {
        let node_id = node_id.to_owned();
        self.run(move |core| core.node_blocks(&node_id)).await
    }
    async fn reserve_ip(
        &self,
        network_id: &str,
        node_id: &str,
        ip: Ipv4Addr,
    ) -> Result<(), ControlError> {
        let (network_id, node_id) = (network_id.to_owned(), node_id.to_owned());
        self.run(move |core| core.reserve_ip(&network_id, &node_id, ip))
            .await
    }
    async fn release_ip(&self, network_id: &str, ip: Ipv4Addr) -> Result<(), ControlError> {
        let network_id = network_id.to_owned();
        self.run(move |core| core.release_ip(&network_id, ip, None))
            .await
    }
    async fn create_service(&self, request: CreateService) -> Result<Service, ControlError> {
        self.run(move |core| core.create_service(request)).await
    }
    async fn services(&self) -> Result<Vec<Service>, ControlError> {
        self.run(|core| core.services()).await
    }
    async fn remove_service(&self, name: &str) -> Result<Service, ControlError> {
        let name = name.to_owned();
        self.run(move |core| core.remove_service(&name)).await
    }
    async fn update_service(
        &self,
        name: &str,
        request: UpdateService,
    ) -> Result<Service, ControlError> {
        let name = name.to_owned();
        self.run(move |core| core.update_service(&name, request))
            .await
    }
    async fn join_token(&self, role: Role, rotate: bool) -> Result<String, ControlError> {
        self.run(move |core| core.join_token(role, rotate)).await
    }
}
