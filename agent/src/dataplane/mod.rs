//! What the agent programs into the kernel of its node.
//!
//! `bpf` loads the datapath object and owns its pins; `counters` attaches the
//! per-interface counters and reads them back. Later concepts (namespaces,
//! sandboxes, endpoints, peers) get a module each here.

pub mod bpf;
pub mod counters;
pub mod interfaces;
pub mod overlay;

pub use bpf::{Datapath, DatapathError};
