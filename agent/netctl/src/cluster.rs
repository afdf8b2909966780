//! `netctl cluster ...`.

use std::{io::Write, net::IpAddr};

use clap::{Subcommand, ValueEnum};

use netagent_api::{
    model::Role,
    routes,
    types::{ClusterInfo, InitRequest, JoinRequest, TokenResponse},
    ApiClient,
};

use crate::{
    error::CliError,
    output::{print_json, Format},
};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster with this node as its first manager.
    Init {
        /// Must match the agent's own --advertise-addr (a check, not a change).
        #[arg(long)]
        advertise_addr: Option<IpAddr>,
        /// Pool the subnets of networks without --subnet come from [default: 10.0.0.0/8].
        #[arg(long)]
        default_addr_pool: Option<ipnet::Ipv4Net>,
    },
    /// Join the cluster of MANAGER[:2377] with a join token.
    Join {
        #[arg(long)]
        token: String,
        manager: String,
    },
    /// Print (or rotate) the token that joins a worker or a manager.
    JoinToken {
        role: TokenRole,
        /// Print only the token.
        #[arg(short, long)]
        quiet: bool,
        /// Replace the token; the old one stops working at once.
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TokenRole {
    Worker,
    Manager,
}

pub async fn run(
    client: &ApiClient,
    command: ClusterCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        ClusterCommand::Init {
            advertise_addr,
            default_addr_pool,
        } => {
            let request = InitRequest {
                advertise_addr,
                default_addr_pool,
            };
            let info: ClusterInfo = client.post(routes::CLUSTER_INIT, &request).await?;
            match format {
                Format::Json => print_json(out, &info),
                Format::Table => {
                    writeln!(
                        out,
                        "Cluster {} created; node {} ({}) is its first manager.",
                        info.cluster_id, info.node_name, info.node_id
                    )?;
                    writeln!(out, "To add a worker: netctl cluster join-token worker")?;
                    Ok(())
                }
            }
        }
        ClusterCommand::Join { token, manager } => {
            let info: ClusterInfo = client
                .post(routes::CLUSTER_JOIN, &JoinRequest { token, manager })
                .await?;
            match format {
                Format::Json => print_json(out, &info),
                Format::Table => {
                    writeln!(
                        out,
                        "This node joined cluster {} as a {}.",
                        info.cluster_id, info.role
                    )?;
                    Ok(())
                }
            }
        }
        ClusterCommand::JoinToken {
            role,
            quiet,
            rotate,
        } => {
            let role = match role {
                TokenRole::Worker => Role::Worker,
                TokenRole::Manager => Role::Manager,
            };
            let path = format!("{}?role={role}&rotate={rotate}", routes::JOIN_TOKEN);
            let response: TokenResponse = client.get(&path).await?;
            if quiet {
                writeln!(out, "{}", response.token)?;
                return Ok(());
            }
            match format {
                Format::Json => print_json(out, &response),
                Format::Table => {
                    let info: ClusterInfo = client.get(routes::CLUSTER).await?;
                    let manager = info
                        .managers
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    writeln!(out, "To add a {role} to this cluster, run on it:\n")?;
                    writeln!(
                        out,
                        "    netctl cluster join --token {} {manager}\n",
                        response.token
                    )?;
                    Ok(())
                }
            }
        }
    }
}
