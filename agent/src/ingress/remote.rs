//! INGRESS_REMOTE: where each task on another node is, for `ingress_in`
//! to send published-port flows to it over VXLAN itself (see
//! `ebpf/programs/src/vxlan.rs`). The same facts as the sandboxes' FDB and
//! neighbour entries (`GossipView::peers_of`), for the networks that
//! carry an ingress-mode port. Pure, so that it is tested without a kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use netagent_common::IngressRemote;

use super::is_pseudo_endpoint;
use crate::{gossip::GossipView, model::Network};

/// The INGRESS_REMOTE entries this node wants, by task address: one per
/// endpoint another node owns on a network of `wanted` (ids) that is not
/// internal, other nodes' ingress addresses (pseudo-endpoints, which no
/// published flow goes to) left out. An address two nodes claim (a task
/// moving) gets no entry: its flows take the sandbox path until gossip
/// agrees.
pub fn plan(
    self_name: &str,
    networks: &[Network],
    wanted: &BTreeSet<String>,
    view: &GossipView,
) -> BTreeMap<Ipv4Addr, IngressRemote> {
    let mut entries = BTreeMap::new();
    let mut ambiguous = BTreeSet::new();
    for network in networks
        .iter()
        .filter(|n| wanted.contains(&n.id) && !n.internal)
    {
        let pseudo: BTreeSet<Ipv4Addr> = view
            .nodes
            .values()
            .filter(|node| node.name != self_name)
            .flat_map(|node| node.endpoints.values())
            .filter(|ep| ep.network_id == network.id && is_pseudo_endpoint(ep))
            .map(|ep| ep.ip)
            .collect();
        for peer in view
            .peers_of(self_name, network)
            .into_iter()
            .filter(|peer| !pseudo.contains(&peer.ip))
        {
            let entry = IngressRemote {
                vtep: u32::from_ne_bytes(peer.vtep.octets()),
                vni: network.vni,
                mac: peer.mac.0,
                pad: 0,
                mtu: network.mtu.unwrap_or(0),
            };
            if entries.insert(peer.ip, entry).is_some_and(|e| e != entry) {
                ambiguous.insert(peer.ip);
            }
        }
    }
    entries.retain(|ip, _| !ambiguous.contains(ip));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::Mac,
        node::reconcile::fixtures::{endpoint, network, view},
    };

    #[test]
    fn remote_tasks_of_published_networks_with_their_node_vni_and_mtu() {
        let mut app = network("app", 4096);
        app.mtu = Some(1400);
        let other = network("other", 4097);
        let mut internal = network("internal", 4098);
        internal.internal = true;
        let mine = endpoint(&app, "n1", 2);
        let theirs = endpoint(&app, "n2", 3);
        let elsewhere = endpoint(&other, "n2", 4);
        let hidden = endpoint(&internal, "n2", 5);
        let view = view(&[
            ("n1", 11, vec![mine]),
            ("n2", 12, vec![theirs.clone(), elsewhere, hidden]),
        ]);
        let wanted = [&app, &internal].map(|n| n.id.clone()).into();
        let entries = plan("n1", &[app, other, internal], &wanted, &view);
        let expected = IngressRemote {
            vtep: u32::from_ne_bytes([198, 18, 0, 12]),
            vni: 4096,
            mac: Mac::from_ipv4(theirs.ip).0,
            pad: 0,
            mtu: 1400,
        };
        assert_eq!(entries, BTreeMap::from([(theirs.ip, expected)]));
    }

    #[test]
    fn other_nodes_ingress_addresses_take_no_entry() {
        let app = network("app", 4096);
        let task = endpoint(&app, "n2", 3);
        let mut ingress = endpoint(&app, "n2", 250);
        ingress.id = crate::ingress::pseudo_endpoint_id("n2", app.vni);
        let view = view(&[("n2", 12, vec![task.clone(), ingress])]);
        let wanted = [app.id.clone()].into();
        let entries = plan("n1", &[app], &wanted, &view);
        assert_eq!(entries.keys().copied().collect::<Vec<_>>(), [task.ip]);
    }

    #[test]
    fn an_address_two_nodes_claim_gets_no_entry() {
        let app = network("app", 4096);
        let moving = endpoint(&app, "n2", 3);
        let mut moved = endpoint(&app, "n3", 3);
        moved.id = "n3-moved".into();
        let view = view(&[("n2", 12, vec![moving]), ("n3", 13, vec![moved])]);
        let wanted = [app.id.clone()].into();
        assert!(plan("n1", &[app], &wanted, &view).is_empty());
    }
}
