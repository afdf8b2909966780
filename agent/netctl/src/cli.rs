//! The command line itself: its arguments and the dispatch to each
//! subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use netagent_api::{ApiClient, API_SOCKET, DEFAULT_RUN_DIR};

use crate::{
    cluster, endpoint, error::CliError, node, output::Format, overlay, service, status, trace,
};

/// Drives the netagent of this node (or another one with --host).
#[derive(Debug, Parser)]
#[command(name = "netctl", version)]
pub struct Netctl {
    /// The agent to talk to.
    #[arg(
        long,
        global = true,
        env = "NETCTL_HOST",
        default_value_t = format!("unix://{DEFAULT_RUN_DIR}/{API_SOCKET}")
    )]
    pub host: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show this agent: node, version, uptime, datapath programs and counters.
    Status,
    /// Create, join and manage the cluster.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// The cluster's nodes.
    Node {
        #[command(subcommand)]
        command: node::NodeCommand,
    },
    /// Overlay networks.
    Overlay {
        #[command(subcommand)]
        command: overlay::OverlayCommand,
    },
    /// Services: named groups of endpoints with a VIP per network.
    Service {
        #[command(subcommand)]
        command: service::ServiceCommand,
    },
    /// Containers' attachments to overlay networks.
    Endpoint {
        #[command(subcommand)]
        command: endpoint::EndpointCommand,
    },
    /// Watch what the datapath does with packets, live.
    Trace(trace::TraceArgs),
}

/// The socket path of a `unix://` host address.
pub fn socket_of_host(host: &str) -> Result<PathBuf, CliError> {
    match host.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => Err(CliError::BadHost(host.to_owned())),
    }
}

/// Runs one netctl invocation, writing its output to `out`.
pub async fn run(cli: Netctl, out: &mut dyn std::io::Write) -> Result<(), CliError> {
    let client = ApiClient::new(socket_of_host(&cli.host)?);
    match cli.command {
        Command::Status => status::run(&client, cli.format, out).await,
        Command::Cluster { command } => cluster::run(&client, command, cli.format, out).await,
        Command::Node { command } => node::run(&client, command, cli.format, out).await,
        Command::Overlay { command } => overlay::run(&client, command, cli.format, out).await,
        Command::Service { command } => service::run(&client, command, cli.format, out).await,
        Command::Endpoint { command } => endpoint::run(&client, command, cli.format, out).await,
        Command::Trace(args) => trace::run(&client, args, cli.format, out).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_must_be_an_absolute_unix_path() {
        assert_eq!(
            socket_of_host("unix:///run/netagent/netagent.sock").unwrap(),
            PathBuf::from("/run/netagent/netagent.sock")
        );
        assert!(socket_of_host("tcp://10.0.0.1:2377").is_err());
        assert!(socket_of_host("unix://relative.sock").is_err());
    }
}
