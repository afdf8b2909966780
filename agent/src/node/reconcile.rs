//! Turning (networks + local endpoints + gossip view) into what the node's
//! kernel should hold. `plan` is pure: it compares the wanted state with the
//! observed one and lists the actions, so it is tested without root; the
//! agent's reconcile loop observes, plans and executes.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    gossip::GossipView,
    model::{Endpoint, Network, Peer},
};

/// What the kernel holds now, as far as the overlay is concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The sandboxes that exist, by VNI, with the peers programmed in each.
    pub sandboxes: BTreeMap<u32, BTreeSet<Peer>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    EnsureSandbox(Network),
    RemovePeer(Network, Peer),
    AddPeer(Network, Peer),
    RemoveSandbox(Network),
}

/// The actions that bring `observed` to what `networks`, this node's
/// `local` endpoints and the gossip `view` call for, in a safe order:
/// sandboxes first, stale peers out before new ones in (a moved address must
/// not lose its new entry), sandboxes that are no longer needed last.
///
/// A sandbox is wanted for each network with at least one local endpoint;
/// it holds one peer per endpoint of that network on every other live node
/// that published its VTEP. Sandboxes of networks this node does not know
/// (yet) are left alone.
///
/// Until `view_settled` (the gossip view of a freshly started agent has had
/// one failure-detection period to fill), the peers of nodes missing from
/// the view are not removed: the agent cannot yet tell a dead node from one
/// it has not heard from, and a restart must change nothing that was right.
/// Peers withdrawn by a node the view does hold go at once.
pub fn plan(
    self_name: &str,
    networks: &[Network],
    local: &[Endpoint],
    view: &GossipView,
    observed: &Observed,
    view_settled: bool,
) -> Vec<Action> {
    plan_with(
        self_name,
        networks,
        local,
        &BTreeSet::new(),
        view,
        observed,
        view_settled,
    )
}

/// `plan`, where the networks (ids) of `also_wanted` need a sandbox even
/// without a local endpoint (they carry an ingress-mode published port,
/// which every node answers).
pub fn plan_with(
    self_name: &str,
    networks: &[Network],
    local: &[Endpoint],
    also_wanted: &BTreeSet<String>,
    view: &GossipView,
    observed: &Observed,
    view_settled: bool,
) -> Vec<Action> {
    let wanted_networks: Vec<&Network> = networks
        .iter()
        .filter(|network| {
            also_wanted.contains(&network.id) || local.iter().any(|ep| ep.network_id == network.id)
        })
        .collect();

    let live_vteps: BTreeSet<_> = view
        .nodes
        .values()
        .filter(|node| node.name != self_name)
        .filter_map(|node| node.vtep)
        .collect();
    let removable = |peer: &Peer| view_settled || live_vteps.contains(&peer.vtep);

    let mut ensure = Vec::new();
    let mut remove_peers = Vec::new();
    let mut add_peers = Vec::new();
    for network in &wanted_networks {
        let wanted = view.peers_of(self_name, network);
        let empty = BTreeSet::new();
        let present = match observed.sandboxes.get(&network.vni) {
            Some(peers) => peers,
            None => {
                ensure.push(Action::EnsureSandbox((*network).clone()));
                &empty
            }
        };
        remove_peers.extend(
            present
                .difference(&wanted)
                .filter(|peer| removable(peer))
                .map(|peer| Action::RemovePeer((*network).clone(), *peer)),
        );
        add_peers.extend(
            wanted
                .difference(present)
                .map(|peer| Action::AddPeer((*network).clone(), *peer)),
        );
    }
    let remove_sandboxes = networks
        .iter()
        .filter(|network| observed.sandboxes.contains_key(&network.vni))
        .filter(|network| !wanted_networks.iter().any(|w| w.id == network.id))
        .map(|network| Action::RemoveSandbox(network.clone()));

    ensure
        .into_iter()
        .chain(remove_peers)
        .chain(add_peers)
        .chain(remove_sandboxes)
        .collect()
}

/// Reads what the overlay holds for the networks this node knows.
pub async fn observe(
    overlay: &crate::dataplane::overlay::Overlay,
    networks: &[Network],
) -> Result<Observed, crate::dataplane::overlay::OverlayError> {
    let present = overlay.sandboxes().await?;
    let mut observed = Observed::default();
    for network in networks.iter().filter(|n| present.contains(&n.vni)) {
        let peers = overlay.peers(network).await?;
        observed
            .sandboxes
            .insert(network.vni, peers.into_iter().collect());
    }
    Ok(observed)
}

/// Carries out `actions` in order; a failed action is logged and the rest
/// still run (the next pass retries what failed).
pub async fn execute(overlay: &crate::dataplane::overlay::Overlay, actions: &[Action]) -> usize {
    let mut failed = 0;
    for action in actions {
        let result = match action {
            Action::EnsureSandbox(network) => overlay.ensure_sandbox(network).await,
            Action::RemovePeer(network, peer) => overlay.remove_peer(network, peer).await,
            Action::AddPeer(network, peer) => overlay.add_peer(network, peer).await,
            Action::RemoveSandbox(network) => overlay.remove_sandbox(network).await,
        };
        match result {
            Ok(()) => tracing::debug!(?action, "reconciled"),
            Err(error) => {
                failed += 1;
                tracing::warn!(?action, %error, "reconcile action failed; will retry");
            }
        }
    }
    failed
}

/// Networks, endpoints and gossip views for the unit tests of what is
/// planned from the gossip view (here and `ingress::remote`).
#[cfg(test)]
pub(crate) mod fixtures {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::gossip::PeerState;

    pub fn network(name: &str, vni: u32) -> Network {
        Network {
            name: name.into(),
            id: format!("id-{name}"),
            vni,
            subnet: format!("10.{}.0.0/24", vni - 4000).parse().unwrap(),
            gateway: format!("10.{}.0.1", vni - 4000).parse().unwrap(),
            internal: false,
            mtu: None,
        }
    }

    pub fn endpoint(network: &Network, node: &str, host: u8) -> Endpoint {
        let ip = Ipv4Addr::new(10, (network.vni - 4000) as u8, 0, host);
        Endpoint::new(
            format!("{node}-{host}"),
            &network.name,
            &network.id,
            node,
            ip,
        )
    }

    pub fn view(nodes: &[(&str, u8, Vec<Endpoint>)]) -> GossipView {
        GossipView {
            nodes: nodes
                .iter()
                .map(|(name, last, eps)| {
                    (
                        name.to_string(),
                        PeerState {
                            name: name.to_string(),
                            vtep: Some(Ipv4Addr::new(198, 18, 0, *last)),
                            endpoints: eps.iter().map(|ep| (ep.id.clone(), ep.clone())).collect(),
                        },
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::{fixtures::*, *};
    use crate::gossip::PeerState;

    fn peer(ep: &Endpoint, vtep_last: u8) -> Peer {
        Peer {
            ip: ep.ip,
            mac: ep.mac,
            vtep: Ipv4Addr::new(198, 18, 0, vtep_last),
        }
    }

    #[test]
    fn first_local_endpoint_creates_sandbox_with_remote_peers() {
        let net = network("app", 4096);
        let mine = endpoint(&net, "n1", 2);
        let theirs = endpoint(&net, "n2", 3);
        let v = view(&[
            ("n1", 11, vec![mine.clone()]),
            ("n2", 12, vec![theirs.clone()]),
        ]);
        let actions = plan(
            "n1",
            std::slice::from_ref(&net),
            &[mine],
            &v,
            &Observed::default(),
            true,
        );
        assert_eq!(
            actions,
            vec![
                Action::EnsureSandbox(net.clone()),
                Action::AddPeer(net, peer(&theirs, 12))
            ]
        );
    }

    #[test]
    fn a_network_with_a_published_port_gets_a_sandbox_without_local_endpoints() {
        let net = network("app", 4096);
        let theirs = endpoint(&net, "n2", 3);
        let v = view(&[("n1", 11, vec![]), ("n2", 12, vec![theirs.clone()])]);
        let wanted = BTreeSet::from([net.id.clone()]);
        let actions = plan_with(
            "n1",
            std::slice::from_ref(&net),
            &[],
            &wanted,
            &v,
            &Observed::default(),
            true,
        );
        assert_eq!(
            actions,
            vec![
                Action::EnsureSandbox(net.clone()),
                Action::AddPeer(net, peer(&theirs, 12))
            ]
        );
    }

    #[test]
    fn converged_state_plans_nothing() {
        let net = network("app", 4096);
        let mine = endpoint(&net, "n1", 2);
        let theirs = endpoint(&net, "n2", 3);
        let v = view(&[
            ("n1", 11, vec![mine.clone()]),
            ("n2", 12, vec![theirs.clone()]),
        ]);
        let observed = Observed {
            sandboxes: [(4096, [peer(&theirs, 12)].into())].into(),
        };
        assert!(plan("n1", &[net], &[mine], &v, &observed, true).is_empty());
    }

    #[test]
    fn dead_node_peers_are_removed_before_new_ones_are_added() {
        let net = network("app", 4096);
        let mine = endpoint(&net, "n1", 2);
        let gone = endpoint(&net, "n2", 3);
        // The same address now lives on n3 (detached on n2, attached on n3).
        let moved = Endpoint {
            node: "n3".into(),
            ..gone.clone()
        };
        let v = view(&[
            ("n1", 11, vec![mine.clone()]),
            ("n3", 13, vec![moved.clone()]),
        ]);
        let observed = Observed {
            sandboxes: [(4096, [peer(&gone, 12)].into())].into(),
        };
        let actions = plan(
            "n1",
            std::slice::from_ref(&net),
            &[mine],
            &v,
            &observed,
            true,
        );
        assert_eq!(
            actions,
            vec![
                Action::RemovePeer(net.clone(), peer(&gone, 12)),
                Action::AddPeer(net, peer(&moved, 13)),
            ]
        );
    }

    #[test]
    fn a_fresh_agent_removes_no_peer_before_its_view_settles() {
        let net = network("app", 4096);
        let mine = endpoint(&net, "n1", 2);
        let theirs = endpoint(&net, "n2", 3);
        // Just restarted: the view holds only this node so far.
        let v = view(&[("n1", 11, vec![mine.clone()])]);
        let observed = Observed {
            sandboxes: [(4096, [peer(&theirs, 12)].into())].into(),
        };
        let net = std::slice::from_ref(&net);
        let local = std::slice::from_ref(&mine);
        assert!(plan("n1", net, local, &v, &observed, false).is_empty());
        assert_eq!(plan("n1", net, local, &v, &observed, true).len(), 1);
        // A node the view holds withdrew the endpoint: it goes at once.
        let v = view(&[("n1", 11, vec![mine.clone()]), ("n2", 12, vec![])]);
        assert_eq!(plan("n1", net, local, &v, &observed, false).len(), 1);
    }

    #[test]
    fn last_local_endpoint_gone_removes_the_sandbox_only_for_known_networks() {
        let net = network("app", 4096);
        let theirs = endpoint(&net, "n2", 3);
        let v = view(&[("n2", 12, vec![theirs.clone()])]);
        let observed = Observed {
            sandboxes: [(4096, [peer(&theirs, 12)].into()), (5000, BTreeSet::new())].into(),
        };
        let actions = plan("n1", std::slice::from_ref(&net), &[], &v, &observed, true);
        assert_eq!(actions, vec![Action::RemoveSandbox(net)]);
    }

    #[test]
    fn networks_stay_apart_and_nodes_without_vtep_are_skipped() {
        let a = network("a", 4096);
        let b = network("b", 4097);
        let mine = endpoint(&a, "n1", 2);
        let other_net = endpoint(&b, "n2", 3);
        let mut v = view(&[("n1", 11, vec![mine.clone()]), ("n2", 12, vec![other_net])]);
        let no_vtep = endpoint(&a, "n4", 9);
        v.nodes.insert(
            "n4".into(),
            PeerState {
                name: "n4".into(),
                vtep: None,
                endpoints: [(no_vtep.id.clone(), no_vtep)].into(),
            },
        );
        let actions = plan(
            "n1",
            &[a.clone(), b],
            &[mine],
            &v,
            &Observed::default(),
            true,
        );
        assert_eq!(actions, vec![Action::EnsureSandbox(a)]);
    }
}
