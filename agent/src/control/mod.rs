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
//! - `wire`: the HTTP/JSON messages between the two;
//! - `error`, `plane`: `ControlError`, and the `ControlPlane` trait both
//!   roles implement.
//!
//! The rest of the agent uses only what is declared here.

pub mod allocator;
pub mod ca;
mod client;
pub mod error;
pub mod etcd_store;
pub mod identity;
pub mod manager;
pub mod node;
pub mod plane;
pub mod service;
pub mod store;
pub mod token;
mod wire;

#[cfg(test)]
mod testdir;
#[cfg(test)]
mod tests;

pub use client::{join, ManagerClient};
pub use error::ControlError;
pub use identity::ClusterIdentity;
pub use manager::{Manager, CONTROL_PORT};
pub use node::NodeRecord;
pub use plane::ControlPlane;
