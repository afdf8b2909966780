//! The records the whole agent shares: networks, nodes and endpoints, as the
//! control plane stores them, gossip carries them and the API shows them.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// An overlay network: one subnet, one VXLAN VNI, cluster-wide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub id: String,
    pub vni: u32,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub internal: bool,
    /// MTU of the overlay; `None` means underlay MTU − 50.
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

/// Whether a node takes new load-balanced traffic (`netctl node update
/// --availability`). `drain`: its tasks keep running and keep their open
/// flows, but get no new VIP, published-port or dnsrr traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Drain,
}

#[derive(Debug, thiserror::Error)]
#[error("availability {0:?} is not known: use active or drain")]
pub struct BadAvailability(String);

impl FromStr for Availability {
    type Err = BadAvailability;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "active" => Ok(Availability::Active),
            "drain" => Ok(Availability::Drain),
            _ => Err(BadAvailability(text.to_owned())),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Ready,
    Down,
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        })
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Availability::Active => "active",
            Availability::Drain => "drain",
        })
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// A node as the control plane records it; `status` comes from gossip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub id: String,
    pub role: Role,
    #[serde(default)]
    pub availability: Availability,
    pub status: NodeStatus,
    pub addr: IpAddr,
    /// Free-form `key=value` labels (`node update --label-add`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Healthy,
    Unhealthy,
}

/// One container's attachment to one network, as every node sees it. The
/// node that owns it publishes it in gossip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    /// The task or container name (`web.1`); may be empty.
    #[serde(default)]
    pub name: String,
    /// The network's name.
    pub network: String,
    pub network_id: String,
    #[serde(default)]
    pub service: Option<String>,
    pub node: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub health: Health,
}

impl Endpoint {
    /// An endpoint of `node` on network (`network`, `network_id`) at `ip`,
    /// with Docker's MAC for it, healthy, nameless and in no service.
    pub fn new(
        id: impl Into<String>,
        network: &str,
        network_id: &str,
        node: &str,
        ip: Ipv4Addr,
    ) -> Self {
        Endpoint {
            id: id.into(),
            name: String::new(),
            network: network.to_owned(),
            network_id: network_id.to_owned(),
            service: None,
            node: node.to_owned(),
            ip,
            mac: Mac::from_ipv4(ip),
            aliases: Vec::new(),
            health: Health::Healthy,
        }
    }
}

/// A MAC address, written `02:42:0a:0a:00:02`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Docker's convention: `02:42` then the four bytes of the IPv4 address.
    pub fn from_ipv4(ip: Ipv4Addr) -> Self {
        let [a, b, c, d] = ip.octets();
        Mac([0x02, 0x42, a, b, c, d])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a MAC address (want six hex pairs, e.g. 02:42:0a:00:00:02)")]
pub struct BadMac(String);

impl FromStr for Mac {
    type Err = BadMac;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(|| BadMac(text.to_owned()))?;
            if part.len() != 2 {
                return Err(BadMac(text.to_owned()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| BadMac(text.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(text.to_owned()));
        }
        Ok(Mac(bytes))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a service is reached: one virtual IP per network, load-balanced
/// (`vip`), or DNS round robin over the task addresses (`dnsrr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    #[default]
    Vip,
    Dnsrr,
}

impl fmt::Display for EndpointMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        })
    }
}

/// A service's virtual IP on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceVip {
    /// The network's name.
    pub network: String,
    pub network_id: String,
    pub addr: Ipv4Addr,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    #[default]
    Ingress,
    Host,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl fmt::Display for PublishMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        })
    }
}

/// A port published outside the cluster (issue 6 gives it a data plane).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub published: u16,
    pub target: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: PublishMode,
}

/// A named group of endpoints (its tasks), attached to one or more networks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub id: String,
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// One per network in `vip` mode, none in `dnsrr` mode.
    #[serde(default)]
    pub vips: Vec<ServiceVip>,
    /// The networks the service is on (names), whatever its mode.
    #[serde(default)]
    pub networks: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
}

/// The first 12 characters of an id, as Docker shows them.
pub fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_follows_docker_convention_and_round_trips() {
        let mac = Mac::from_ipv4(Ipv4Addr::new(10, 10, 0, 2));
        assert_eq!(mac.to_string(), "02:42:0a:0a:00:02");
        assert_eq!("02:42:0a:0a:00:02".parse::<Mac>().unwrap(), mac);
        assert!("02:42:0a:0a:00".parse::<Mac>().is_err());
        assert!("02:42:0a:0a:00:02:03".parse::<Mac>().is_err());
        assert!("zz:42:0a:0a:00:02".parse::<Mac>().is_err());
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"02:42:0a:0a:00:02\"");
        assert_eq!(serde_json::from_str::<Mac>(&json).unwrap(), mac);
    }
}
