//! What the agent programs into the kernel of its node.
//!
//! `bpf` loads the datapath object and owns its pins; `counters` attaches the
//! per-interface counters and reads them back. The overlay: `overlay` is the
//! contract; `netns` switches namespaces (on dedicated threads only),
//! `netlink` holds the rtnetlink handles and hand-built messages, `sandbox`
//! builds a network's namespace (br0 + vxlan0), `endpoint` the veths of local
//! containers, `peers` the FDB and neighbour entries of remote endpoints.

pub mod bpf;
pub mod counters;
pub mod endpoint;
pub mod interfaces;
pub mod netlink;
pub mod netns;
pub mod overlay;
pub mod peers;
pub mod sandbox;

pub use bpf::{Datapath, DatapathError};
