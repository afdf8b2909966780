//! The JSON documents of the local API, requests and responses, in one
//! file. `netctl --format json` prints the responses as they are, so their
//! field names are a public contract (`tests/json_contract.rs` holds them
//! byte for byte).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::model::{Availability, EndpointMode, Health, Protocol, PublishedPort, Role, Service};

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
    pub role: Option<Role>,
    /// Gossip datagrams dropped because they did not open with the cluster key.
    #[serde(default)]
    pub gossip_rejected_packets: Option<u64>,
    /// Tracing (`netctl trace`): tracers connected, events written and lost.
    #[serde(default)]
    pub trace: Option<TraceStats>,
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

/// Which way through an interface a tc program sees packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// The counts of one interface, summed over the CPUs (`GET /v1/counters`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceCounters {
    pub ifname: String,
    pub ifindex: u32,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// `netctl status`: how tracing goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStats {
    /// Tracers connected now (the datapath reports only while > 0).
    pub tracers: usize,
    /// Of those, the ones asking for every packet (else the datapath
    /// reports only what is new about each flow).
    #[serde(default)]
    pub all_packets: usize,
    /// Events the datapath wrote since its maps were created.
    pub emitted: u64,
    /// Events lost because the ring was full.
    pub lost: u64,
}

/// The body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /v1/cluster`, and the answer to `init` and `join`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: String,
    pub node_id: String,
    pub node_name: String,
    pub role: Role,
    pub managers: Vec<SocketAddr>,
}

/// `POST /v1/cluster/init` (`netctl cluster init`).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct InitRequest {
    #[serde(default)]
    pub advertise_addr: Option<IpAddr>,
    #[serde(default)]
    pub default_addr_pool: Option<Ipv4Net>,
}

/// `POST /v1/cluster/join` (`netctl cluster join`).
#[derive(Debug, Deserialize, Serialize)]
pub struct JoinRequest {
    pub token: String,
    pub manager: String,
}

/// The query of `GET /v1/cluster/join-token`.
#[derive(Debug, Deserialize, Serialize)]
pub struct TokenQuery {
    pub role: Role,
    #[serde(default)]
    pub rotate: bool,
}

/// `GET /v1/cluster/join-token`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
}

/// `POST /v1/nodes/{name}/update` (`netctl node update`): what to change
/// (nothing given, nothing changes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateNode {
    #[serde(default)]
    pub availability: Option<Availability>,
    /// Labels to set (an existing key gets the new value).
    #[serde(default)]
    pub add_labels: BTreeMap<String, String>,
    /// Label keys to remove; each must be on the node.
    #[serde(default)]
    pub remove_labels: BTreeSet<String>,
}

/// `POST /v1/networks` (`netctl overlay create`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CreateNetwork {
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub vni: Option<u32>,
    #[serde(default)]
    pub internal: bool,
    pub mtu: Option<u32>,
}

/// The query of `GET /v1/endpoints`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct NetworkFilter {
    pub network: Option<String>,
}

/// `POST /v1/endpoints` (`netctl endpoint attach`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AttachRequest {
    pub network: String,
    #[serde(default)]
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub ifname: Option<String>,
}

/// `POST /v1/endpoints/{id}/health`.
#[derive(Debug, Deserialize, Serialize)]
pub struct HealthRequest {
    pub health: Health,
}

/// `POST /v1/services` (`netctl service create`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CreateService {
    pub name: String,
    /// Network names; at least one.
    pub networks: Vec<String>,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
}

/// `POST /v1/services/{name}/update` (`netctl service update`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UpdateService {
    #[serde(default)]
    pub add_networks: Vec<String>,
    #[serde(default)]
    pub remove_networks: Vec<String>,
    #[serde(default)]
    pub add_ports: Vec<PublishedPort>,
    #[serde(default)]
    pub remove_ports: Vec<PortRef>,
}

/// A published port named by its number and protocol (`--publish-rm 8080/udp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRef {
    pub published: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// `GET /v1/services/{name}` (`netctl service inspect`): the service, and
/// on a node with a load balancer, its VIPs as the datapath sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInspect {
    #[serde(flatten)]
    pub service: Service,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<ServiceDatapath>,
}

/// The VIPs of a service in this node's maps, or why they cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServiceDatapath {
    Vips(Vec<VipState>),
    Unreadable(String),
}

/// A VIP as the datapath sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipState {
    pub vip: Ipv4Addr,
    pub table_slot: u32,
    pub table_size: u32,
    /// Backends in the Maglev table, with their share of its slots.
    pub table: Vec<(Ipv4Addr, u32)>,
    pub backends: Vec<BackendState>,
}

/// A backend as the datapath sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendState {
    pub id: u32,
    pub ip: Ipv4Addr,
    /// `active` or `draining`.
    pub state: String,
    /// New flows this node's clients opened to it (since it became a
    /// backend here, or since the maps were created).
    pub connections: u64,
}
