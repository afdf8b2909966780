//! The control plane: desired state (nodes, networks, address blocks, join
//! tokens, the cluster CA, the gossip key) kept by the managers.
//!
//! - `store`: the `Store` trait (revisions, transactions, watches) and its
//!   embedded redb backend, `<data_dir>/store.redb`;
//! - `allocator`: pure rules for VNIs, subnets, gateways, blocks, `--ip`,
//!   service VIPs;
//! - `service`: pure rules for services (names, networks, published ports);
//! - `node`: pure rules for node updates (availability, labels);
//! - `ca`: the cluster CA and node certificates;
//! - `token`: join tokens;
//! - `manager`: the control-plane logic and the TCP 2377 mTLS server;
//! - `client`: the managers' mTLS client and `join`;
//! - `identity`: what a node keeps on disk once it is in a cluster;
//! - `wire`: the HTTP/JSON messages between the two.
//!
//! The rest of the agent uses only what is declared here.

pub mod allocator;
pub mod ca;
mod client;
pub mod identity;
pub mod manager;
pub mod node;
pub mod service;
pub mod store;
pub mod token;
mod wire;

#[cfg(test)]
mod testdir;
#[cfg(test)]
mod tests;

pub use manager::CONTROL_PORT;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
};

use ipnet::Ipv4Net;
// The requests are the local API's documents, passed on to the managers.
use netagent_api::types::{CreateNetwork, CreateService, PortRef, UpdateNode, UpdateService};
use serde::{Deserialize, Serialize};

use crate::model::{Availability, Network, Role, Service};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request was wrong; the message says what to do (one line).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

/// What a node keeps on disk (in its data dir) once it is in a cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterIdentity {
    pub cluster_id: String,
    pub node_id: String,
    pub node_name: String,
    pub role: Role,
    /// This node's advertise address.
    pub addr: IpAddr,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Gossip AEAD key.
    pub cluster_key: [u8; 32],
    /// Control-plane addresses of the managers (port 2377).
    pub managers: Vec<SocketAddr>,
}

impl ClusterIdentity {
    /// The identity saved in `data_dir`, if this node is in a cluster.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, ControlError> {
        identity::load(data_dir)
    }

    /// Saves atomically (write + rename), key material mode 0600.
    pub fn save(&self, data_dir: &Path) -> Result<(), ControlError> {
        identity::save(self, data_dir)
    }

    /// Forgets the cluster (`cluster leave`): removes the saved identity.
    pub fn remove(data_dir: &Path) -> Result<(), ControlError> {
        identity::remove(data_dir)
    }
}

/// A node as the control plane records it (status comes from gossip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub addr: IpAddr,
    /// Records written before availability existed read as active.
    #[serde(default)]
    pub availability: Availability,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The operations every node needs from the managers. Implemented by the
/// local manager (on managers) and by the mTLS client (everywhere).
#[allow(async_fn_in_trait)]
pub trait ControlPlane {
    async fn nodes(&self) -> Result<Vec<NodeRecord>, ControlError>;
    /// Changes the availability and labels of the node `id_or_name` (one
    /// revisioned write of its record). Refuses an unknown or ambiguous
    /// node and a bad label, changing nothing.
    async fn update_node(
        &self,
        id_or_name: &str,
        request: UpdateNode,
    ) -> Result<NodeRecord, ControlError>;
    /// Forgets the node `id_or_name` (`node rm`): its record, its
    /// certificates (its agent is refused at once), its address blocks and
    /// reservations. Refuses the manager that serves the request.
    async fn remove_node(&self, id_or_name: &str) -> Result<NodeRecord, ControlError>;
    /// Validates and records a network: VNI from 4096 up unless given, subnet
    /// from the default pool (10.0.0.0/8 in /24s) unless given, gateway = first
    /// host unless given. Refuses a duplicate name, an overlapping subnet, a
    /// taken VNI, a gateway outside the subnet.
    async fn create_network(&self, request: CreateNetwork) -> Result<Network, ControlError>;
    async fn networks(&self) -> Result<Vec<Network>, ControlError>;
    /// Removes a network and every block and reservation in it.
    async fn remove_network(&self, name: &str) -> Result<Network, ControlError>;
    /// Hands `node_id` a fresh address block of `network_id` (disjoint from
    /// every other block, reservation and the gateway).
    async fn allocate_block(
        &self,
        network_id: &str,
        node_id: &str,
    ) -> Result<Ipv4Net, ControlError>;
    /// The blocks `node_id` holds, by network id.
    async fn node_blocks(&self, node_id: &str) -> Result<Vec<(String, Ipv4Net)>, ControlError>;
    /// Reserves one explicit address for `node_id` (`--ip`). Refuses one
    /// outside the subnet, the gateway, or one already reserved or inside
    /// another node's block.
    async fn reserve_ip(
        &self,
        network_id: &str,
        node_id: &str,
        ip: Ipv4Addr,
    ) -> Result<(), ControlError>;
    async fn release_ip(&self, network_id: &str, ip: Ipv4Addr) -> Result<(), ControlError>;
    /// The current join token for `role`, a new one with `rotate` (the old one
    /// stops working).
    async fn join_token(&self, role: Role, rotate: bool) -> Result<String, ControlError>;
    /// Records a service. In `vip` mode allocates one VIP per network from
    /// that network's subnet (never inside a node's block, never reserved,
    /// never the gateway); `dnsrr` allocates none. Refuses a duplicate name,
    /// an unknown network, no network at all.
    async fn create_service(&self, request: CreateService) -> Result<Service, ControlError>;
    async fn services(&self) -> Result<Vec<Service>, ControlError>;
    /// Removes a service and releases its VIPs.
    async fn remove_service(&self, name: &str) -> Result<Service, ControlError>;
    /// Changes what exists so far: networks added (VIPs allocated in `vip`
    /// mode) or removed (VIPs released).
    async fn update_service(
        &self,
        name: &str,
        request: UpdateService,
    ) -> Result<Service, ControlError>;
}

/// The manager role, running in this agent.
pub struct Manager {
    core: std::sync::Arc<manager::Core>,
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
        Manager::init_impl(data_dir, node_name, advertise_addr, default_pool).await
    }

    /// Opens the store of a manager that was initialised before (restart).
    pub async fn open(
        data_dir: &Path,
        identity: &ClusterIdentity,
    ) -> Result<Manager, ControlError> {
        Manager::open_impl(data_dir, identity).await
    }

    /// Serves the control plane on `listen` (TCP, mutual TLS; joining nodes
    /// authenticate with a token instead of a certificate) until dropped.
    pub async fn serve(&self, listen: SocketAddr) -> Result<(), ControlError> {
        self.serve_impl(listen).await
    }
}

/// The mTLS client of the managers, for any node in the cluster.
pub struct ManagerClient {
    inner: client::Inner,
}

impl ManagerClient {
    pub fn new(identity: &ClusterIdentity) -> Result<Self, ControlError> {
        ManagerClient::new_impl(identity)
    }
}

/// `cluster join`: contacts the manager at `manager` with `token`, verifies
/// the manager against the CA fingerprint inside the token, and returns the
/// node's new identity (certificate issued by the cluster CA, gossip key,
/// manager list). A wrong or rotated-out token is refused with a one-line
/// error. The caller saves the identity.
pub async fn join(
    manager: SocketAddr,
    token: &str,
    node_name: &str,
    advertise_addr: IpAddr,
) -> Result<ClusterIdentity, ControlError> {
    client::join_impl(manager, token, node_name, advertise_addr).await
}
