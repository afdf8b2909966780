//! What a node publishes under which key, and the pure mapping from the live
//! nodes' key-values to a [`GossipView`].
//!
//! Keys: `vtep` → the node's VTEP address; `ep:<endpoint id>` → the endpoint
//! as JSON. Withdrawing deletes the key (a chitchat tombstone).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use tracing::debug;

use crate::model::{Endpoint, Network, Peer};

/// What one live node publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerState {
    pub name: String,
    pub vtep: Option<Ipv4Addr>,
    /// By endpoint id.
    pub endpoints: BTreeMap<String, Endpoint>,
}

/// The live nodes (self included) and their facts, by node name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GossipView {
    pub nodes: BTreeMap<String, PeerState>,
}

impl GossipView {
    /// Every endpoint the live nodes announce, plus those of `local` (this
    /// node's own) that gossip does not show yet.
    pub fn endpoints_with(&self, local: &[Endpoint]) -> Vec<Endpoint> {
        let mut endpoints: Vec<Endpoint> = self
            .nodes
            .values()
            .flat_map(|node| node.endpoints.values().cloned())
            .collect();
        for endpoint in local {
            if !endpoints.iter().any(|e| e.id == endpoint.id) {
                endpoints.push(endpoint.clone());
            }
        }
        endpoints
    }

    /// The peers a sandbox of `network` should hold on node `self_name`:
    /// every endpoint other live nodes have there, at their VTEP (also
    /// where `ingress::remote` sends published-port flows).
    pub fn peers_of(&self, self_name: &str, network: &Network) -> BTreeSet<Peer> {
        self.nodes
            .values()
            .filter(|node| node.name != self_name)
            .filter_map(|node| node.vtep.map(|vtep| (node, vtep)))
            .flat_map(|(node, vtep)| {
                node.endpoints
                    .values()
                    .filter(|ep| ep.network_id == network.id)
                    .map(move |ep| Peer {
                        ip: ep.ip,
                        mac: ep.mac,
                        vtep,
                    })
            })
            .collect()
    }
}

pub const VTEP_KEY: &str = "vtep";
pub const ENDPOINT_PREFIX: &str = "ep:";

pub fn endpoint_key(endpoint_id: &str) -> String {
    format!("{ENDPOINT_PREFIX}{endpoint_id}")
}

pub fn encode_endpoint(endpoint: &Endpoint) -> Result<String, serde_json::Error> {
    serde_json::to_string(endpoint)
}

/// One live chitchat node, as the mapping needs it.
pub struct NodeFacts<'a, KV> {
    pub name: &'a str,
    /// chitchat generation: bigger is a later start of the same node.
    pub generation: u64,
    pub key_values: KV,
}

/// The view of the given live nodes. When a node appears under two
/// generations (it restarted and the old one is not declared dead yet), the
/// later generation alone counts: a restarted node's state replaces its old
/// one. Values that do not parse are skipped: one bad entry must not hide the
/// node's other facts.
pub fn build_view<'a, KV>(nodes: impl IntoIterator<Item = NodeFacts<'a, KV>>) -> GossipView
where
    KV: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut latest: BTreeMap<&str, (u64, KV)> = BTreeMap::new();
    for node in nodes {
        match latest.get(node.name) {
            Some((generation, _)) if *generation >= node.generation => {}
            _ => {
                latest.insert(node.name, (node.generation, node.key_values));
            }
        }
    }
    let nodes = latest
        .into_iter()
        .map(|(name, (_, key_values))| (name.to_owned(), peer_state(name, key_values)))
        .collect();
    GossipView { nodes }
}

fn peer_state<'a>(
    name: &str,
    key_values: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> PeerState {
    let mut peer = PeerState {
        name: name.to_owned(),
        ..PeerState::default()
    };
    for (key, value) in key_values {
        if key == VTEP_KEY {
            match value.parse::<Ipv4Addr>() {
                Ok(vtep) => peer.vtep = Some(vtep),
                Err(err) => debug!(node = name, value, %err, "bad vtep in gossip"),
            }
        } else if let Some(id) = key.strip_prefix(ENDPOINT_PREFIX) {
            match serde_json::from_str::<Endpoint>(value) {
                Ok(endpoint) => {
                    peer.endpoints.insert(id.to_owned(), endpoint);
                }
                Err(err) => debug!(node = name, key, %err, "bad endpoint in gossip"),
            }
        }
        // Other keys: from a newer agent, ignored.
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, node: &str, last: u8) -> Endpoint {
        let ip = Ipv4Addr::new(10, 0, 0, last);
        Endpoint {
            name: format!("web.{last}"),
            service: Some("web".into()),
            ..Endpoint::new(id, "front", "n1", node, ip)
        }
    }

    fn facts<'a>(
        name: &'a str,
        generation: u64,
        kvs: &'a [(String, String)],
    ) -> NodeFacts<'a, Vec<(&'a str, &'a str)>> {
        NodeFacts {
            name,
            generation,
            key_values: kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        }
    }

    #[test]
    fn maps_vtep_and_endpoints() {
        let e1 = endpoint("e1", "a", 2);
        let a = vec![
            (VTEP_KEY.to_owned(), "192.0.2.1".to_owned()),
            (endpoint_key("e1"), encode_endpoint(&e1).unwrap()),
            ("future-key".to_owned(), "whatever".to_owned()),
        ];
        let b = vec![];
        let view = build_view([facts("a", 1, &a), facts("b", 1, &b)]);
        assert_eq!(view.nodes.len(), 2);
        let pa = &view.nodes["a"];
        assert_eq!(pa.name, "a");
        assert_eq!(pa.vtep, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(pa.endpoints.len(), 1);
        assert_eq!(pa.endpoints["e1"], e1);
        assert_eq!(
            view.nodes["b"],
            PeerState {
                name: "b".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn later_generation_replaces_older() {
        let old = vec![
            (
                endpoint_key("e1"),
                encode_endpoint(&endpoint("e1", "a", 2)).unwrap(),
            ),
            (
                endpoint_key("e2"),
                encode_endpoint(&endpoint("e2", "a", 3)).unwrap(),
            ),
        ];
        let new = vec![(
            endpoint_key("e2"),
            encode_endpoint(&endpoint("e2", "a", 3)).unwrap(),
        )];
        for order in [[(5, &old), (9, &new)], [(9, &new), (5, &old)]] {
            let view = build_view(order.map(|(g, kvs)| facts("a", g, kvs)));
            let ids: Vec<_> = view.nodes["a"].endpoints.keys().cloned().collect();
            assert_eq!(ids, vec!["e2".to_owned()]);
        }
    }

    #[test]
    fn bad_values_are_skipped() {
        let kvs = vec![
            (VTEP_KEY.to_owned(), "not-an-ip".to_owned()),
            (endpoint_key("e1"), "{".to_owned()),
            (
                endpoint_key("e2"),
                encode_endpoint(&endpoint("e2", "a", 3)).unwrap(),
            ),
        ];
        let view = build_view([facts("a", 1, &kvs)]);
        let peer = &view.nodes["a"];
        assert_eq!(peer.vtep, None);
        assert_eq!(peer.endpoints.keys().collect::<Vec<_>>(), vec!["e2"]);
    }

    #[test]
    fn empty_input_is_empty_view() {
        let view = build_view(std::iter::empty::<NodeFacts<'_, Vec<(&str, &str)>>>());
        assert!(view.nodes.is_empty());
    }
}
