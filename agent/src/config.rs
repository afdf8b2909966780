//! The agent's configuration: command-line flags over an optional TOML file
//! over built-in defaults, resolved once at start-up.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::dataplane::lb_maps::MapSizes;

/// Where things live when neither a flag nor the config file says otherwise.
pub mod defaults {
    pub const CONFIG_FILE: &str = "/etc/netagent/netagent.toml";
    pub const DATA_DIR: &str = "/var/lib/netagent";
    pub const RUN_DIR: &str = netagent_api::DEFAULT_RUN_DIR;
    pub const BPFFS: &str = "/sys/fs/bpf/netagent";
    pub const RESOLV_CONF: &str = "/etc/resolv.conf";
    /// File name of the local API socket inside the run directory.
    pub const API_SOCKET: &str = netagent_api::API_SOCKET;
    /// Managers serve the control plane here (Docker Swarm's port).
    pub const CONTROL_PORT: u16 = 2377;
    /// Every node gossips here, TCP and UDP.
    pub const GOSSIP_PORT: u16 = 7946;
    /// Prefix of the namespaces the agent creates (sandboxes) when none is
    /// given: `netagent-<node name>`, so that agents of different nodes on
    /// one host never share a sandbox name. Characters a namespace name
    /// cannot hold become `_`.
    pub fn netns_prefix(node_name: &str) -> String {
        let node: String = node_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("netagent-{node}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}: check the path given with --config (default /etc/netagent/netagent.toml)")]
    ReadFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("no node name: pass --node-name or set node_name in the config file")]
    NoNodeName,
    #[error("cannot pick an advertise address: {0}; pass --advertise-addr")]
    AdvertiseAddr(String),
    #[error("upstream DNS server {0:?} is not an IP address or IP:port: fix --upstream-dns or upstream_dns in the config file")]
    UpstreamDns(String),
    #[error(
        "lb.table_size {0} is not a prime between 3 and {max} (the size of a stored table): \
         try 1021, 509 or 251",
        max = netagent_common::LB_TABLE_SIZE
    )]
    LbTableSize(u32),
    #[error("lb.{0} must be at least 1: fix it in the [lb] section of the config file")]
    LbZero(&'static str),
}

/// Settings read from the TOML file; every field is optional and a flag wins.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node_name: Option<String>,
    pub advertise_addr: Option<IpAddr>,
    pub data_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
    pub upstream_dns: Option<Vec<String>>,
    pub control_port: Option<u16>,
    pub gossip_port: Option<u16>,
    pub netns_prefix: Option<String>,
    /// The load balancer's map sizes (`[lb]`).
    pub lb: Option<LbFileConfig>,
}

/// `[lb]` in the config file: map sizes, fixed when the maps are first
/// created (changing them later needs the pins removed).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbFileConfig {
    /// VIPs.
    pub services: Option<u32>,
    /// Entries per Maglev table (a prime).
    pub table_size: Option<u32>,
    pub backends: Option<u32>,
    /// Tracked flows.
    pub conntrack: Option<u32>,
}

impl LbFileConfig {
    /// The map sizes, defaults where unset.
    pub fn sizes(&self) -> Result<MapSizes, ConfigError> {
        let defaults = MapSizes::default();
        let nonzero = |value: Option<u32>, default: u32, name| match value {
            Some(0) => Err(ConfigError::LbZero(name)),
            Some(value) => Ok(value),
            None => Ok(default),
        };
        let services = nonzero(self.services, defaults.services, "services")?;
        let table_size = nonzero(self.table_size, defaults.table_size, "table_size")?;
        if !(3..=netagent_common::LB_TABLE_SIZE).contains(&table_size)
            || !crate::lb::maglev::is_prime(table_size)
        {
            return Err(ConfigError::LbTableSize(table_size));
        }
        Ok(MapSizes {
            services,
            table_slots: MapSizes::slots_for(services),
            table_size,
            backends: nonzero(self.backends, defaults.backends, "backends")?,
            conntrack: nonzero(self.conntrack, defaults.conntrack, "conntrack")?,
        })
    }
}

impl FileConfig {
    /// Reads `path`; a missing file at the default location is no error.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default())
            }
            Err(source) => {
                return Err(ConfigError::ReadFile {
                    path: path.to_owned(),
                    cause: source,
                })
            }
        };
        toml::from_str(&text).map_err(|error| ConfigError::ParseFile {
            path: path.to_owned(),
            message: error.message().to_owned(),
        })
    }
}

/// The resolved configuration the agent runs with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub advertise_addr: IpAddr,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub bpffs: PathBuf,
    pub upstream_dns: Vec<SocketAddr>,
    pub control_port: u16,
    pub gossip_port: u16,
    pub netns_prefix: String,
    /// The load balancer's map sizes.
    pub lb_maps: MapSizes,
}

impl AgentConfig {
    /// Path of the local API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.run_dir.join(defaults::API_SOCKET)
    }
}

/// Parses `IP` or `IP:PORT` (`[v6]:port` for IPv6); port 53 by default.
pub fn parse_dns_server(text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| ConfigError::UpstreamDns(text.to_owned()))
}

/// The `nameserver` lines of a resolv.conf, in order, as port-53 addresses.
pub fn nameservers_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => {
                    // Drop an IPv6 zone ("fe80::1%eth0"): SocketAddr cannot carry it.
                    let addr = addr.split('%').next().unwrap_or(addr);
                    addr.parse::<IpAddr>()
                        .ok()
                        .map(|ip| SocketAddr::new(ip, 53))
                }
                _ => None,
            }
        })
        .collect()
}

/// Picks the node's only global unicast address among `candidates`.
pub fn choose_advertise_addr(candidates: &[IpAddr]) -> Result<IpAddr, ConfigError> {
    let usable: Vec<IpAddr> = candidates
        .iter()
        .copied()
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(_) => false,
        })
        .collect();
    match usable.as_slice() {
        [one] => Ok(*one),
        [] => Err(ConfigError::AdvertiseAddr(
            "this node has no IPv4 address besides loopback".into(),
        )),
        many => Err(ConfigError::AdvertiseAddr(format!(
            "this node has several addresses ({})",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The IPv4 and IPv6 addresses of the interfaces of the current namespace.
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifaddr| ifaddr.address)
        .filter_map(|addr| {
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sandbox_prefix_carries_the_node_name() {
        assert_eq!(defaults::netns_prefix("n1"), "netagent-n1");
        assert_eq!(defaults::netns_prefix("db.eu/1 a"), "netagent-db.eu_1_a");
    }

    #[test]
    fn lb_sizes_default_and_checked() {
        assert_eq!(
            LbFileConfig::default().sizes().unwrap(),
            MapSizes::default()
        );
        let file: FileConfig = toml::from_str("[lb]\nservices = 100\ntable_size = 509\n").unwrap();
        let sizes = file.lb.unwrap().sizes().unwrap();
        assert_eq!((sizes.services, sizes.table_size), (100, 509));
        assert!(sizes.table_slots > 100);
        let bad = LbFileConfig {
            table_size: Some(1000),
            ..Default::default()
        };
        assert!(matches!(bad.sizes(), Err(ConfigError::LbTableSize(1000))));
        // Larger than a stored table.
        let big = LbFileConfig {
            table_size: Some(4099),
            ..Default::default()
        };
        assert!(matches!(big.sizes(), Err(ConfigError::LbTableSize(4099))));
        let zero = LbFileConfig {
            backends: Some(0),
            ..Default::default()
        };
        assert!(matches!(zero.sizes(), Err(ConfigError::LbZero("backends"))));
    }

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "# comment\nsearch lab\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\noptions ndots:2\nnameserver bogus\n";
        let servers = nameservers_from_resolv_conf(text);
        assert_eq!(
            servers,
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn dns_server_with_and_without_port() {
        assert_eq!(
            parse_dns_server("192.0.2.1").unwrap(),
            "192.0.2.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_dns_server("192.0.2.1:5353").unwrap(),
            "192.0.2.1:5353".parse().unwrap()
        );
        assert!(parse_dns_server("resolver.example").is_err());
    }

    #[test]
    fn advertise_addr_needs_exactly_one_candidate() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        let b: IpAddr = "198.51.100.10".parse().unwrap();
        assert_eq!(choose_advertise_addr(&[lo, a]).unwrap(), a);
        assert!(choose_advertise_addr(&[lo]).is_err());
        let error = choose_advertise_addr(&[a, b]).unwrap_err().to_string();
        assert!(error.contains("several addresses"), "{error}");
    }

    #[test]
    fn file_config_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("netagent-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("netagent.toml");
        std::fs::write(&path, "node_name = \"n1\"\nbogus = 1\n").unwrap();
        let error = FileConfig::load(&path, true).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(error.contains("bogus"), "{error}");
    }

    #[test]
    fn missing_default_config_file_is_fine() {
        let config = FileConfig::load(Path::new("/nonexistent/netagent.toml"), false).unwrap();
        assert!(config.node_name.is_none());
    }
}
