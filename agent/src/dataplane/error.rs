//! The overlay's one error type, shared by every part of the data plane
//! (sandbox, endpoint, peers, uplink, masquerade, …): each failure is one
//! line saying what was wrong, then what to do.

use std::{net::Ipv4Addr, path::PathBuf};

use super::{netlink::NetlinkError, netns::NetnsError, nftables::NftError};

/// Every error is one line: what was wrong, then what to do.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{0}")]
    Config(String),
    #[error("{what} in {netns} failed: {cause}; {hint}")]
    Netlink {
        what: String,
        netns: String,
        cause: NetlinkError,
        hint: &'static str,
    },
    #[error("{cause}; {hint}")]
    Netns {
        cause: NetnsError,
        hint: &'static str,
    },
    #[error("cannot open container namespace {}: {cause}; check that the container is running and the path is right", path.display())]
    ContainerNetns {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("underlay interface {name} not found in the node namespace; check `ip addr` and restart netagent with the --advertise-addr of an existing interface")]
    UnderlayMissing { name: String },
    #[error("sandbox {name} (VNI {vni}) does not exist yet: the agent builds it when the network is first used on this node; see `netctl overlay ls` and the agent's log")]
    NoSandbox { name: String, vni: u32 },
    #[error("{link} is missing in sandbox {sandbox}: see `ip -n {sandbox} link`; restarting netagent rebuilds it")]
    LinkMissing { link: &'static str, sandbox: String },
    #[error("sandbox {sandbox} belongs to another agent on this host (its br0 is marked {owner:?}): give each agent its own --netns-prefix, or, if that agent is gone for good, remove the sandbox with `ip netns del {sandbox}`")]
    ForeignSandbox { sandbox: String, owner: String },
    #[error("endpoint id {id:?} is not usable (want 1 or more of [A-Za-z0-9_.-]); pass an id that `netctl endpoint ls` shows")]
    BadEndpointId { id: String },
    #[error("interface name {name:?} is not usable (1 to 15 bytes, no '/', ':' or whitespace); pass --ifname with a name such as eth0")]
    BadIfname { name: String },
    #[error("{ip} is not a host address of subnet {subnet}; pass an --ip of that subnet other than the gateway, or leave --ip out")]
    AddressOutsideSubnet {
        ip: Ipv4Addr,
        subnet: ipnet::Ipv4Net,
    },
    #[error("veth {link} exists already in sandbox {sandbox} (attached twice, or two endpoint ids share their first 8 characters); detach it first (`netctl endpoint detach ID`)")]
    EndpointExists { link: String, sandbox: String },
    #[error("{what} in {netns} failed: {cause}; {hint}")]
    Nftables {
        what: String,
        netns: String,
        cause: NftError,
        hint: &'static str,
    },
    #[error("cannot turn on {path} in {netns}: {cause}; check that the agent runs as root and /proc/sys is writable")]
    Sysctl {
        path: &'static str,
        netns: String,
        cause: NetnsError,
    },
    #[error("{what} in {netns} failed: {cause}; {hint}")]
    Bpf {
        what: String,
        netns: String,
        cause: Box<dyn std::error::Error + Send + Sync>,
        hint: &'static str,
    },
    #[error("{what} in {netns} failed: {cause}; {hint}")]
    Socket {
        what: String,
        netns: String,
        cause: std::io::Error,
        hint: &'static str,
    },
    #[error("removing sandbox {sandbox} left errors: {}; remove what is listed by hand", errors.join("; "))]
    Cleanup {
        sandbox: String,
        errors: Vec<String>,
    },
}

impl OverlayError {
    /// Wraps a netlink failure with what was being done and where.
    pub(crate) fn netlink(
        what: impl Into<String>,
        netns: impl Into<String>,
        hint: &'static str,
    ) -> impl FnOnce(NetlinkError) -> OverlayError {
        let (what, netns) = (what.into(), netns.into());
        move |source| OverlayError::Netlink {
            what,
            netns,
            cause: source,
            hint,
        }
    }

    /// Wraps an nf_tables failure with what was being done and where.
    pub(crate) fn nftables(
        what: impl Into<String>,
        netns: impl Into<String>,
        hint: &'static str,
    ) -> impl FnOnce(NftError) -> OverlayError {
        let (what, netns) = (what.into(), netns.into());
        move |source| OverlayError::Nftables {
            what,
            netns,
            cause: source,
            hint,
        }
    }

    /// A failure to use a container's namespace; a path that cannot be
    /// opened says so.
    pub(crate) fn container_netns(error: NetnsError) -> OverlayError {
        match error {
            NetnsError::Open {
                path,
                cause: source,
            } => OverlayError::ContainerNetns {
                path,
                cause: source,
            },
            other => OverlayError::Netns {
                cause: other,
                hint: HINT_GENERIC,
            },
        }
    }
}

/// The hint for failures we cannot explain better.
pub(crate) const HINT_GENERIC: &str =
    "check that netagent runs as root; `ip -n NAME link` (for a container path: `nsenter --net=PATH ip link`) shows the state left";
