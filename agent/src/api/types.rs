//! The JSON documents the local API serves. `netctl --format json` prints
//! them as they are, so their field names are a public contract.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use crate::dataplane::bpf::Direction;
pub use crate::dataplane::counters::InterfaceCounters;

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub node_name: String,
    pub version: String,
    pub uptime_secs: u64,
    pub advertise_addr: IpAddr,
    pub bpffs: String,
    pub programs: Vec<ProgramStatus>,
    pub interfaces: Vec<InterfaceCounters>,
    /// The cluster this node is in, if any.
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub role: Option<crate::model::Role>,
    /// Gossip datagrams dropped because they did not open with the cluster key.
    #[serde(default)]
    pub gossip_rejected_packets: Option<u64>,
    /// Tracing (`netctl trace`): tracers connected, events written and lost.
    #[serde(default)]
    pub trace: Option<crate::trace::TraceStats>,
}

/// One datapath program attached to one interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: String,
    /// How it is attached: `tc` for now.
    pub kind: String,
    pub ifname: String,
    pub direction: Direction,
    /// The kernel's program id (`bpftool prog show id N`).
    pub prog_id: u32,
}

/// The body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
