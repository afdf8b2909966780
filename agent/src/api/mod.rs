//! The local API: HTTP/JSON on a root-only unix socket, so that `netctl` and
//! `curl --unix-socket` both drive the agent.

pub mod client;
pub mod routes;
pub mod server;
pub mod service_routes;
pub mod trace_routes;
pub mod types;

pub use client::{ApiClient, ClientError};
