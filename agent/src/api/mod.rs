//! The local API: HTTP/JSON on a root-only unix socket, so that `netctl` and
//! `curl --unix-socket` both drive the agent. The contract itself (routes,
//! documents, the client) is the `netagent-api` crate; this module serves it.

pub mod error;
pub mod routes;
pub mod server;
pub mod service_routes;
pub mod trace_routes;
