//! `netagent`: the per-node daemon.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use netagent::config::{self, defaults, AgentConfig, ConfigError, FileConfig};
use tracing_subscriber::EnvFilter;

/// The per-host networking agent of a netagent cluster.
#[derive(Debug, Parser)]
#[command(name = "netagent", version)]
struct Flags {
    /// Config file (TOML); flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's name in the cluster [default: the host name].
    #[arg(long)]
    node_name: Option<String>,
    /// The address other nodes reach this one on (gossip, VXLAN)
    /// [default: the node's only IPv4 address].
    #[arg(long)]
    advertise_addr: Option<std::net::IpAddr>,
    /// Persistent state [default: /var/lib/netagent].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Runtime files; the API socket is <run-dir>/netagent.sock [default: /run/netagent].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Directory on a bpf filesystem for the datapath's pins [default: /sys/fs/bpf/netagent].
    #[arg(long)]
    bpffs: Option<PathBuf>,
    /// Upstream DNS servers (IP or IP:PORT, repeatable) [default: the node's /etc/resolv.conf].
    #[arg(long, value_name = "ADDR")]
    upstream_dns: Vec<String>,
    /// Port of the control plane on managers [default: 2377].
    #[arg(long)]
    control_port: Option<u16>,
    /// Gossip port [default: 7946].
    #[arg(long)]
    gossip_port: Option<u16>,
    /// Prefix of the sandbox namespaces this agent creates, `<prefix>-<vni>`
    /// [default: netagent-<node name>].
    #[arg(long)]
    netns_prefix: Option<String>,
    /// Log filter, e.g. `info` or `netagent=debug` (RUST_LOG wins).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn resolve(flags: Flags) -> anyhow::Result<AgentConfig> {
    let file = match &flags.config {
        Some(path) => FileConfig::load(path, true)?,
        None => FileConfig::load(defaults::CONFIG_FILE.as_ref(), false)?,
    };
    let node_name = match flags.node_name.or(file.node_name) {
        Some(name) => name,
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .filter(|name| !name.is_empty())
            .ok_or(ConfigError::NoNodeName)?,
    };
    let advertise_addr = match flags.advertise_addr.or(file.advertise_addr) {
        Some(addr) => addr,
        None => config::choose_advertise_addr(&config::local_addresses())?,
    };
    let upstream_texts = if flags.upstream_dns.is_empty() {
        file.upstream_dns.unwrap_or_default()
    } else {
        flags.upstream_dns
    };
    let upstream_dns: Vec<SocketAddr> = if upstream_texts.is_empty() {
        let text = std::fs::read_to_string(defaults::RESOLV_CONF).unwrap_or_default();
        config::nameservers_from_resolv_conf(&text)
    } else {
        upstream_texts
            .iter()
            .map(|text| config::parse_dns_server(text))
            .collect::<Result<_, _>>()?
    };
    let lb_maps = file.lb.as_ref().map_or_else(
        || Ok(netagent::dataplane::lb_maps::MapSizes::default()),
        |lb| lb.sizes(),
    )?;
    let netns_prefix = flags
        .netns_prefix
        .or(file.netns_prefix)
        .unwrap_or_else(|| defaults::netns_prefix(&node_name));
    Ok(AgentConfig {
        lb_maps,
        node_name,
        advertise_addr,
        data_dir: flags
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| defaults::DATA_DIR.into()),
        run_dir: flags
            .run_dir
            .or(file.run_dir)
            .unwrap_or_else(|| defaults::RUN_DIR.into()),
        bpffs: flags
            .bpffs
            .or(file.bpffs)
            .unwrap_or_else(|| defaults::BPFFS.into()),
        upstream_dns,
        control_port: flags
            .control_port
            .or(file.control_port)
            .unwrap_or(defaults::CONTROL_PORT),
        gossip_port: flags
            .gossip_port
            .or(file.gossip_port)
            .unwrap_or(defaults::GOSSIP_PORT),
        netns_prefix,
    })
}

fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&flags.log_level))
        .context("invalid --log-level: use error, warn, info, debug or trace (or a filter such as netagent=debug)")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = resolve(flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("netagent")
        .build()
        .context("cannot start the async runtime (out of memory or threads?): try again")?;
    runtime.block_on(netagent::daemon::run(config))?;
    Ok(())
}
