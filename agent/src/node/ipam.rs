//! Node-local address assignment. The managers hand each node disjoint
//! address blocks per network; the node picks addresses inside its own
//! blocks without asking anyone, so attaches keep working while managers
//! are unreachable and two nodes can never pick the same address.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

use crate::model::Network;

/// The first free address of `blocks` for `network`: never the subnet's
/// network or broadcast address, never the gateway, never one in `used`.
pub fn next_free(
    network: &Network,
    blocks: &[Ipv4Net],
    used: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let ingress = ingress_address(network, blocks);
    blocks
        .iter()
        .flat_map(|block| block.hosts().chain([block.network(), block.broadcast()]))
        .find(|ip| is_assignable(network, *ip) && !used.contains(ip) && Some(*ip) != ingress)
}

/// The node's own address on `network`, kept out of `next_free`: the
/// highest assignable address of its lowest block (blocks are handed out
/// from the bottom up, so it does not move as the node gets more blocks).
/// Published-port flows to tasks on other nodes leave the node from it, so
/// that replies come back (see `ingress`).
pub fn ingress_address(network: &Network, blocks: &[Ipv4Net]) -> Option<Ipv4Addr> {
    let lowest = blocks.iter().min_by_key(|block| block.network())?;
    lowest
        .hosts()
        .chain([lowest.network(), lowest.broadcast()])
        .filter(|ip| is_assignable(network, *ip))
        .max()
}

/// Whether `ip` may be given to an endpoint of `network`.
pub fn is_assignable(network: &Network, ip: Ipv4Addr) -> bool {
    network.subnet.contains(&ip)
        && ip != network.subnet.network()
        && ip != network.subnet.broadcast()
        && ip != network.gateway
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> Network {
        Network {
            name: "appnet".into(),
            id: "n".into(),
            vni: 4096,
            subnet: "10.10.0.0/24".parse().unwrap(),
            gateway: "10.10.0.1".parse().unwrap(),
            internal: false,
            mtu: None,
        }
    }

    #[test]
    fn skips_network_address_and_gateway() {
        let blocks = ["10.10.0.0/28".parse().unwrap()];
        let ip = next_free(&network(), &blocks, &BTreeSet::new());
        assert_eq!(ip, Some("10.10.0.2".parse().unwrap()));
    }

    #[test]
    fn uses_block_edges_inside_the_subnet() {
        // .16 and .31 are a /28's own network and broadcast addresses, but
        // ordinary hosts of the /24.
        let blocks = ["10.10.0.16/28".parse().unwrap()];
        let used: BTreeSet<Ipv4Addr> = (17..=30).map(|h| Ipv4Addr::new(10, 10, 0, h)).collect();
        assert_eq!(
            next_free(&network(), &blocks, &used),
            Some(Ipv4Addr::new(10, 10, 0, 16))
        );
    }

    #[test]
    fn full_blocks_yield_nothing_and_skip_subnet_broadcast() {
        let blocks = ["10.10.0.240/28".parse().unwrap()];
        let used: BTreeSet<Ipv4Addr> = (240..=254).map(|h| Ipv4Addr::new(10, 10, 0, h)).collect();
        assert_eq!(next_free(&network(), &blocks, &used), None);
    }

    #[test]
    fn the_ingress_address_is_the_top_of_the_lowest_block_and_never_handed_out() {
        let blocks = [
            "10.10.0.32/28".parse().unwrap(),
            "10.10.0.16/28".parse().unwrap(),
        ];
        assert_eq!(
            ingress_address(&network(), &blocks),
            Some(Ipv4Addr::new(10, 10, 0, 31))
        );
        let used: BTreeSet<Ipv4Addr> = (17..=30).map(|h| Ipv4Addr::new(10, 10, 0, h)).collect();
        let mut used = used;
        used.insert(Ipv4Addr::new(10, 10, 0, 16));
        assert_eq!(
            next_free(&network(), &blocks, &used),
            Some(Ipv4Addr::new(10, 10, 0, 33))
        );
        assert_eq!(ingress_address(&network(), &[]), None);
    }

    #[test]
    fn assignable_excludes_outside_addresses() {
        let net = network();
        assert!(is_assignable(&net, "10.10.0.7".parse().unwrap()));
        assert!(!is_assignable(&net, "10.10.1.7".parse().unwrap()));
        assert!(!is_assignable(&net, "10.10.0.1".parse().unwrap()));
        assert!(!is_assignable(&net, "10.10.0.255".parse().unwrap()));
    }
}
