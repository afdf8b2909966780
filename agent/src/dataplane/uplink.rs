//! A network's way out: a veth pair between its sandbox (`gw0`) and the node
//! namespace (`nagw<vni>`), so that containers reach the world through their
//! node (masqueraded there, see `masquerade`).
//!
//! Addressing allocates nothing cluster-wide: every uplink carries the same
//! link-local pair, 169.254.0.1/32 on the node side and 169.254.0.2/32 on
//! the sandbox side, with on-link routes:
//! - sandbox: `default via 169.254.0.1 dev gw0 onlink`, ip_forward on;
//! - node: `<subnet> via 169.254.0.2 dev nagw<vni> onlink`, ip_forward on.
//!
//! The same address on many node links is fine because nothing routes *to*
//! it: each subnet route names its device. Both sides get a permanent
//! neighbour entry for the other end, so the uplink needs no ARP (and works
//! whatever the node's rp_filter/arp settings are).
//!
//! The pair is created inside the sandbox and `nagw<vni>` is moved to the
//! node namespace; a crash in between leaves `nagw<vni>` in the sandbox,
//! where the next `ensure` finds it.

use std::{net::Ipv4Addr, os::fd::AsRawFd, path::Path};

use netlink_packet_route::link::{InfoKind, LinkMessage};
use rtnetlink::{LinkUnspec, LinkVeth};

use super::{
    error::{OverlayError, HINT_GENERIC},
    netlink::{self, Netlink, NetlinkError},
    netns, sandbox,
    spec::OverlayConfig,
};
use crate::model::Network;

/// The uplink's end in the sandbox.
pub const SANDBOX_LINK: &str = "gw0";
/// Every node-side uplink is `nagw<vni>` (the masquerade and isolation rules
/// match this prefix).
pub const NODE_PREFIX: &str = "nagw";
pub const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
pub const SANDBOX_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);
const NODE: &str = "the node namespace";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// `nagw<vni>`: at most 12 bytes (VNI < 2^24), unique per network.
pub fn node_link_name(vni: u32) -> String {
    format!("{NODE_PREFIX}{vni}")
}

fn is_veth(link: &LinkMessage) -> bool {
    netlink::link_kind(link) == Some(&InfoKind::Veth)
}

/// Creates or adopts the uplink of `network`; fixes only what is missing or
/// wrong.
pub async fn ensure(config: &OverlayConfig, network: &Network) -> Result<(), OverlayError> {
    let opened = sandbox::open(config, network).await?;
    let sb = &opened.netlink;
    let name = opened.name.as_str();
    let node = Netlink::connect(config.node_netns.as_deref())
        .await
        .map_err(OverlayError::netlink("connecting", NODE, HINT_GENERIC))?;
    let node_name = node_link_name(network.vni);
    let at_sb = |what: String| OverlayError::netlink(what, name, HINT_GENERIC);
    let at_node = |what: String| OverlayError::netlink(what, NODE, HINT_GENERIC);

    let (gw, outer) = find_pair(sb, &node, name, &node_name).await?;
    let (gw, outer) = match (gw, outer) {
        (Some(gw), Some(outer)) => (gw, outer),
        _ => create_pair(config, sb, &node, name, &node_name).await?,
    };

    // Addresses and state.
    let (gw_index, outer_index) = (gw.header.index, outer.header.index);
    sb.ensure_ipv4_addr(gw_index, SANDBOX_ADDR, 32)
        .await
        .map_err(at_sb(format!("adding {SANDBOX_ADDR}/32 to {SANDBOX_LINK}")))?;
    node.ensure_ipv4_addr(outer_index, NODE_ADDR, 32)
        .await
        .map_err(at_node(format!("adding {NODE_ADDR}/32 to {node_name}")))?;
    if !netlink::link_is_up(&gw) {
        sb.up(gw_index)
            .await
            .map_err(at_sb(format!("bringing {SANDBOX_LINK} up")))?;
    }
    if !netlink::link_is_up(&outer) {
        node.up(outer_index)
            .await
            .map_err(at_node(format!("bringing {node_name} up")))?;
    }

    // Each side knows the other's MAC: no ARP over the uplink.
    if let Some(mac) = netlink::link_mac(&gw) {
        ensure_neighbour(&node, outer_index, SANDBOX_ADDR, mac)
            .await
            .map_err(at_node(format!(
                "adding neighbour {SANDBOX_ADDR} on {node_name}"
            )))?;
    }
    if let Some(mac) = netlink::link_mac(&outer) {
        ensure_neighbour(sb, gw_index, NODE_ADDR, mac)
            .await
            .map_err(at_sb(format!(
                "adding neighbour {NODE_ADDR} on {SANDBOX_LINK}"
            )))?;
    }

    // Routes.
    ensure_route(sb, Ipv4Addr::UNSPECIFIED, 0, NODE_ADDR, gw_index)
        .await
        .map_err(at_sb(format!("adding the default route via {NODE_ADDR}")))?;
    let subnet = network.subnet.trunc();
    ensure_route(&node, subnet.network(), subnet.prefix_len(), SANDBOX_ADDR, outer_index)
        .await
        .map_err(OverlayError::netlink(
            format!("adding the route to {subnet} via {node_name}"),
            NODE,
            "another route to this subnet may exist in the node namespace (see `ip route`); remove it, or create the network with a --subnet the node does not use",
        ))?;

    // Forwarding on both sides.
    ensure_ip_forward(Some(&opened.path), name).await?;
    ensure_ip_forward(config.node_netns.as_deref(), NODE).await?;
    Ok(())
}

/// The two ends if both exist and belong together; otherwise removes what
/// is there (a crash's leftovers, a wrong device) and returns `None`s, so
/// the caller makes a new pair.
async fn find_pair(
    sb: &Netlink,
    node: &Netlink,
    name: &str,
    node_name: &str,
) -> Result<(Option<LinkMessage>, Option<LinkMessage>), OverlayError> {
    let at_sb = |what: String| OverlayError::netlink(what, name, HINT_GENERIC);
    let at_node = |what: String| OverlayError::netlink(what, NODE, HINT_GENERIC);
    let gw = sb
        .link(SANDBOX_LINK)
        .await
        .map_err(at_sb(format!("looking up {SANDBOX_LINK}")))?;
    let outer = node
        .link(node_name)
        .await
        .map_err(at_node(format!("looking up {node_name}")))?;
    let stranded = sb
        .link(node_name)
        .await
        .map_err(at_sb(format!("looking up {node_name}")))?;
    if let (Some(gw), Some(outer), None) = (&gw, &outer, &stranded) {
        if is_veth(gw) && is_veth(outer) && netlink::link_peer_index(gw) == Some(outer.header.index)
        {
            return Ok((Some(gw.clone()), Some(outer.clone())));
        }
    }
    // Anything else is rebuilt from nothing.
    for (netlink, link, label) in [(sb, &gw, name), (sb, &stranded, name), (node, &outer, NODE)] {
        if let Some(link) = link {
            let ifname = netlink::link_name(link).unwrap_or("?").to_owned();
            tracing::warn!(link = %ifname, netns = %label, "removing an incomplete or wrong uplink end");
            netlink
                .del_link(link.header.index)
                .await
                .map_err(OverlayError::netlink(
                    format!("deleting {ifname}"),
                    label,
                    HINT_GENERIC,
                ))?;
        }
    }
    Ok((None, None))
}

/// Makes the pair in the sandbox and moves the node end out.
async fn create_pair(
    config: &OverlayConfig,
    sb: &Netlink,
    node: &Netlink,
    name: &str,
    node_name: &str,
) -> Result<(LinkMessage, LinkMessage), OverlayError> {
    let at_sb = |what: String| OverlayError::netlink(what, name, HINT_GENERIC);
    let at_node = |what: String| OverlayError::netlink(what, NODE, HINT_GENERIC);
    sb.add_link(LinkVeth::new(SANDBOX_LINK, node_name).build())
        .await
        .map_err(at_sb(format!("creating veth {SANDBOX_LINK}/{node_name}")))?;
    let moved = move_out(sb, node_name, config.node_netns.as_deref()).await;
    if let Err(error) = moved {
        if let Ok(Some(link)) = sb.link(SANDBOX_LINK).await {
            let _ = sb.del_link(link.header.index).await;
        }
        return Err(at_sb(format!("moving {node_name} to the node namespace"))(
            error,
        ));
    }
    let gw = sb
        .link(SANDBOX_LINK)
        .await
        .map_err(at_sb(format!("looking up {SANDBOX_LINK}")))?
        .ok_or_else(|| OverlayError::LinkMissing {
            link: SANDBOX_LINK,
            sandbox: name.to_owned(),
        })?;
    let outer = node
        .link(node_name)
        .await
        .map_err(at_node(format!("looking up {node_name}")))?
        .ok_or_else(|| OverlayError::LinkMissing {
            link: "the uplink's node end",
            sandbox: name.to_owned(),
        })?;
    tracing::info!(sandbox = %name, link = %node_name, "created uplink");
    Ok((gw, outer))
}

/// Moves `link` from the sandbox to the node namespace (`None`: the agent's).
async fn move_out(sb: &Netlink, link: &str, node_netns: Option<&Path>) -> Result<(), NetlinkError> {
    let index = sb
        .link(link)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| NetlinkError::Protocol(format!("{link} vanished")))?;
    let fd = match node_netns {
        Some(path) => netns::open(path)?,
        None => netns::open(Path::new("/proc/self/ns/net"))?,
    };
    sb.set_link(
        LinkUnspec::new_with_index(index)
            .setns_by_fd(fd.as_raw_fd())
            .build(),
    )
    .await
}

async fn ensure_neighbour(
    netlink: &Netlink,
    index: u32,
    ip: Ipv4Addr,
    mac: crate::model::Mac,
) -> Result<(), NetlinkError> {
    if netlink
        .permanent_neighbours(index)
        .await?
        .contains(&(ip, mac))
    {
        return Ok(());
    }
    netlink.set_neighbour(index, ip, mac).await
}

async fn ensure_route(
    netlink: &Netlink,
    destination: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
    oif: u32,
) -> Result<(), NetlinkError> {
    if netlink.ipv4_route(destination, prefix_len).await? == Some((Some(gateway), Some(oif), true))
    {
        return Ok(());
    }
    netlink
        .replace_onlink_route(destination, prefix_len, gateway, oif)
        .await
}

/// Turns IPv4 forwarding on in `netns` unless it is on already. Forwarding is
/// left on when the uplink goes: other things on the node may rely on it.
async fn ensure_ip_forward(netns: Option<&Path>, label: &str) -> Result<(), OverlayError> {
    let result = netns::run_in(netns, || {
        // /proc/sys/net follows the calling thread's namespace.
        let on = std::fs::read_to_string(IP_FORWARD)?.trim() == "1";
        if !on {
            std::fs::write(IP_FORWARD, "1")?;
        }
        Ok(!on)
    })
    .await;
    match result {
        Ok(true) => {
            tracing::info!(netns = %label, "turned IPv4 forwarding on");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(source) => Err(OverlayError::Sysctl {
            path: IP_FORWARD,
            netns: label.to_owned(),
            cause: source,
        }),
    }
}

/// Deletes the uplink of `network` (its node end: the pair goes with it;
/// then whatever a crash left). Records failures in `errors` and carries on.
pub async fn remove(config: &OverlayConfig, network: &Network, errors: &mut Vec<String>) {
    let node_name = node_link_name(network.vni);
    match Netlink::connect(config.node_netns.as_deref()).await {
        Ok(node) => {
            if let Err(error) = node.del_link_named(&node_name).await {
                errors.push(format!(
                    "deleting {node_name} in the node namespace: {error}"
                ));
            }
        }
        Err(error) => errors.push(format!("connecting to the node namespace: {error}")),
    }
    let name = sandbox::name(&config.netns_prefix, network.vni);
    let path = netns::named_path(&name);
    if !netns::is_namespace(&path) {
        return;
    }
    match Netlink::connect(Some(&path)).await {
        Ok(sb) => {
            for link in [SANDBOX_LINK, node_name.as_str()] {
                if let Err(error) = sb.del_link_named(link).await {
                    errors.push(format!("deleting {link} in {name}: {error}"));
                }
            }
        }
        Err(error) => errors.push(format!("connecting to {name}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_link_names_fit_ifnamsiz_and_share_the_prefix() {
        assert_eq!(node_link_name(4096), "nagw4096");
        assert!(node_link_name((1 << 24) - 1).len() < libc::IF_NAMESIZE);
        assert!(node_link_name(7).starts_with(NODE_PREFIX));
    }
}
