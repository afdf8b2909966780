//! `netctl endpoint ...`.

use std::{io::Write, net::Ipv4Addr, path::PathBuf};

use clap::Subcommand;

use netagent_api::{
    model::{short_id, Endpoint, Health},
    routes,
    types::{AttachRequest, HealthRequest},
    ApiClient,
};

use crate::{
    error::CliError,
    output::{print_list, print_one, Format},
};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum HealthArg {
    Healthy,
    Unhealthy,
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Attach a container (a network namespace) to an overlay network.
    Attach {
        #[arg(long)]
        network: String,
        /// The container's network namespace, e.g. /run/netns/c1.
        #[arg(long, conflicts_with = "pid")]
        netns: Option<PathBuf>,
        /// A process of the container (its /proc/PID/ns/net).
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long)]
        service: Option<String>,
        /// The task or container name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// A fixed address [default: the next free one of this node's blocks].
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// The interface name in the container.
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
    /// Detach an endpoint of this node (id, unique id prefix or name).
    Detach { id: String },
    /// Mark an endpoint of this node healthy or unhealthy (unhealthy ones
    /// leave DNS answers).
    Health { id: String, health: HealthArg },
    /// List the endpoints of the cluster.
    Ls {
        #[arg(long)]
        network: Option<String>,
    },
}

pub async fn run(
    client: &ApiClient,
    command: EndpointCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        EndpointCommand::Attach {
            network,
            netns,
            pid,
            service,
            name,
            aliases,
            ip,
            ifname,
        } => {
            let request = AttachRequest {
                network,
                netns,
                pid,
                service,
                name,
                aliases,
                ip,
                ifname: Some(ifname),
            };
            let endpoint: Endpoint = client.post(routes::ENDPOINTS, &request).await?;
            print_one(out, format, &endpoint, &endpoint.id)
        }
        EndpointCommand::Detach { id } => {
            let endpoint: Endpoint = client.delete(&routes::fill(routes::ENDPOINT, &id)).await?;
            print_one(out, format, &endpoint, &endpoint.id)
        }
        EndpointCommand::Health { id, health } => {
            let health = match health {
                HealthArg::Healthy => Health::Healthy,
                HealthArg::Unhealthy => Health::Unhealthy,
            };
            let endpoint: Endpoint = client
                .post(
                    &routes::fill(routes::ENDPOINT_HEALTH, &id),
                    &HealthRequest { health },
                )
                .await?;
            print_one(out, format, &endpoint, &endpoint.id)
        }
        EndpointCommand::Ls { network } => {
            let path = match network {
                Some(network) => routes::with_query(routes::ENDPOINTS, "network", &network),
                None => routes::ENDPOINTS.to_owned(),
            };
            let endpoints: Vec<Endpoint> = client.get(&path).await?;
            print_list(
                out,
                format,
                &endpoints,
                [
                    "ID", "NAME", "NETWORK", "SERVICE", "NODE", "IP", "MAC", "HEALTH",
                ],
                |ep| {
                    vec![
                        short_id(&ep.id),
                        ep.name.clone(),
                        ep.network.clone(),
                        ep.service.clone().unwrap_or_default(),
                        ep.node.clone(),
                        ep.ip.to_string(),
                        ep.mac.to_string(),
                        ep.health.to_string(),
                    ]
                },
            )
        }
    }
}
