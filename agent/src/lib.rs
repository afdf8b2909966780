//! netagent: the per-host networking agent of a container cluster.
//!
//! The library holds the daemon; its binary (`netagent`) is a thin edge
//! over it. The local API's contract is the `netagent-api` crate, which
//! `netctl` (its own crate) links instead of this one. See
//! `docs/architecture.md` for how data flows between the modules.

pub mod api;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod dns;
pub mod gossip;
pub mod ingress;
pub mod lb;
pub mod model;
pub mod node;
pub mod sync;
pub mod trace;

/// The version every component reports (`netctl status`, the API).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
