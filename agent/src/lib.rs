//! netagent: the per-host networking agent of a container cluster.
//!
//! The library holds the daemon; its binary (`netagent`) is a thin edge
//! over it. The local API's contract is the `netagent-api` crate, which
//! `netctl` (its own crate) links instead of this one. See
//! `docs/architecture.md` for how data flows between the modules.

pub mod agent;
pub mod api;
pub mod attach;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod dns;
pub mod drain;
pub mod endpoint_store;
pub mod gossip;
pub mod ingress;
pub mod ipam;
pub mod lb;
pub mod model;
pub mod reconcile;
pub mod resolvers;
pub mod trace;

/// The version every component reports (`netctl status`, the API).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
