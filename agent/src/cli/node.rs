//! `netctl node ...`.

use std::io::Write;

use clap::Subcommand;

use super::{print_json, print_list, short_id, CliError, Format};
use crate::{api::ApiClient, model::NodeInfo};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes of the cluster.
    Ls,
    /// Show one node (name or id prefix).
    Inspect { node: String },
}

pub async fn run(
    client: &ApiClient,
    command: NodeCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        NodeCommand::Ls => {
            let nodes: Vec<NodeInfo> = client.get("/v1/nodes").await?;
            print_list(
                out,
                format,
                &nodes,
                ["ID", "NAME", "STATUS", "AVAILABILITY", "ROLE", "ADDR"],
                |node| {
                    vec![
                        short_id(&node.id),
                        node.name.clone(),
                        node.status.to_string(),
                        node.availability.to_string(),
                        node.role.to_string(),
                        node.addr.to_string(),
                    ]
                },
            )
        }
        NodeCommand::Inspect { node } => {
            let node: NodeInfo = client
                .get(&format!("/v1/nodes/{}", super::path_segment(&node)))
                .await?;
            print_json(out, &node)
        }
    }
}
