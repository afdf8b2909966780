//! The node's runtime: what ties the features together on one node.
//!
//! - `state`: what the API handlers read and change (`AgentState`);
//! - `cluster`: this node's membership of a cluster (`ClusterRuntime`): the
//!   control-plane client, gossip, the overlay, the load balancer, the
//!   published ports, DNS, and the reconcile loop over them;
//! - `attach`: `endpoint attach` / `detach`, every step undone on failure;
//! - `steps`: the reconcile loop's steps in one shape (`Reconciler`), the
//!   inputs a pass reads once (`Pass`), and the one error policy (`run`);
//! - `reconcile`: the overlay's plan (pure), observation and execution;
//! - `resolvers`: one embedded DNS resolver per container namespace;
//! - `return_paths`: published ports' way back from remote tasks;
//! - `availability`: what a drained node means to the datapath (pure);
//! - `endpoint_store`: this node's endpoints on disk;
//! - `ipam`: addresses inside this node's blocks (pure).
//!
//! The features below it (`lb`, `ingress`, `dns`, `trace`, `gossip`,
//! `control`) never reach back into it; `api`, and `daemon` (start-up, the
//! API served, shutdown) above that, sit on it.

pub mod attach;
pub mod availability;
pub mod cluster;
pub mod endpoint_store;
pub mod ipam;
pub mod reconcile;
pub mod resolvers;
pub mod return_paths;
pub mod state;
pub mod steps;
