//! A network's sandbox: namespace `<prefix>-<vni>` holding `br0` (gateway
//! address) and `vxlan0` (the VNI). The vxlan device is created in the node
//! namespace, so that its UDP socket lives there, then moved in.
//!
//! `ensure` checks each piece and only fixes what is missing or wrong, so an
//! agent restarted over a working sandbox changes nothing.

use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use netlink_packet_route::link::{InfoKind, LinkMessage};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVxlan};

use super::{
    error::{OverlayError, HINT_GENERIC},
    netlink::{self, Netlink},
    netns,
    spec::OverlayConfig,
};
use crate::model::Network;

pub const BRIDGE: &str = "br0";
pub const VXLAN: &str = "vxlan0";
/// IANA's VXLAN port.
pub const VXLAN_PORT: u16 = netagent_common::VXLAN_PORT;
/// What VXLAN over IPv4 costs (50 bytes, see the common crate).
pub const VXLAN_OVERHEAD: u32 = netagent_common::VXLAN_OVERHEAD as u32;
const NODE: &str = "the node namespace";

/// The sandbox namespace's name.
pub fn name(prefix: &str, vni: u32) -> String {
    format!("{prefix}-{vni}")
}

/// The VNI of sandbox `netns_name` if it is one of ours.
pub fn vni_of(prefix: &str, netns_name: &str) -> Option<u32> {
    let rest = netns_name.strip_prefix(prefix)?.strip_prefix('-')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// The mark an agent whose data directory is `data_dir` puts on its
/// sandboxes: two agents on one host never share a data directory.
pub fn owner_mark(data_dir: &Path) -> String {
    format!("{OWNER_MARK_PREFIX}{}", data_dir.display())
}

/// What every owner mark starts with.
const OWNER_MARK_PREFIX: &str = "netagent:";

/// Who made a sandbox, from the alias of its br0.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    This,
    Other(String),
    /// No br0 or no mark on it: half-built by this agent, or built by a
    /// version that did not mark; adopted and marked.
    Unmarked,
}

fn owner_of(bridge: Option<&LinkMessage>, ours: &str) -> Owner {
    match bridge.and_then(netlink::link_alias) {
        Some(mark) if mark == ours => Owner::This,
        Some(mark) if mark.starts_with(OWNER_MARK_PREFIX) => Owner::Other(mark.to_owned()),
        _ => Owner::Unmarked,
    }
}

/// Fails when the sandbox behind `netlink` carries another agent's mark.
async fn check_owner(
    config: &OverlayConfig,
    netlink: &Netlink,
    name: &str,
) -> Result<(), OverlayError> {
    let bridge = netlink.link(BRIDGE).await.map_err(OverlayError::netlink(
        "looking up br0",
        name,
        HINT_GENERIC,
    ))?;
    match owner_of(bridge.as_ref(), &config.owner) {
        Owner::Other(owner) => Err(OverlayError::ForeignSandbox {
            sandbox: name.to_owned(),
            owner,
        }),
        Owner::This | Owner::Unmarked => Ok(()),
    }
}

/// Fails when the sandbox of `network` exists and carries another agent's
/// mark; a sandbox that does not exist is this agent's to make.
pub async fn check_ours(config: &OverlayConfig, network: &Network) -> Result<(), OverlayError> {
    let name = name(&config.netns_prefix, network.vni);
    let path = netns::named_path(&name);
    if !netns::is_namespace(&path) {
        return Ok(());
    }
    let netlink = Netlink::connect(Some(&path))
        .await
        .map_err(OverlayError::netlink("connecting", &name, HINT_GENERIC))?;
    check_owner(config, &netlink, &name).await
}

/// VNIs of this agent's sandboxes, sorted: those with its prefix, less the
/// ones another agent marked.
pub async fn list(config: &OverlayConfig) -> Vec<u32> {
    let mut vnis = Vec::new();
    for name in netns::list_named() {
        let path = netns::named_path(&name);
        let Some(vni) = vni_of(&config.netns_prefix, &name) else {
            continue;
        };
        if !netns::is_namespace(&path) {
            continue;
        }
        let ours = match Netlink::connect(Some(&path)).await {
            Ok(netlink) => check_owner(config, &netlink, &name).await.is_ok(),
            Err(_) => true,
        };
        if ours {
            vnis.push(vni);
        } else {
            tracing::debug!(sandbox = %name, "another agent's sandbox: left alone");
        }
    }
    vnis.sort_unstable();
    vnis
}

/// MTU of the overlay links: the network's, or the underlay's minus the
/// VXLAN overhead.
pub fn overlay_mtu(network_mtu: Option<u32>, underlay_mtu: u32) -> u32 {
    network_mtu.unwrap_or_else(|| underlay_mtu.saturating_sub(VXLAN_OVERHEAD))
}

/// The vxlan device's name in the node namespace, before it moves into the
/// sandbox. One per VNI (a VNI has one sandbox per node), so that a device a
/// crash left behind is found and removed; fits in IFNAMSIZ (VNI < 2^24).
pub fn temp_vxlan_name(vni: u32) -> String {
    format!("nvx-{vni}")
}

/// An open sandbox: its path and a netlink connection inside it.
pub struct Opened {
    pub name: String,
    pub path: PathBuf,
    pub netlink: Netlink,
}

/// Opens the existing sandbox of `network`.
pub async fn open(config: &OverlayConfig, network: &Network) -> Result<Opened, OverlayError> {
    let name = name(&config.netns_prefix, network.vni);
    let path = netns::named_path(&name);
    if !netns::is_namespace(&path) {
        return Err(OverlayError::NoSandbox {
            name,
            vni: network.vni,
        });
    }
    let netlink = Netlink::connect(Some(&path))
        .await
        .map_err(OverlayError::netlink("connecting", &name, HINT_GENERIC))?;
    check_owner(config, &netlink, &name).await?;
    Ok(Opened {
        name,
        path,
        netlink,
    })
}

/// Index of link `link` in the sandbox, or `LinkMissing`.
pub async fn link_index(opened: &Opened, link: &'static str) -> Result<u32, OverlayError> {
    opened
        .netlink
        .link(link)
        .await
        .map_err(OverlayError::netlink(
            format!("looking up {link}"),
            &opened.name,
            HINT_GENERIC,
        ))?
        .map(|l| l.header.index)
        .ok_or_else(|| OverlayError::LinkMissing {
            link,
            sandbox: opened.name.clone(),
        })
}

/// Creates or adopts the sandbox of `network`.
pub async fn ensure(config: &OverlayConfig, network: &Network) -> Result<(), OverlayError> {
    let name = name(&config.netns_prefix, network.vni);
    let path = netns::named_path(&name);
    if path.exists() && !netns::is_namespace(&path) {
        // A file without a namespace mounted on it: a crash between creating
        // the file and mounting. Nothing to adopt.
        tracing::warn!(sandbox = %name, "removing a stale namespace file");
        netns::delete_named(&name).map_err(|source| OverlayError::Netns {
            cause: source,
            hint: "remove the stale file under /run/netns (`ip netns del NAME`)",
        })?;
    }
    let created = !path.exists();
    if created {
        netns::create_named(&name)
            .await
            .map_err(|source| OverlayError::Netns {
                cause: source,
                hint: "check that the agent runs as root and /run/netns is writable",
            })?;
        tracing::info!(sandbox = %name, vni = network.vni, "created sandbox namespace");
    }
    let result = setup(config, network, &name, &path).await;
    if let Err(error) = &result {
        if created {
            // Leave nothing half-built behind that we made in this call.
            tracing::warn!(sandbox = %name, %error, "sandbox setup failed; removing it");
            if let Err(cleanup) = remove(config, network).await {
                tracing::warn!(sandbox = %name, error = %cleanup, "cleanup failed");
            }
        }
    }
    result
}

async fn setup(
    config: &OverlayConfig,
    network: &Network,
    name: &str,
    path: &Path,
) -> Result<(), OverlayError> {
    let node_ns = config.node_netns.as_deref();
    let node = Netlink::connect(node_ns)
        .await
        .map_err(OverlayError::netlink("connecting", NODE, HINT_GENERIC))?;
    let underlay = node
        .link(&config.underlay)
        .await
        .map_err(OverlayError::netlink(
            format!("looking up {}", config.underlay),
            NODE,
            HINT_GENERIC,
        ))?
        .ok_or_else(|| OverlayError::UnderlayMissing {
            name: config.underlay.clone(),
        })?;
    let mtu = overlay_mtu(network.mtu, netlink::link_mtu(&underlay).unwrap_or(1500));
    let sandbox = Netlink::connect(Some(path))
        .await
        .map_err(OverlayError::netlink("connecting", name, HINT_GENERIC))?;
    let at = |what: String| OverlayError::netlink(what, name, HINT_GENERIC);

    // br0
    let bridge = match sandbox
        .link(BRIDGE)
        .await
        .map_err(at("looking up br0".into()))?
    {
        Some(link) => link,
        None => {
            sandbox
                .add_link(LinkBridge::new(BRIDGE).mtu(mtu).build())
                .await
                .map_err(at("creating br0".into()))?;
            sandbox
                .link(BRIDGE)
                .await
                .map_err(at("looking up br0".into()))?
                .ok_or_else(|| OverlayError::LinkMissing {
                    link: BRIDGE,
                    sandbox: name.to_owned(),
                })?
        }
    };
    let br = bridge.header.index;
    match owner_of(Some(&bridge), &config.owner) {
        Owner::This => {}
        Owner::Other(owner) => {
            return Err(OverlayError::ForeignSandbox {
                sandbox: name.to_owned(),
                owner,
            })
        }
        Owner::Unmarked => {
            sandbox
                .set_link(
                    LinkUnspec::new_with_index(br)
                        .alias(config.owner.clone())
                        .build(),
                )
                .await
                .map_err(at("marking br0 with this agent's name".into()))?;
        }
    }
    fix_mtu(&sandbox, &bridge, mtu, name).await?;
    sandbox
        .ensure_ipv4_addr(br, network.gateway, network.subnet.prefix_len())
        .await
        .map_err(at(format!("adding {} to br0", network.gateway)))?;
    if !netlink::link_is_up(&bridge) {
        sandbox.up(br).await.map_err(at("bringing br0 up".into()))?;
    }

    // vxlan0
    let mut vxlan = sandbox
        .link(VXLAN)
        .await
        .map_err(at("looking up vxlan0".into()))?;
    if let Some(link) = &vxlan {
        let right = netlink::link_kind(link) == Some(&InfoKind::Vxlan)
            && netlink::vxlan_vni(link) == Some(network.vni);
        if !right {
            tracing::warn!(sandbox = %name, "vxlan0 is not a vxlan device of VNI {}; replacing it", network.vni);
            sandbox
                .del_link(link.header.index)
                .await
                .map_err(at("deleting a wrong vxlan0".into()))?;
            vxlan = None;
        }
    }
    let vxlan = match vxlan {
        Some(link) => link,
        None => {
            create_vxlan(
                config,
                network,
                &node,
                underlay.header.index,
                mtu,
                &sandbox,
                name,
                path,
            )
            .await?
        }
    };
    let vx = vxlan.header.index;
    fix_mtu(&sandbox, &vxlan, mtu, name).await?;
    if netlink::link_controller(&vxlan) != Some(br) {
        sandbox
            .set_link(LinkUnspec::new_with_index(vx).controller(br).build())
            .await
            .map_err(at("enslaving vxlan0 to br0".into()))?;
    }
    // Remote MACs come from gossip as static bridge entries: the bridge must
    // never learn one from a frame (a stale learned entry would outlive the
    // endpoint).
    sandbox
        .set_port_learning(vx, false)
        .await
        .map_err(at("turning MAC learning off on vxlan0".into()))?;
    if !netlink::link_is_up(&vxlan) {
        sandbox
            .up(vx)
            .await
            .map_err(at("bringing vxlan0 up".into()))?;
    }
    skip_bridge_netfilter(path, name).await;
    Ok(())
}

/// The kernel's br_netfilter switches, per namespace (present only when
/// br_netfilter is loaded).
const BRIDGE_NF_CALL: [&str; 3] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    "/proc/sys/net/bridge/bridge-nf-call-arptables",
];

/// Turns br_netfilter off in the sandbox: nothing in it filters bridged
/// frames, and with it on every frame br0 forwards pays IP netfilter hooks,
/// a route lookup and an skb extension (measured: a tenth of the CPU of the
/// published-port path to remote tasks, which crosses four bridges).
/// Nothing to do where br_netfilter is not loaded; a failure only costs
/// speed, so it is logged, not returned.
async fn skip_bridge_netfilter(path: &Path, name: &str) {
    let result = netns::run_in(Some(path), || {
        for file in BRIDGE_NF_CALL {
            // /proc/sys/net follows the calling thread's namespace.
            match std::fs::read_to_string(file) {
                Ok(value) if value.trim() != "0" => std::fs::write(file, "0")?,
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    })
    .await;
    if let Err(error) = result {
        tracing::warn!(sandbox = %name, %error, "cannot turn br_netfilter off in the sandbox");
    }
}

async fn fix_mtu(
    sandbox: &Netlink,
    link: &LinkMessage,
    mtu: u32,
    name: &str,
) -> Result<(), OverlayError> {
    if netlink::link_mtu(link) == Some(mtu) {
        return Ok(());
    }
    let ifname = netlink::link_name(link).unwrap_or("?").to_owned();
    sandbox
        .set_link(
            LinkUnspec::new_with_index(link.header.index)
                .mtu(mtu)
                .build(),
        )
        .await
        .map_err(OverlayError::netlink(
            format!("setting the MTU of {ifname} to {mtu}"),
            name,
            HINT_GENERIC,
        ))
}

/// Creates the vxlan device in the node namespace under its temporary name,
/// moves it into the sandbox and renames it `vxlan0`.
#[allow(clippy::too_many_arguments)]
async fn create_vxlan(
    config: &OverlayConfig,
    network: &Network,
    node: &Netlink,
    underlay: u32,
    mtu: u32,
    sandbox: &Netlink,
    name: &str,
    path: &Path,
) -> Result<LinkMessage, OverlayError> {
    let temp = temp_vxlan_name(network.vni);
    let at_node = |what: String| OverlayError::netlink(what, NODE, HINT_GENERIC);
    let at_sandbox = |what: String| OverlayError::netlink(what, name, HINT_GENERIC);
    // A crash between creating and renaming leaves the temporary device in
    // one of the two namespaces; it holds the VNI, so it goes first.
    for (netlink, label) in [(node, NODE), (sandbox, name)] {
        if let Some(stale) = netlink.link(&temp).await.map_err(OverlayError::netlink(
            format!("looking up {temp}"),
            label,
            HINT_GENERIC,
        ))? {
            tracing::warn!(link = %temp, netns = %label, "removing a vxlan device left by a crash");
            netlink
                .del_link(stale.header.index)
                .await
                .map_err(OverlayError::netlink(
                    format!("deleting {temp}"),
                    label,
                    HINT_GENERIC,
                ))?;
        }
    }
    node.add_link(
        LinkVxlan::new(&temp, network.vni)
            .dev(underlay)
            .port(VXLAN_PORT)
            .local(config.vtep)
            .learning(false)
            .proxy(true)
            .mtu(mtu)
            .build(),
    )
    .await
    .map_err(OverlayError::netlink(
        format!("creating vxlan {temp} (VNI {})", network.vni),
        NODE,
        "another vxlan device may hold this VNI and port in the node namespace (see `ip -d link show type vxlan`); delete it with `ip link del DEV`",
    ))?;
    let moved = move_into(node, &temp, path).await;
    if let Err(error) = moved {
        if let Ok(Some(link)) = node.link(&temp).await {
            let _ = node.del_link(link.header.index).await;
        }
        return Err(at_node(format!("moving {temp} into {name}"))(error));
    }
    let link = sandbox
        .link(&temp)
        .await
        .map_err(at_sandbox(format!("looking up {temp}")))?
        .ok_or_else(|| OverlayError::LinkMissing {
            link: VXLAN,
            sandbox: name.to_owned(),
        })?;
    sandbox
        .set_link(
            LinkUnspec::new_with_index(link.header.index)
                .name(VXLAN)
                .build(),
        )
        .await
        .map_err(at_sandbox(format!("renaming {temp} to vxlan0")))?;
    tracing::info!(sandbox = %name, vni = network.vni, "created vxlan0");
    sandbox
        .link(VXLAN)
        .await
        .map_err(at_sandbox("looking up vxlan0".into()))?
        .ok_or_else(|| OverlayError::LinkMissing {
            link: VXLAN,
            sandbox: name.to_owned(),
        })
}

async fn move_into(node: &Netlink, link: &str, target: &Path) -> Result<(), netlink::NetlinkError> {
    let index = node
        .link(link)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| netlink::NetlinkError::Protocol(format!("{link} vanished")))?;
    let fd = netns::open(target)?;
    node.set_link(
        LinkUnspec::new_with_index(index)
            .setns_by_fd(fd.as_raw_fd())
            .build(),
    )
    .await
}

/// Removes the sandbox: vxlan0 first (so that its VNI and UDP port are free
/// at once, not when the kernel gets round to destroying the namespace),
/// then br0, then the namespace. Carries on past errors and reports them all.
pub async fn remove(config: &OverlayConfig, network: &Network) -> Result<(), OverlayError> {
    let name = name(&config.netns_prefix, network.vni);
    let path = netns::named_path(&name);
    let temp = temp_vxlan_name(network.vni);
    let mut errors = Vec::new();
    if netns::is_namespace(&path) {
        match Netlink::connect(Some(&path)).await {
            Ok(sandbox) => {
                // Never another agent's, whatever its name.
                check_owner(config, &sandbox, &name).await?;
                for link in [VXLAN, temp.as_str(), BRIDGE] {
                    if let Err(error) = sandbox.del_link_named(link).await {
                        errors.push(format!("deleting {link}: {error}"));
                    }
                }
            }
            Err(error) => errors.push(format!("connecting to {name}: {error}")),
        }
    }
    // A device a crash left in the node namespace holds the VNI too.
    match Netlink::connect(config.node_netns.as_deref()).await {
        Ok(node) => {
            if let Err(error) = node.del_link_named(&temp).await {
                errors.push(format!("deleting {temp} in the node namespace: {error}"));
            }
        }
        Err(error) => errors.push(format!("connecting to the node namespace: {error}")),
    }
    if let Err(error) = netns::delete_named(&name) {
        errors.push(error.to_string());
    }
    if errors.is_empty() {
        tracing::info!(sandbox = %name, "removed sandbox");
        Ok(())
    } else {
        Err(OverlayError::Cleanup {
            sandbox: name,
            errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_vnis_round_trip() {
        assert_eq!(name("nl1a2b3c-n1", 4096), "nl1a2b3c-n1-4096");
        assert_eq!(vni_of("nl1a2b3c-n1", "nl1a2b3c-n1-4096"), Some(4096));
        assert_eq!(vni_of("nl1a2b3c-n1", "nl1a2b3c-n1-c1"), None);
        assert_eq!(vni_of("nl1a2b3c-n1", "nl1a2b3c-n1-"), None);
        assert_eq!(vni_of("nl1a2b3c-n1", "nl1a2b3c-n10-4096"), None);
        assert_eq!(vni_of("netagent", "netagent-+5"), None);
    }

    #[test]
    fn a_sandbox_is_ours_only_with_our_mark() {
        let ours = owner_mark(Path::new("/var/lib/netagent"));
        assert_eq!(ours, "netagent:/var/lib/netagent");
        let marked = |alias: &str| {
            let mut link = LinkMessage::default();
            link.attributes
                .push(netlink_packet_route::link::LinkAttribute::IfAlias(
                    alias.into(),
                ));
            link
        };
        assert_eq!(owner_of(Some(&marked(&ours)), &ours), Owner::This);
        assert_eq!(
            owner_of(Some(&marked("netagent:/srv/other")), &ours),
            Owner::Other("netagent:/srv/other".into())
        );
        assert_eq!(
            owner_of(Some(&marked("set by hand")), &ours),
            Owner::Unmarked
        );
        assert_eq!(
            owner_of(Some(&LinkMessage::default()), &ours),
            Owner::Unmarked
        );
        assert_eq!(owner_of(None, &ours), Owner::Unmarked);
    }

    #[test]
    fn temporary_vxlan_names_fit_ifnamsiz() {
        assert_eq!(temp_vxlan_name(4096), "nvx-4096");
        assert!(temp_vxlan_name((1 << 24) - 1).len() < libc::IF_NAMESIZE);
    }

    #[test]
    fn mtu_is_the_networks_or_underlay_minus_overhead() {
        assert_eq!(overlay_mtu(None, 1500), 1450);
        assert_eq!(overlay_mtu(Some(1400), 1500), 1400);
        assert_eq!(overlay_mtu(None, 9000), 8950);
        assert_eq!(overlay_mtu(None, 20), 0);
    }
}
