//! A node's record, and the pure rules for node updates (`netctl node update`). No I/O: the manager
//! reads the node records, calls these, and commits the new record under a
//! transaction on its key.
//!
//! - a node is named by its name, its id, or a prefix of its id that only
//!   it has; a name two nodes share must be given as an id;
//! - labels follow `netagent_api::label`.

use std::{collections::BTreeMap, net::IpAddr};

use netagent_api::{
    label::{self, MAX_LABELS},
    types::UpdateNode,
};
use serde::{Deserialize, Serialize};

use super::error::ControlError;
use crate::model::{Availability, Role};

/// A node as the control plane records it (status comes from gossip).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub addr: IpAddr,
    /// Records written before availability existed read as active.
    #[serde(default)]
    pub availability: Availability,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The one node `id_or_name` designates among `nodes`.
pub fn find(nodes: Vec<NodeRecord>, id_or_name: &str) -> Result<NodeRecord, ControlError> {
    let exact: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.id == id_or_name || n.name == id_or_name)
        .collect();
    let candidates: Vec<&NodeRecord> = if exact.is_empty() && !id_or_name.is_empty() {
        nodes
            .iter()
            .filter(|n| n.id.starts_with(id_or_name))
            .collect()
    } else {
        exact
    };
    match candidates.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ControlError::NotFound(format!(
            "no node {id_or_name:?}: see `netctl node ls`"
        ))),
        _ => Err(ControlError::Invalid(format!(
            "{id_or_name:?} names several nodes: give the node id (`netctl node ls`)"
        ))),
    }
}

/// `node` with `request` applied; refuses a bad label, too many, the removal
/// of a label the node does not have (as Docker does), or a key both added
/// and removed.
pub fn apply(mut node: NodeRecord, request: &UpdateNode) -> Result<NodeRecord, ControlError> {
    for (key, value) in &request.add_labels {
        label::check(key, value).map_err(|error| ControlError::Invalid(error.to_string()))?;
    }
    if let Some(key) = request
        .remove_labels
        .iter()
        .find(|key| request.add_labels.contains_key(*key))
    {
        return Err(ControlError::Invalid(format!(
            "label {key} is both added and removed: give it to --label-add or --label-rm, not both"
        )));
    }
    for key in &request.remove_labels {
        if node.labels.remove(key).is_none() {
            return Err(ControlError::Invalid(format!(
                "node {} has no label {key:?}: see `netctl node inspect {}`",
                node.name, node.name
            )));
        }
    }
    if let Some(availability) = request.availability {
        node.availability = availability;
    }
    node.labels.extend(
        request
            .add_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    if node.labels.len() > MAX_LABELS {
        return Err(ControlError::Invalid(format!(
            "node {} would have {} labels: a node holds up to {MAX_LABELS}; remove some with --label-rm KEY",
            node.name,
            node.labels.len()
        )));
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::model::{Availability, Role};

    fn node(id: &str, name: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            name: name.into(),
            role: Role::Worker,
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            availability: Availability::Active,
            labels: Default::default(),
        }
    }

    #[test]
    fn a_node_is_found_by_name_id_or_unique_id_prefix() {
        let nodes = || vec![node("abc1", "n1"), node("abd2", "n2"), node("x3", "n2")];
        assert_eq!(find(nodes(), "n1").unwrap().id, "abc1");
        assert_eq!(find(nodes(), "abd2").unwrap().name, "n2");
        assert_eq!(find(nodes(), "abc").unwrap().id, "abc1");
        assert!(matches!(find(nodes(), "ab"), Err(ControlError::Invalid(_))));
        assert!(matches!(find(nodes(), "n2"), Err(ControlError::Invalid(_))));
        assert!(matches!(
            find(nodes(), "n9"),
            Err(ControlError::NotFound(_))
        ));
        assert!(matches!(find(nodes(), ""), Err(ControlError::NotFound(_))));
    }

    #[test]
    fn an_update_sets_availability_and_merges_labels() {
        let mut n = node("a", "n1");
        n.labels.insert("zone".into(), "a".into());
        let request = UpdateNode {
            availability: Some(Availability::Drain),
            add_labels: [("zone".into(), "b".into()), ("ssd".into(), "".into())].into(),
            ..Default::default()
        };
        let updated = apply(n.clone(), &request).unwrap();
        assert_eq!(updated.availability, Availability::Drain);
        assert_eq!(updated.labels.len(), 2);
        assert_eq!(updated.labels["zone"], "b");
        let remove = UpdateNode {
            remove_labels: ["ssd".into()].into(),
            ..Default::default()
        };
        let removed = apply(updated.clone(), &remove).unwrap();
        assert_eq!(removed.labels.keys().collect::<Vec<_>>(), ["zone"]);
        // A label the node does not have, or one both added and removed.
        let error = apply(removed, &remove).unwrap_err().to_string();
        assert!(error.contains("has no label \"ssd\""), "{error}");
        let both = UpdateNode {
            add_labels: [("ssd".into(), "".into())].into(),
            remove_labels: ["ssd".into()].into(),
            ..Default::default()
        };
        let error = apply(updated, &both).unwrap_err().to_string();
        assert!(error.contains("both added and removed"), "{error}");
        // Nothing asked, nothing changed.
        assert_eq!(apply(n.clone(), &UpdateNode::default()).unwrap(), n);
        let bad = UpdateNode {
            add_labels: [("a b".into(), "".into())].into(),
            ..Default::default()
        };
        assert!(apply(n.clone(), &bad).is_err());
        let many = UpdateNode {
            add_labels: (0..=MAX_LABELS)
                .map(|i| (format!("k{i}"), String::new()))
                .collect(),
            ..Default::default()
        };
        assert!(apply(n, &many).is_err());
    }
}
