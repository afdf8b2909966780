//! Pure allocation and validation rules for networks and addresses. No I/O:
//! the manager reads the store, calls these, and writes the result under a
//! store transaction, so two racing requests can never both win.
//!
//! Address rule (why no address is ever handed out twice):
//! - a network's subnet is cut into per-node blocks: at least 64 of them so
//!   that a /24 serves 64 nodes, between /28 and /30 in size (a /22 or
//!   larger gets /28s, a /24 gets /30s);
//!   a block belongs to one node and blocks never overlap;
//! - a block is never handed out if it contains an address reserved (`--ip`)
//!   by another node, and a reservation is refused inside another node's block;
//! - blocks may contain the subnet's network address, broadcast address and
//!   gateway; a node hands out only [`usable`] addresses of its blocks, which
//!   skips those three and the node's own reservations.
//!
//! Service VIPs (`vip` mode) come from the same subnet, from the top down
//! (blocks are handed out from the bottom up): a VIP is never the gateway,
//! network or broadcast address, never inside a node's block, never reserved
//! and never another service's VIP; and a block never contains a VIP, a
//! reservation is never a VIP.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::error::ControlError;

/// Automatic VNIs start here (below are left for hand-picked ones, as Docker does).
pub const VNI_AUTO_START: u32 = 4096;
/// VXLAN VNIs are 24 bits; 0 is not used.
pub const VNI_MAX: u32 = 16_777_215;
/// Subnets from the default pool are this size.
pub const POOL_SUBNET_PREFIX: u8 = 24;
/// The smallest subnet accepted: /29 (6 hosts).
pub const MAX_SUBNET_PREFIX: u8 = 29;
/// The largest per-node address block.
pub const BLOCK_PREFIX: u8 = 28;
/// The smallest per-node address block.
pub const MIN_BLOCK_PREFIX: u8 = 30;
/// A subnet is cut into at least 2^6 blocks (when blocks can be that small).
const BLOCKS_PER_SUBNET_BITS: u8 = 6;

/// 10.0.0.0/8, cut into /24s.
pub const DEFAULT_POOL: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8);

pub fn default_pool() -> Ipv4Net {
    DEFAULT_POOL
}

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The lowest free VNI from 4096 up.
pub fn next_vni(taken: &[u32]) -> Result<u32, ControlError> {
    (VNI_AUTO_START..=VNI_MAX)
        .find(|vni| !taken.contains(vni))
        .ok_or_else(|| {
            ControlError::Conflict(
                "no free VNI left: remove unused networks or give --vni below 4096".into(),
            )
        })
}

pub fn check_vni(vni: u32, taken: &[u32]) -> Result<(), ControlError> {
    if !(1..=VNI_MAX).contains(&vni) {
        return Err(ControlError::Invalid(format!(
            "VNI {vni} is out of range: give --vni between 1 and {VNI_MAX}"
        )));
    }
    if taken.contains(&vni) {
        return Err(ControlError::Conflict(format!(
            "VNI {vni} is already used by another network: give another --vni or leave it out"
        )));
    }
    Ok(())
}

/// Validates a `--default-addr-pool`.
pub fn check_pool(pool: Ipv4Net) -> Result<Ipv4Net, ControlError> {
    if pool.prefix_len() > POOL_SUBNET_PREFIX {
        return Err(ControlError::Invalid(format!(
            "address pool {pool} is smaller than a /{POOL_SUBNET_PREFIX}: give a /{POOL_SUBNET_PREFIX} or larger --default-addr-pool"
        )));
    }
    Ok(pool.trunc())
}

/// The first /24 of `pool` that overlaps no existing subnet.
pub fn next_subnet(pool: Ipv4Net, existing: &[Ipv4Net]) -> Result<Ipv4Net, ControlError> {
    let candidates = pool
        .trunc()
        .subnets(POOL_SUBNET_PREFIX.max(pool.prefix_len()))
        .map_err(|e| {
            ControlError::Other(format!(
                "cannot cut {pool} into subnets ({e}): report this bug with the agent's log (`journalctl -u netagent`)"
            ))
        })?;
    for candidate in candidates {
        if !existing.iter().any(|net| overlaps(net, &candidate)) {
            return Ok(candidate);
        }
    }
    Err(ControlError::Conflict(format!(
        "the address pool {pool} is full: give --subnet explicitly or remove unused networks"
    )))
}

/// Validates an explicit `--subnet`; returns it with host bits cleared.
pub fn check_subnet(
    subnet: Ipv4Net,
    existing: &[(String, Ipv4Net)],
) -> Result<Ipv4Net, ControlError> {
    if subnet.prefix_len() > MAX_SUBNET_PREFIX {
        return Err(ControlError::Invalid(format!(
            "subnet {subnet} is too small: give a /{MAX_SUBNET_PREFIX} or larger --subnet"
        )));
    }
    let subnet = subnet.trunc();
    if let Some((name, other)) = existing.iter().find(|(_, net)| overlaps(net, &subnet)) {
        return Err(ControlError::Conflict(format!(
            "subnet {subnet} overlaps {other} of network {name}: choose another --subnet"
        )));
    }
    Ok(subnet)
}

/// The first host address of the subnet.
pub fn default_gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

pub fn check_gateway(subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<(), ControlError> {
    if !subnet.contains(&gateway) {
        return Err(ControlError::Invalid(format!(
            "gateway {gateway} is outside subnet {subnet}: give a --gateway inside it"
        )));
    }
    if gateway == subnet.network() || gateway == subnet.broadcast() {
        return Err(ControlError::Invalid(format!(
            "gateway {gateway} is the network or broadcast address of {subnet}: give a host address"
        )));
    }
    Ok(())
}

fn block_prefix(subnet: Ipv4Net) -> u8 {
    (subnet.prefix_len() + BLOCKS_PER_SUBNET_BITS)
        .clamp(BLOCK_PREFIX, MIN_BLOCK_PREFIX)
        .max(subnet.prefix_len())
}

/// The lowest block of `subnet` that overlaps no taken block and holds no
/// address reserved by another node and no service VIP.
pub fn next_block(
    subnet: Ipv4Net,
    taken: &[Ipv4Net],
    foreign_reservations: &[Ipv4Addr],
    vips: &[Ipv4Addr],
) -> Result<Ipv4Net, ControlError> {
    let blocks = subnet
        .subnets(block_prefix(subnet))
        .map_err(|e| {
            ControlError::Other(format!(
                "cannot cut {subnet} into address blocks ({e}): report this bug with the agent's log (`journalctl -u netagent`)"
            ))
        })?;
    for block in blocks {
        let free = !taken.iter().any(|t| overlaps(t, &block))
            && !foreign_reservations
                .iter()
                .chain(vips)
                .any(|ip| block.contains(ip));
        if free {
            return Ok(block);
        }
    }
    Err(ControlError::Conflict(format!(
        "subnet {subnet} has no free address block left: remove unused endpoints or nodes, or create the network with a larger --subnet"
    )))
}

/// Validates a reservation of `ip` by a node, given the blocks of the other
/// nodes, every reservation already made in the network and the services'
/// VIPs in it.
pub fn check_reservation(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    ip: Ipv4Addr,
    other_blocks: &[Ipv4Net],
    reserved: &[Ipv4Addr],
    vips: &[Ipv4Addr],
) -> Result<(), ControlError> {
    if !subnet.contains(&ip) {
        return Err(ControlError::Invalid(format!(
            "address {ip} is outside subnet {subnet}: give an --ip inside it"
        )));
    }
    if ip == gateway || ip == subnet.network() || ip == subnet.broadcast() {
        return Err(ControlError::Invalid(format!(
            "address {ip} is the gateway, network or broadcast address of {subnet}: give another --ip"
        )));
    }
    if reserved.contains(&ip) {
        return Err(ControlError::Conflict(format!(
            "address {ip} is already in use: give another --ip or leave it out"
        )));
    }
    if vips.contains(&ip) {
        return Err(ControlError::Conflict(format!(
            "address {ip} is a service's virtual IP: give another --ip or leave it out"
        )));
    }
    if other_blocks.iter().any(|block| block.contains(&ip)) {
        return Err(ControlError::Conflict(format!(
            "address {ip} is in another node's address block: give another --ip or leave it out"
        )));
    }
    Ok(())
}

/// A service VIP in `subnet`: the highest address that is not the network,
/// broadcast or gateway address, not inside any node's block, not reserved
/// and not already another VIP.
pub fn next_vip(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    blocks: &[Ipv4Net],
    reserved: &[Ipv4Addr],
    vips: &[Ipv4Addr],
) -> Result<Ipv4Addr, ControlError> {
    let first = u32::from(subnet.network()).saturating_add(1);
    let last = u32::from(subnet.broadcast()).saturating_sub(1);
    (first..=last)
        .rev()
        .map(Ipv4Addr::from)
        .find(|ip| {
            *ip != gateway
                && !blocks.iter().any(|block| block.contains(ip))
                && !reserved.contains(ip)
                && !vips.contains(ip)
        })
        .ok_or_else(|| {
            ControlError::Conflict(format!(
                "subnet {subnet} has no free address left for a virtual IP: remove unused services, endpoints or nodes, or use --endpoint-mode dnsrr"
            ))
        })
}

/// The addresses a node may hand out from its `block`: every address except
/// the subnet's network, broadcast and gateway addresses and `reserved`.
pub fn usable<'a>(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    block: Ipv4Net,
    reserved: &'a [Ipv4Addr],
) -> impl Iterator<Item = Ipv4Addr> + 'a {
    block
        .hosts_inclusive()
        .filter(move |ip| *ip != subnet.network() && *ip != subnet.broadcast() && *ip != gateway)
        .filter(move |ip| !reserved.contains(ip))
}

/// Every address of a block, network and broadcast included (ipnet's
/// `hosts()` drops them, but inside a subnet they are ordinary addresses).
trait HostsInclusive {
    fn hosts_inclusive(&self) -> ipnet::Ipv4AddrRange;
}

impl HostsInclusive for Ipv4Net {
    fn hosts_inclusive(&self) -> ipnet::Ipv4AddrRange {
        ipnet::Ipv4AddrRange::new(self.network(), self.broadcast())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }
    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn vni_from_4096_skipping_taken() {
        assert_eq!(next_vni(&[]).unwrap(), 4096);
        assert_eq!(next_vni(&[4096, 4097, 10]).unwrap(), 4098);
        assert!(check_vni(0, &[]).is_err());
        assert!(check_vni(VNI_MAX + 1, &[]).is_err());
        assert!(check_vni(VNI_MAX, &[]).is_ok());
        assert!(check_vni(1, &[]).is_ok());
        assert!(matches!(check_vni(7, &[7]), Err(ControlError::Conflict(_))));
    }

    #[test]
    fn subnets_from_pool_skip_overlaps() {
        let pool = default_pool();
        assert_eq!(next_subnet(pool, &[]).unwrap(), net("10.0.0.0/24"));
        assert_eq!(
            next_subnet(pool, &[net("10.0.0.0/23")]).unwrap(),
            net("10.0.2.0/24")
        );
        // An existing network that is bigger than and contains the candidate.
        assert_eq!(
            next_subnet(pool, &[net("10.0.0.0/16")]).unwrap(),
            net("10.1.0.0/24")
        );
        // A small one inside the first /24.
        assert_eq!(
            next_subnet(pool, &[net("10.0.0.64/29")]).unwrap(),
            net("10.0.1.0/24")
        );
        let custom = check_pool(net("192.168.0.0/23")).unwrap();
        assert_eq!(
            next_subnet(custom, &[net("192.168.0.0/24")]).unwrap(),
            net("192.168.1.0/24")
        );
        assert!(next_subnet(custom, &[net("192.168.0.0/23")]).is_err());
        assert!(check_pool(net("192.168.0.0/25")).is_err());
    }

    #[test]
    fn subnet_validation() {
        let existing = vec![("a".to_string(), net("10.1.0.0/24"))];
        assert_eq!(
            check_subnet(net("10.2.0.7/24"), &existing).unwrap(),
            net("10.2.0.0/24")
        );
        let error = check_subnet(net("10.1.0.128/25"), &existing).unwrap_err();
        assert!(error
            .to_string()
            .contains("overlaps 10.1.0.0/24 of network a"));
        assert!(check_subnet(net("10.0.0.0/8"), &existing).is_err());
        assert!(check_subnet(net("10.3.0.0/30"), &existing)
            .unwrap_err()
            .to_string()
            .contains("too small"));
        assert!(check_subnet(net("10.3.0.0/29"), &existing).is_ok());
    }

    #[test]
    fn gateway_validation() {
        let subnet = net("10.0.0.0/24");
        assert_eq!(default_gateway(subnet), ip("10.0.0.1"));
        assert!(check_gateway(subnet, ip("10.0.0.1")).is_ok());
        assert!(check_gateway(subnet, ip("10.0.0.254")).is_ok());
        assert!(check_gateway(subnet, ip("10.0.1.1"))
            .unwrap_err()
            .to_string()
            .contains("outside"));
        assert!(check_gateway(subnet, ip("10.0.0.0")).is_err());
        assert!(check_gateway(subnet, ip("10.0.0.255")).is_err());
    }

    #[test]
    fn blocks_are_disjoint_and_avoid_foreign_reservations() {
        let subnet = net("10.0.0.0/22");
        let first = next_block(subnet, &[], &[], &[]).unwrap();
        assert_eq!(first, net("10.0.0.0/28"));
        let second = next_block(subnet, &[first], &[], &[]).unwrap();
        assert_eq!(second, net("10.0.0.16/28"));
        // Another node reserved 10.0.0.40: skip 10.0.0.32/28.
        let third = next_block(subnet, &[first, second], &[ip("10.0.0.40")], &[]).unwrap();
        assert_eq!(third, net("10.0.0.48/28"));
        let all: Vec<_> = subnet.subnets(28).unwrap().collect();
        assert!(next_block(subnet, &all, &[], &[]).is_err());
        // A /24 serves 64 nodes (blocks of 4); a /29, two.
        assert_eq!(
            next_block(net("10.8.0.0/24"), &[], &[], &[]).unwrap(),
            net("10.8.0.0/30")
        );
        assert_eq!(
            next_block(net("10.9.0.0/29"), &[], &[], &[]).unwrap(),
            net("10.9.0.0/30")
        );
    }

    #[test]
    fn usable_addresses_skip_gateway_network_broadcast_reserved() {
        let subnet = net("10.0.0.0/24");
        let gateway = ip("10.0.0.1");
        let reserved = [ip("10.0.0.5")];
        let first: Vec<_> = usable(subnet, gateway, net("10.0.0.0/28"), &reserved).collect();
        assert_eq!(first.len(), 16 - 3);
        assert_eq!(first[0], ip("10.0.0.2"));
        assert!(!first.contains(&ip("10.0.0.5")));
        let last: Vec<_> = usable(subnet, gateway, net("10.0.0.240/28"), &[]).collect();
        assert_eq!(last.len(), 15);
        assert!(!last.contains(&ip("10.0.0.255")));
        // Inside a subnet, a block's own first and last addresses are hosts.
        let middle: Vec<_> = usable(subnet, gateway, net("10.0.0.16/28"), &[]).collect();
        assert_eq!(middle.len(), 16);
    }

    #[test]
    fn reservation_validation() {
        let subnet = net("10.0.0.0/24");
        let gateway = ip("10.0.0.1");
        let others = [net("10.0.0.16/28")];
        assert!(check_reservation(subnet, gateway, ip("10.0.0.50"), &others, &[], &[]).is_ok());
        assert!(check_reservation(subnet, gateway, ip("10.0.1.5"), &others, &[], &[]).is_err());
        assert!(check_reservation(subnet, gateway, gateway, &others, &[], &[]).is_err());
        assert!(check_reservation(subnet, gateway, ip("10.0.0.255"), &others, &[], &[]).is_err());
        assert!(matches!(
            check_reservation(subnet, gateway, ip("10.0.0.20"), &others, &[], &[]),
            Err(ControlError::Conflict(_))
        ));
        assert!(matches!(
            check_reservation(
                subnet,
                gateway,
                ip("10.0.0.50"),
                &others,
                &[ip("10.0.0.50")],
                &[]
            ),
            Err(ControlError::Conflict(_))
        ));
    }

    #[test]
    fn reservations_of_a_vip_are_refused() {
        let subnet = net("10.0.0.0/24");
        let error = check_reservation(
            subnet,
            ip("10.0.0.1"),
            ip("10.0.0.254"),
            &[],
            &[],
            &[ip("10.0.0.254")],
        )
        .unwrap_err();
        assert!(matches!(error, ControlError::Conflict(_)), "{error}");
        assert!(error.to_string().contains("virtual IP"), "{error}");
    }

    #[test]
    fn vips_come_from_the_top_and_skip_everything_taken() {
        let subnet = net("10.0.0.0/24");
        let gateway = ip("10.0.0.1");
        // Top down, never the broadcast address.
        assert_eq!(
            next_vip(subnet, gateway, &[], &[], &[]).unwrap(),
            ip("10.0.0.254")
        );
        // Skips other VIPs, reservations and the gateway.
        let gateway_on_top = ip("10.0.0.254");
        assert_eq!(
            next_vip(
                subnet,
                gateway_on_top,
                &[],
                &[ip("10.0.0.253")],
                &[ip("10.0.0.252")]
            )
            .unwrap(),
            ip("10.0.0.251")
        );
        // Skips addresses inside any node's block.
        assert_eq!(
            next_vip(subnet, gateway, &[net("10.0.0.252/30")], &[], &[]).unwrap(),
            ip("10.0.0.251")
        );
        // Nothing left: a /29 fully cut into blocks.
        let small = net("10.9.0.0/29");
        let error = next_vip(
            small,
            ip("10.9.0.1"),
            &[net("10.9.0.0/30"), net("10.9.0.4/30")],
            &[],
            &[],
        )
        .unwrap_err();
        assert!(matches!(error, ControlError::Conflict(_)), "{error}");
        // Only the network address, gateway and broadcast left: none either.
        assert!(next_vip(
            small,
            ip("10.9.0.1"),
            &[],
            &[],
            &(2..=6)
                .map(|i| Ipv4Addr::new(10, 9, 0, i))
                .collect::<Vec<_>>()
        )
        .is_err());
    }

    #[test]
    fn blocks_never_contain_a_vip() {
        let subnet = net("10.8.0.0/24");
        // A VIP in the first /30: the next block is handed out instead.
        assert_eq!(
            next_block(subnet, &[], &[], &[ip("10.8.0.2")]).unwrap(),
            net("10.8.0.4/30")
        );
        // Blocks grow from the bottom, VIPs from the top: they meet at the end.
        let vip = next_vip(subnet, ip("10.8.0.1"), &[], &[], &[]).unwrap();
        let mut taken = Vec::new();
        while let Ok(block) = next_block(subnet, &taken, &[], &[vip]) {
            assert!(!block.contains(&vip), "{block} holds the VIP {vip}");
            taken.push(block);
        }
        assert_eq!(taken.len(), 63);
    }
}
