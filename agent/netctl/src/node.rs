//! `netctl node ...`.

use std::io::Write;

use clap::Subcommand;

use netagent_api::{
    label,
    model::{short_id, Availability, NodeInfo},
    routes,
    types::UpdateNode,
    ApiClient,
};

use crate::{
    error::CliError,
    output::{print_json, print_list, print_one, Format},
};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes of the cluster.
    Ls,
    /// Show one node (name or id prefix).
    Inspect { node: String },
    /// Change a node's availability or labels. `drain`: its tasks keep
    /// running and keep their open flows, but get no new load-balanced
    /// traffic (VIPs, published ports, dnsrr answers).
    Update {
        node: String,
        /// active or drain.
        #[arg(long)]
        availability: Option<String>,
        /// A label KEY=VALUE (or KEY) to set (repeatable).
        #[arg(long = "label-add")]
        labels: Vec<String>,
        /// A label KEY to remove (repeatable); the node must have it.
        #[arg(long = "label-rm")]
        remove_labels: Vec<String>,
    },
    /// Forget a node that is down (its agent stopped): it leaves `node ls`,
    /// its address blocks return to the pool and the managers refuse its
    /// certificate from then on.
    Rm { node: String },
}

/// The request of `node update`, checked here so that a bad value is one
/// line and nothing is sent.
fn update_request(
    availability: Option<String>,
    labels: &[String],
    remove_labels: &[String],
) -> Result<UpdateNode, CliError> {
    let availability = availability
        .map(|text| text.parse::<Availability>())
        .transpose()
        .map_err(|e| CliError::BadArgument(e.to_string()))?;
    let add_labels = labels
        .iter()
        .map(|text| label::parse(text).map_err(|e| CliError::BadArgument(e.to_string())))
        .collect::<Result<_, _>>()?;
    if availability.is_none() && labels.is_empty() && remove_labels.is_empty() {
        return Err(CliError::BadArgument(
            "nothing to change: give --availability active|drain, --label-add KEY=VALUE or --label-rm KEY"
                .into(),
        ));
    }
    Ok(UpdateNode {
        availability,
        add_labels,
        remove_labels: remove_labels.iter().cloned().collect(),
    })
}

pub async fn run(
    client: &ApiClient,
    command: NodeCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        NodeCommand::Ls => {
            let nodes: Vec<NodeInfo> = client.get(routes::NODES).await?;
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
            let node: NodeInfo = client.get(&routes::fill(routes::NODE, &node)).await?;
            print_json(out, &node)
        }
        NodeCommand::Update {
            node,
            availability,
            labels,
            remove_labels,
        } => {
            let request = update_request(availability, &labels, &remove_labels)?;
            let path = routes::fill(routes::NODE_UPDATE, &node);
            let node: NodeInfo = client.post(&path, &request).await?;
            print_one(out, format, &node, &node.name)
        }
        NodeCommand::Rm { node } => {
            let path = routes::fill(routes::NODE, &node);
            let node: NodeInfo = client.delete(&path).await?;
            print_one(out, format, &node, &node.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_requests_are_checked_before_anything_is_sent() {
        let request =
            update_request(Some("drain".into()), &["zone=a".into()], &["ssd".into()]).unwrap();
        assert_eq!(request.availability, Some(Availability::Drain));
        assert_eq!(request.add_labels["zone"], "a");
        assert!(request.remove_labels.contains("ssd"));
        assert!(update_request(None, &[], &["ssd".into()]).is_ok());
        for (availability, labels) in [
            (Some("pause"), vec![]),
            (Some("Drain"), vec![]),
            (None, vec!["=x".to_owned()]),
            (None, vec![]),
        ] {
            let error = update_request(availability.map(str::to_owned), &labels, &[])
                .unwrap_err()
                .to_string();
            assert!(!error.contains('\n'), "{error}");
        }
    }
}
