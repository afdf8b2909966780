//! CONTRACT STUB (issue 3): gossip on port 7946. The gossip helper replaces
//! the bodies; the signatures are what the rest of the agent calls.
//!
//! Each node publishes the facts it owns: its VTEP address and its local
//! endpoints. Every node sees the live nodes' facts; a dead node's facts
//! leave the view within seconds and come back when it returns; a restarted
//! node's state replaces its old state.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;

use crate::model::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("{0}")]
    Other(String),
}

#[derive(Clone, Debug)]
pub struct GossipConfig {
    pub node_name: String,
    pub cluster_id: String,
    /// Where to listen (advertise address, port 7946 by default).
    pub listen_addr: SocketAddr,
    /// Other nodes' gossip addresses to contact first.
    pub seeds: Vec<SocketAddr>,
    /// The cluster's 32-byte key: every packet is sealed with it.
    pub cluster_key: [u8; 32],
    pub vtep: Ipv4Addr,
    pub gossip_interval: Duration,
}

/// What one live node publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerState {
    pub name: String,
    pub vtep: Option<Ipv4Addr>,
    /// By endpoint id.
    pub endpoints: BTreeMap<String, Endpoint>,
}

/// The live nodes (self included) and their facts, by node name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GossipView {
    pub nodes: BTreeMap<String, PeerState>,
}

pub struct Gossip {
    view: watch::Receiver<Arc<GossipView>>,
}

impl Gossip {
    pub async fn start(
        _config: GossipConfig,
        _endpoints: Vec<Endpoint>,
    ) -> Result<Self, GossipError> {
        Err(GossipError::Other("not implemented".into()))
    }

    pub async fn publish(&self, _endpoint: &Endpoint) {}

    pub async fn withdraw(&self, _endpoint_id: &str) {}

    pub fn subscribe(&self) -> watch::Receiver<Arc<GossipView>> {
        self.view.clone()
    }

    /// Packets dropped because they did not open with the cluster key.
    pub fn rejected_packets(&self) -> u64 {
        0
    }

    pub async fn shutdown(self) {}
}
