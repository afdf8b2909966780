//! Remote endpoints, programmed on vxlan0: a static FDB entry (MAC → remote
//! VTEP) so frames are unicast to the right node, and a permanent neighbour
//! entry (IP → MAC) from which vxlan0 answers ARP itself (proxy on). Nothing
//! is learned and nothing is flooded: a MAC without an entry is dropped.

use std::collections::BTreeMap;

use super::{
    error::{OverlayError, HINT_GENERIC},
    sandbox::{self, VXLAN},
    spec::OverlayConfig,
};
use crate::model::{Network, Peer};

pub async fn add(
    config: &OverlayConfig,
    network: &Network,
    peer: &Peer,
) -> Result<(), OverlayError> {
    let opened = sandbox::open(config, network).await?;
    let vx = sandbox::link_index(&opened, VXLAN).await?;
    let at = |what: String| OverlayError::netlink(what, &opened.name, HINT_GENERIC);
    let nl = &opened.netlink;
    // `append` keeps other remotes of the same MAC; a MAC that moved to
    // another node must not be sent to its old node too.
    let entries = nl
        .fdb_entries(vx)
        .await
        .map_err(at("reading the FDB of vxlan0".into()))?;
    for (mac, vtep, _) in entries {
        if mac == peer.mac && vtep != peer.vtep {
            nl.fdb_del(vx, mac, vtep)
                .await
                .map_err(at(format!("deleting stale FDB entry {mac} dst {vtep}")))?;
        }
    }
    nl.fdb_append(vx, peer.mac, peer.vtep)
        .await
        .map_err(at(format!(
            "adding FDB entry {} dst {}",
            peer.mac, peer.vtep
        )))?;
    nl.bridge_fdb_static(vx, peer.mac)
        .await
        .map_err(at(format!(
            "adding bridge FDB entry {} master static",
            peer.mac
        )))?;
    nl.set_neighbour(vx, peer.ip, peer.mac)
        .await
        .map_err(at(format!(
            "adding neighbour {} lladdr {}",
            peer.ip, peer.mac
        )))?;
    tracing::debug!(sandbox = %opened.name, ip = %peer.ip, mac = %peer.mac, vtep = %peer.vtep, "peer added");
    Ok(())
}

pub async fn remove(
    config: &OverlayConfig,
    network: &Network,
    peer: &Peer,
) -> Result<(), OverlayError> {
    let opened = match sandbox::open(config, network).await {
        Ok(opened) => opened,
        // No sandbox: nothing programmed.
        Err(OverlayError::NoSandbox { .. }) => return Ok(()),
        Err(error) => return Err(error),
    };
    let vx = match sandbox::link_index(&opened, VXLAN).await {
        Ok(vx) => vx,
        Err(OverlayError::LinkMissing { .. }) => return Ok(()),
        Err(error) => return Err(error),
    };
    let at = |what: String| OverlayError::netlink(what, &opened.name, HINT_GENERIC);
    let nl = &opened.netlink;
    // Only this peer's neighbour entry: the IP may already map to another MAC.
    let neighbours = nl
        .permanent_neighbours(vx)
        .await
        .map_err(at("reading the neighbours of vxlan0".into()))?;
    if neighbours.contains(&(peer.ip, peer.mac)) {
        nl.del_neighbour(vx, peer.ip)
            .await
            .map_err(at(format!("deleting neighbour {}", peer.ip)))?;
    }
    nl.fdb_del(vx, peer.mac, peer.vtep)
        .await
        .map_err(at(format!(
            "deleting FDB entry {} dst {}",
            peer.mac, peer.vtep
        )))?;
    nl.bridge_fdb_del(vx, peer.mac)
        .await
        .map_err(at(format!("deleting bridge FDB entry {}", peer.mac)))?;
    tracing::debug!(sandbox = %opened.name, ip = %peer.ip, mac = %peer.mac, "peer removed");
    Ok(())
}

/// What is programmed: each permanent neighbour joined with the FDB entries
/// of its MAC. No sandbox: no peers.
pub async fn list(config: &OverlayConfig, network: &Network) -> Result<Vec<Peer>, OverlayError> {
    let opened = match sandbox::open(config, network).await {
        Ok(opened) => opened,
        Err(OverlayError::NoSandbox { .. }) => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let vx = sandbox::link_index(&opened, VXLAN).await?;
    let at = |what: &'static str| OverlayError::netlink(what, &opened.name, HINT_GENERIC);
    let fdb = opened
        .netlink
        .fdb_entries(vx)
        .await
        .map_err(at("reading the FDB of vxlan0"))?;
    let neighbours = opened
        .netlink
        .permanent_neighbours(vx)
        .await
        .map_err(at("reading the neighbours of vxlan0"))?;
    Ok(join(
        &fdb.iter().map(|(m, v, _)| (*m, *v)).collect::<Vec<_>>(),
        &neighbours,
    ))
}

/// Joins FDB entries (MAC, VTEP) with neighbours (IP, MAC) on the MAC.
pub fn join(
    fdb: &[(crate::model::Mac, std::net::Ipv4Addr)],
    neighbours: &[(std::net::Ipv4Addr, crate::model::Mac)],
) -> Vec<Peer> {
    let mut by_mac: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for (mac, vtep) in fdb {
        by_mac.entry(*mac).or_default().push(*vtep);
    }
    let mut peers: Vec<Peer> = neighbours
        .iter()
        .flat_map(|(ip, mac)| {
            by_mac.get(mac).into_iter().flatten().map(move |vtep| Peer {
                ip: *ip,
                mac: *mac,
                vtep: *vtep,
            })
        })
        .collect();
    peers.sort();
    peers.dedup();
    peers
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::Mac;

    #[test]
    fn join_pairs_neighbours_with_fdb_entries_on_the_mac() {
        let ip = Ipv4Addr::new(10, 10, 0, 3);
        let mac = Mac::from_ipv4(ip);
        let vtep = Ipv4Addr::new(198, 18, 0, 12);
        let orphan = Mac::from_ipv4(Ipv4Addr::new(10, 10, 0, 9));
        let peers = join(
            &[(mac, vtep), (orphan, vtep)],
            &[
                (ip, mac),
                (Ipv4Addr::new(10, 10, 0, 4), Mac([2, 0x42, 0, 0, 0, 4])),
            ],
        );
        assert_eq!(peers, vec![Peer { ip, mac, vtep }]);
    }
}
