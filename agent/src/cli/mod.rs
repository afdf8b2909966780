//! `netctl`: the command line over the local API.
//!
//! Each subcommand fetches documents from the agent and prints them, as a
//! table for people or as JSON (`--format json`) for scripts.

mod cluster;
mod endpoint;
mod node;
mod overlay;
mod service;
mod status;
pub mod table;
mod trace;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{api::ApiClient, config::defaults};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("--host {0:?} is not a unix socket address: use unix:///path/to/netagent.sock")]
    BadHost(String),
    /// A command-line value that is wrong; the message says what to give.
    #[error("{0}")]
    BadArgument(String),
    #[error(transparent)]
    Client(#[from] crate::api::ClientError),
    #[error("cannot write the output: {0} (was the pipe closed, or is the disk full?)")]
    Output(#[from] std::io::Error),
    #[error("cannot handle JSON ({0}): are netctl and netagent the same version? If they are, report this bug with the agent's log (`journalctl -u netagent`)")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    TraceFilter(#[from] crate::trace::filter::FilterError),
    #[error("cannot write the pcap file {path}: {source}: check that its directory exists and is writable and the disk is not full")]
    Pcap {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("netagent ended the trace (stopped or restarting?): run netctl trace again")]
    TraceEnded,
}

/// Drives the netagent of this node (or another one with --host).
#[derive(Debug, Parser)]
#[command(name = "netctl", version)]
pub struct Netctl {
    /// The agent to talk to.
    #[arg(
        long,
        global = true,
        env = "NETCTL_HOST",
        default_value_t = format!("unix://{}/{}", defaults::RUN_DIR, defaults::API_SOCKET)
    )]
    pub host: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
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

/// Prints `items` as a JSON array, or as a table with `header` and one row
/// per item from `row`.
pub(crate) fn print_list<T: serde::Serialize, const N: usize>(
    out: &mut dyn std::io::Write,
    format: Format,
    items: &[T],
    header: [&str; N],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<(), CliError> {
    match format {
        Format::Json => print_json(out, &items),
        Format::Table => {
            let mut table = table::Table::new(header);
            for item in items {
                table.row(row(item));
            }
            Ok(table.write(out)?)
        }
    }
}

/// Prints one object a command made or changed: as JSON, or as the one
/// word people want (its id or name) for tables.
pub(crate) fn print_one<T: serde::Serialize>(
    out: &mut dyn std::io::Write,
    format: Format,
    value: &T,
    word: &str,
) -> Result<(), CliError> {
    match format {
        Format::Json => print_json(out, value),
        Format::Table => Ok(writeln!(out, "{word}")?),
    }
}

/// The first 12 characters of an id, as Docker shows them.
pub(crate) fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Escapes a user-given name for use as one URL path segment.
pub(crate) fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Prints `value` as pretty JSON followed by a newline.
pub(crate) fn print_json<T: serde::Serialize>(
    out: &mut dyn std::io::Write,
    value: &T,
) -> Result<(), CliError> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
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
