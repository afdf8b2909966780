//! CONTRACT STUB (issue 3): the overlay data plane of one node. The dataplane
//! helper replaces the bodies; the signatures are what the rest of the agent
//! calls. Internals go to `netns`, `netlink`, `sandbox`, `endpoint`, `peers`.
//!
//! Naming, so that nothing collides between agents on one machine:
//! - sandbox namespace: `<netns_prefix>-<vni>` (under /run/netns)
//! - inside a sandbox: `br0` (gateway address, up), `vxlan0` (VNI, dstport
//!   4789, learning off, proxy on, local = vtep, created in the node
//!   namespace under a temporary unique name, then moved in and renamed)
//! - host-side veth of an endpoint, inside the sandbox: `ve-<first 8 chars
//!   of the endpoint id>`, enslaved to br0
//! - container side: moved into the container namespace, renamed to the
//!   requested ifname (`eth0`), MAC, IP/prefix, up, default route via the
//!   gateway if the container has no default route yet.

use std::{net::Ipv4Addr, path::PathBuf};

use crate::model::{Mac, Network, Peer};

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{0}")]
    Other(String),
}

/// How the node's overlay data plane is set up.
#[derive(Clone, Debug)]
pub struct OverlayConfig {
    /// Prefix of every namespace this agent creates (`netagent` by default;
    /// the lab passes `<lab prefix>-<node>`).
    pub netns_prefix: String,
    /// The underlay interface (holds the VTEP address).
    pub underlay: String,
    /// This node's VTEP address (its advertise address).
    pub vtep: Ipv4Addr,
    /// The node's namespace: `None` is the agent's own. Tests running in the
    /// root namespace pass a lab node's namespace here, so that nothing is
    /// ever created in the root namespace.
    pub node_netns: Option<PathBuf>,
}

/// A container to attach.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub endpoint_id: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// The container's network namespace (a /run/netns path or /proc/PID/ns/net).
    pub container_netns: PathBuf,
    /// Interface name inside the container (`eth0`).
    pub ifname: String,
}

pub struct Overlay {
    #[allow(dead_code)]
    config: OverlayConfig,
}

impl Overlay {
    pub fn new(config: OverlayConfig) -> Result<Self, OverlayError> {
        Ok(Self { config })
    }

    /// The sandbox namespace's name for `network`.
    pub fn sandbox_name(&self, network: &Network) -> String {
        format!("{}-{}", self.config.netns_prefix, network.vni)
    }

    /// Creates the sandbox of `network`, or adopts it as it is when it exists
    /// already (a restart changes nothing that was right).
    pub async fn ensure_sandbox(&self, _network: &Network) -> Result<(), OverlayError> {
        Err(OverlayError::Other("not implemented".into()))
    }

    /// Removes the sandbox (namespace, vxlan, bridge) of `network`.
    pub async fn remove_sandbox(&self, _network: &Network) -> Result<(), OverlayError> {
        Err(OverlayError::Other("not implemented".into()))
    }

    /// VNIs of the sandboxes that exist now (for adoption after a restart).
    pub async fn sandboxes(&self) -> Result<Vec<u32>, OverlayError> {
        Ok(Vec::new())
    }

    /// Attaches a container; on failure removes whatever it created.
    pub async fn attach(
        &self,
        _network: &Network,
        _attachment: &Attachment,
    ) -> Result<(), OverlayError> {
        Err(OverlayError::Other("not implemented".into()))
    }

    /// Detaches endpoint `endpoint_id` (deletes its veth pair). Detaching an
    /// endpoint whose veth is already gone is not an error.
    pub async fn detach(&self, _network: &Network, _endpoint_id: &str) -> Result<(), OverlayError> {
        Err(OverlayError::Other("not implemented".into()))
    }

    /// Endpoint ids whose host veth exists in the sandbox (adoption).
    pub async fn attached(&self, _network: &Network) -> Result<Vec<String>, OverlayError> {
        Ok(Vec::new())
    }

    /// Static FDB entry (MAC → VTEP) and permanent neighbour (IP → MAC) for a
    /// remote endpoint. Idempotent.
    pub async fn add_peer(&self, _network: &Network, _peer: &Peer) -> Result<(), OverlayError> {
        Err(OverlayError::Other("not implemented".into()))
    }

    /// Removes a remote endpoint's FDB and neighbour entries. Idempotent.
    pub async fn remove_peer(&self, _network: &Network, _peer: &Peer) -> Result<(), OverlayError> {
        Err(OverlayError::Other("not implemented".into()))
    }

    /// The remote endpoints programmed in the sandbox now.
    pub async fn peers(&self, _network: &Network) -> Result<Vec<Peer>, OverlayError> {
        Ok(Vec::new())
    }
}
