//! What the overlay is asked to build: the node's overlay settings and a
//! container to attach. Every part of the data plane reads these.

use std::{net::Ipv4Addr, path::PathBuf};

use crate::model::Mac;

/// How the node's overlay data plane is set up.
#[derive(Clone, Debug)]
pub struct OverlayConfig {
    /// Prefix of every namespace this agent creates (`netagent-<node name>`
    /// by default; the lab passes `<lab prefix>-<node>`).
    pub netns_prefix: String,
    /// The mark this agent puts on the sandboxes it makes (see
    /// `sandbox::owner_mark`): it adopts, changes and removes no other.
    pub owner: String,
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
