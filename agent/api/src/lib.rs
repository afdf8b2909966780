//! The local API of `netagent`: what a client (`netctl`, the CNI plugin)
//! and the agent agree on, and nothing of the daemon.
//!
//! - `model`: the records the API shows (networks, nodes, endpoints,
//!   services);
//! - `types`: the request and response documents, one file: their field
//!   names are a public contract (`netctl --format json` prints them);
//! - `routes`: the paths, as constants both sides use;
//! - `label`: the rules of a node label, checked by `netctl` and the
//!   managers alike;
//! - `trace`, `trace_filter`: the documents of the trace stream and its
//!   query;
//! - `client`: an HTTP/1 client over the agent's unix socket.

pub mod client;
pub mod label;
pub mod model;
pub mod routes;
pub mod trace;
pub mod trace_filter;
pub mod types;

pub use client::{ApiClient, ClientError};

/// Where an agent started with the defaults serves its API.
pub const DEFAULT_RUN_DIR: &str = "/run/netagent";
/// File name of the API socket inside the agent's run directory.
pub const API_SOCKET: &str = "netagent.sock";
