//! The return paths of published ports (ingress mode) to remote tasks: in
//! each network that has such a port, this node's ingress address (from its
//! own address blocks), the sandbox side of it (`dataplane::ingress_path`),
//! `ingress_uplink` on the network's `nagw<vni>`, and a pseudo-endpoint in
//! gossip so that the other nodes route the address back here.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;
use tracing::{debug, warn};

use super::{cluster::ClusterRuntime, ipam};
use crate::{
    control::{ControlError, ControlPlane},
    dataplane::overlay::OverlayError,
    ingress::{pseudo_endpoint_id, Ingress, IngressError},
    model::{Endpoint, Network},
};

/// Why a network's return path is not ready; logged, retried next pass.
#[derive(Debug, thiserror::Error)]
pub enum ReturnPathError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("no ingress address in this node's address blocks of network {0}: report this bug with the agent's log (`journalctl -u netagent`)")]
    NoAddress(String),
    #[error("the ingress address {addr} is taken by endpoint {endpoint}: detach it to enable published ports to remote tasks")]
    AddressTaken { addr: Ipv4Addr, endpoint: String },
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Ingress(#[from] IngressError),
}

impl ClusterRuntime {
    /// Gives every network of `wanted` (ids) this node's return path
    /// (ingress address, pseudo-endpoint in gossip, SNAT) and takes it away
    /// from networks that no longer need it. Failures are logged; the next
    /// pass retries.
    pub async fn sync_return_paths(
        &self,
        ingress: &Ingress,
        networks: &[Network],
        wanted: &BTreeSet<String>,
        local: &[Endpoint],
    ) {
        let mut published = ingress.published().await;
        for network in networks.iter().filter(|n| wanted.contains(&n.id)) {
            if network.internal {
                debug!(network = %network.name, "internal network: no published-port path");
                continue;
            }
            match self.ensure_return_path(ingress, network, local).await {
                Ok(endpoint) => {
                    if published.get(&network.id) != Some(&endpoint) {
                        self.gossip.publish(&endpoint).await;
                        published.insert(network.id.clone(), endpoint);
                    }
                }
                Err(error) => {
                    debug!(network = %network.name, %error, "published-port return path not ready yet")
                }
            }
        }
        let gone: Vec<String> = published
            .keys()
            .filter(|id| !wanted.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(endpoint) = published.remove(&id) {
                self.gossip.withdraw(&endpoint.id).await;
                if let Some(network) = networks.iter().find(|n| n.id == id) {
                    if let Err(error) = self.overlay.remove_ingress_path(network).await {
                        warn!(network = %network.name, %error, "cannot remove the published-port return path");
                    }
                }
            }
        }
        // Also what an earlier run left for networks no longer wanted.
        let keep: BTreeSet<Ipv4Net> = networks
            .iter()
            .filter(|n| wanted.contains(&n.id))
            .map(|n| n.subnet)
            .collect();
        if let Err(error) = ingress.forget_uplinks(&keep) {
            warn!(%error, "cannot remove a published-port uplink");
        }
    }

    async fn ensure_return_path(
        &self,
        ingress: &Ingress,
        network: &Network,
        local: &[Endpoint],
    ) -> Result<Endpoint, ReturnPathError> {
        let addr = {
            let mut blocks = self.blocks.lock().await;
            self.learn_blocks(&mut blocks, network).await?;
            let held = blocks.entry(network.id.clone()).or_default();
            if held.is_empty() {
                let block = self
                    .control
                    .allocate_block(&network.id, &self.identity().node_id)
                    .await?;
                held.push(block);
            }
            ipam::ingress_address(network, held)
                .ok_or_else(|| ReturnPathError::NoAddress(network.name.clone()))?
        };
        if let Some(other) = local.iter().find(|e| e.ip == addr) {
            return Err(ReturnPathError::AddressTaken {
                addr,
                endpoint: other.id.clone(),
            });
        }
        self.overlay.ensure_ingress_path(network, addr).await?;
        ingress.ensure_uplink(network, addr)?;
        Ok(Endpoint::new(
            pseudo_endpoint_id(&self.identity().node_name, network.vni),
            &network.name,
            &network.id,
            &self.identity().node_name,
            addr,
        ))
    }
}
