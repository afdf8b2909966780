//! The records the agent works with: those the local API shows (networks,
//! nodes, endpoints, services: `netagent_api::model`, re-exported here) and
//! the daemon's own.

use std::net::Ipv4Addr;

pub use netagent_api::model::*;

/// A remote endpoint as a sandbox needs it: where to send its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// The VTEP (underlay address) of the node that owns the endpoint.
    pub vtep: Ipv4Addr,
}
