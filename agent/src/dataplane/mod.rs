//! What the agent programs into the kernel of its node.
//!
//! `bpf` loads the datapath object and owns its pins, on the bpf filesystem
//! `bpffs` mounts when the node has none; `counters` attaches the
//! per-interface counters and reads them back. The overlay: `overlay` is the
//! contract; `netns` switches namespaces (on dedicated threads only),
//! `netlink` holds the rtnetlink handles and hand-built messages, `sandbox`
//! builds a network's namespace (br0 + vxlan0), `endpoint` the veths of local
//! containers, `peers` the FDB and neighbour entries of remote endpoints,
//! `uplink` a non-internal network's veth to the node namespace,
//! `masquerade` its NAT and isolation rules, written through `nftables`
//! (hand-built nf_tables netlink messages).

pub mod bpf;
pub mod bpffs;
pub mod counters;
pub mod dns_redirect;
pub mod endpoint;
pub mod error;
pub mod ingress_path;
pub mod interfaces;
pub mod lb_maps;
pub mod masquerade;
pub mod netlink;
pub mod netns;
pub mod nftables;
pub mod overlay;
pub mod peers;
pub mod sandbox;
pub mod spec;
pub mod uplink;

pub use bpf::{Datapath, DatapathError};
