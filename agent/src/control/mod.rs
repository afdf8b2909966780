//! CONTRACT STUB (issue 3): the control plane. The control helper replaces
//! the bodies and adds `store` (Store trait + redb), `allocator` (pure),
//! `ca` (cluster CA, node certificates), `token` (join tokens), `manager`
//! (the TCP 2377 mTLS server), `client` (its mTLS client) and `identity`
//! (what a node keeps on disk once it is in a cluster).
//!
//! The rest of the agent uses only what is declared here.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{Network, Role};

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
    pub fn load(_data_dir: &Path) -> Result<Option<Self>, ControlError> {
        Ok(None)
    }

    /// Saves atomically (write + rename), key material mode 0600.
    pub fn save(&self, _data_dir: &Path) -> Result<(), ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
}

/// A node as the control plane records it (status comes from gossip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub addr: IpAddr,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CreateNetwork {
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub vni: Option<u32>,
    #[serde(default)]
    pub internal: bool,
    pub mtu: Option<u32>,
}

/// The operations every node needs from the managers. Implemented by the
/// local manager (on managers) and by the mTLS client (everywhere).
#[allow(async_fn_in_trait)]
pub trait ControlPlane {
    async fn nodes(&self) -> Result<Vec<NodeRecord>, ControlError>;
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
}

/// The manager role, running in this agent.
pub struct Manager;

impl Manager {
    /// `cluster init`: a new cluster with this node as its first manager.
    /// Creates the CA, the tokens and the gossip key, records this node, and
    /// returns the node's identity. Fails if `data_dir` already holds a
    /// cluster.
    pub async fn init(
        _data_dir: &Path,
        _node_name: &str,
        _advertise_addr: IpAddr,
        _default_pool: Option<Ipv4Net>,
    ) -> Result<(Manager, ClusterIdentity), ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }

    /// Opens the store of a manager that was initialised before (restart).
    pub async fn open(
        _data_dir: &Path,
        _identity: &ClusterIdentity,
    ) -> Result<Manager, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }

    /// Serves the control plane on `listen` (TCP, mutual TLS; joining nodes
    /// authenticate with a token instead of a certificate) until dropped.
    pub async fn serve(&self, _listen: SocketAddr) -> Result<(), ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
}

impl ControlPlane for Manager {
    async fn nodes(&self) -> Result<Vec<NodeRecord>, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn create_network(&self, _request: CreateNetwork) -> Result<Network, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn networks(&self) -> Result<Vec<Network>, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn remove_network(&self, _name: &str) -> Result<Network, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn allocate_block(
        &self,
        _network_id: &str,
        _node_id: &str,
    ) -> Result<Ipv4Net, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn node_blocks(&self, _node_id: &str) -> Result<Vec<(String, Ipv4Net)>, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn reserve_ip(
        &self,
        _network_id: &str,
        _node_id: &str,
        _ip: Ipv4Addr,
    ) -> Result<(), ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn release_ip(&self, _network_id: &str, _ip: Ipv4Addr) -> Result<(), ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn join_token(&self, _role: Role, _rotate: bool) -> Result<String, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
}

/// The mTLS client of the managers, for any node in the cluster.
pub struct ManagerClient;

impl ManagerClient {
    pub fn new(_identity: &ClusterIdentity) -> Result<Self, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
}

impl ControlPlane for ManagerClient {
    async fn nodes(&self) -> Result<Vec<NodeRecord>, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn create_network(&self, _request: CreateNetwork) -> Result<Network, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn networks(&self) -> Result<Vec<Network>, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn remove_network(&self, _name: &str) -> Result<Network, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn allocate_block(
        &self,
        _network_id: &str,
        _node_id: &str,
    ) -> Result<Ipv4Net, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn node_blocks(&self, _node_id: &str) -> Result<Vec<(String, Ipv4Net)>, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn reserve_ip(
        &self,
        _network_id: &str,
        _node_id: &str,
        _ip: Ipv4Addr,
    ) -> Result<(), ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn release_ip(&self, _network_id: &str, _ip: Ipv4Addr) -> Result<(), ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
    async fn join_token(&self, _role: Role, _rotate: bool) -> Result<String, ControlError> {
        Err(ControlError::Other("not implemented".into()))
    }
}

/// `cluster join`: contacts the manager at `manager` with `token`, verifies
/// the manager against the CA fingerprint inside the token, and returns the
/// node's new identity (certificate issued by the cluster CA, gossip key,
/// manager list). A wrong or rotated-out token is refused with a one-line
/// error.
pub async fn join(
    _manager: SocketAddr,
    _token: &str,
    _node_name: &str,
    _advertise_addr: IpAddr,
) -> Result<ClusterIdentity, ControlError> {
    Err(ControlError::Other("not implemented".into()))
}
