//! `netctl overlay ...`.

use std::{io::Write, net::Ipv4Addr};

use clap::Subcommand;

use netagent_api::{
    model::{short_id, Network},
    routes,
    types::CreateNetwork,
    ApiClient,
};

use crate::{
    error::CliError,
    output::{print_json, print_list, print_one, Format},
};

#[derive(Debug, Subcommand)]
pub enum OverlayCommand {
    /// Create an overlay network.
    Create {
        name: String,
        /// The network's subnet [default: the next free /24 of the pool].
        #[arg(long)]
        subnet: Option<ipnet::Ipv4Net>,
        /// The gateway address [default: the subnet's first host].
        #[arg(long)]
        gateway: Option<Ipv4Addr>,
        /// The VXLAN network identifier [default: the next free one from 4096].
        #[arg(long)]
        vni: Option<u32>,
        /// No route out of the cluster (no masquerade).
        #[arg(long)]
        internal: bool,
        /// MTU [default: underlay MTU - 50].
        #[arg(long)]
        mtu: Option<u32>,
    },
    /// List overlay networks.
    Ls,
    /// Show one overlay network.
    Inspect { name: String },
    /// Remove an overlay network (refused while endpoints are attached).
    Rm { name: String },
}

pub async fn run(
    client: &ApiClient,
    command: OverlayCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        OverlayCommand::Create {
            name,
            subnet,
            gateway,
            vni,
            internal,
            mtu,
        } => {
            let request = CreateNetwork {
                name,
                subnet,
                gateway,
                vni,
                internal,
                mtu,
            };
            let network: Network = client.post(routes::NETWORKS, &request).await?;
            print_one(out, format, &network, &network.id)
        }
        OverlayCommand::Ls => {
            let networks: Vec<Network> = client.get(routes::NETWORKS).await?;
            print_list(
                out,
                format,
                &networks,
                ["ID", "NAME", "VNI", "SUBNET", "GATEWAY", "INTERNAL"],
                |n| {
                    vec![
                        short_id(&n.id),
                        n.name.clone(),
                        n.vni.to_string(),
                        n.subnet.to_string(),
                        n.gateway.to_string(),
                        n.internal.to_string(),
                    ]
                },
            )
        }
        OverlayCommand::Inspect { name } => {
            let network: Network = client.get(&routes::fill(routes::NETWORK, &name)).await?;
            print_json(out, &network)
        }
        OverlayCommand::Rm { name } => {
            let network: Network = client.delete(&routes::fill(routes::NETWORK, &name)).await?;
            print_one(out, format, &network, &network.name)
        }
    }
}
