//! The way back for published-port flows whose task runs on another node.
//!
//! `ingress_in` (eBPF, underlay) DNATs a published port to the task and
//! marks the flow (`INGRESS_SNAT_MARK`) when the task is remote. Here, per
//! network, with A = this node's ingress address on it (`ipam::ingress_address`):
//!
//! - node namespace, the agent's nf_tables table, chain `postrouting`:
//!   `oifname "nagw<vni>" meta mark 0x4e410001 counter snat to A`
//!   (comment `netagent ingress vni <vni> snat <A>`): the task sees A as the
//!   client, so its replies come back over the overlay to this node, where
//!   the kernel's conntrack undoes the SNAT;
//! - sandbox: `A/32 via 169.254.0.1 dev gw0 onlink`, and br0 takes A's MAC
//!   (`02:42:<A>`, which other nodes send A's frames to) as its own, so that
//!   a reply arriving from vxlan0 is for the bridge itself: it goes up to the
//!   sandbox's IP stack (a frame for any other MAC would be dropped there as
//!   "other host") and is forwarded to the node namespace. A is not an
//!   address of the sandbox. Setting the MAC also pins it (a bridge otherwise
//!   takes its lowest port's MAC, which changes as ports come and go);
//!   `arp_notify` is turned on first so that local containers learn the new
//!   gateway MAC at once from the gratuitous ARP the change sends.
//!
//! Other nodes learn A like any endpoint (gossip, then FDB + neighbour).

use std::{net::Ipv4Addr, path::Path};

use netagent_common::INGRESS_SNAT_MARK;
use rtnetlink::LinkUnspec;

use super::{
    masquerade::{self, POSTROUTING},
    netlink::{self, Netlink},
    netns,
    nftables::{Change, CmpOp, Expr, MetaKey, Rule},
    overlay::{OverlayConfig, OverlayError, HINT_GENERIC},
    sandbox, uplink,
};
use crate::model::{Mac, Network};

fn tag(vni: u32) -> String {
    format!("netagent ingress vni {vni} ")
}

fn comment(vni: u32, addr: Ipv4Addr) -> String {
    format!("{}snat {addr}", tag(vni))
}

/// `oifname "nagw<vni>" meta mark M counter snat to ADDR`.
fn snat_exprs(vni: u32, addr: Ipv4Addr) -> Vec<Expr> {
    // A NUL-terminated name: an exact match, not a prefix.
    let mut oif = uplink::node_link_name(vni).into_bytes();
    oif.push(0);
    let mut exprs = vec![
        Expr::meta(MetaKey::OifName),
        Expr::cmp(CmpOp::Eq, &oif),
        Expr::meta(MetaKey::Mark),
        Expr::cmp(CmpOp::Eq, &INGRESS_SNAT_MARK.to_ne_bytes()),
        Expr::counter(),
    ];
    exprs.extend(Expr::snat(addr));
    exprs
}

/// What makes the rule of `vni` exactly one rule SNATing to `addr` (or none
/// when `addr` is `None`).
fn plan(vni: u32, addr: Option<Ipv4Addr>, rules: &[Rule]) -> Vec<Change> {
    let wanted = addr.map(|addr| comment(vni, addr));
    let tag = tag(vni);
    let mut present = false;
    let mut changes = Vec::new();
    for rule in rules {
        let Some(c) = rule.comment.as_deref() else {
            continue;
        };
        if Some(c) == wanted.as_deref() && rule.chain == POSTROUTING.name && !present {
            present = true;
        } else if c.starts_with(&tag) {
            changes.push(Change::DeleteRule {
                chain: rule.chain.clone(),
                handle: rule.handle,
            });
        }
    }
    if let (Some(addr), Some(comment), false) = (addr, wanted, present) {
        changes.push(Change::AddRule {
            chain: POSTROUTING.name,
            exprs: snat_exprs(vni, addr),
            comment,
        });
    }
    changes
}

/// Sets the SNAT rule of `network` to `addr` (`None`: removes it). Needs the
/// table and chain the network's masquerade created; a missing table with
/// nothing to remove is fine.
async fn set_rule(
    config: &OverlayConfig,
    network: &Network,
    addr: Option<Ipv4Addr>,
) -> Result<(), OverlayError> {
    let vni = network.vni;
    masquerade::in_node(config, move |nft| {
        let table = nft.table().to_owned();
        let exists = nft
            .table_exists()
            .map_err(masquerade::error(format!("looking up table {table}")))?;
        if !exists {
            return match addr {
                None => Ok(()),
                Some(_) => Err(OverlayError::Config(format!(
                    "table {table} is missing: the uplink of VNI {vni} is not set up yet"
                ))),
            };
        }
        let rules = nft
            .rules()
            .map_err(masquerade::error(format!("listing the rules of {table}")))?;
        let changes = plan(vni, addr, &rules);
        if changes.is_empty() {
            return Ok(());
        }
        nft.commit(&changes).map_err(masquerade::error(format!(
            "setting the published-port SNAT of VNI {vni} in table {table}"
        )))?;
        tracing::info!(vni, ?addr, "published-port SNAT programmed");
        Ok(())
    })
    .await
}

/// Sets up the return path of `network` through this node's ingress
/// address `addr`. Idempotent.
pub async fn ensure(
    config: &OverlayConfig,
    network: &Network,
    addr: Ipv4Addr,
) -> Result<(), OverlayError> {
    let opened = sandbox::open(config, network).await?;
    let nl = &opened.netlink;
    let name = opened.name.as_str();
    let at_sb = |what: String| OverlayError::netlink(what, name, HINT_GENERIC);
    let gw = link_index(nl, name, uplink::SANDBOX_LINK).await?;
    let br = link_index(nl, name, sandbox::BRIDGE).await?;
    nl.replace_onlink_route(addr, 32, uplink::NODE_ADDR, gw)
        .await
        .map_err(at_sb(format!(
            "routing {addr}/32 to {}",
            uplink::SANDBOX_LINK
        )))?;
    let mac = Mac::from_ipv4(addr);
    let br_link = nl
        .link(sandbox::BRIDGE)
        .await
        .map_err(at_sb(format!("looking up {}", sandbox::BRIDGE)))?;
    if br_link.as_ref().and_then(netlink::link_mac) != Some(mac) {
        notify_on_address_change(&opened.path, name).await?;
        nl.set_link(
            LinkUnspec::new_with_index(br)
                .address(mac.0.to_vec())
                .build(),
        )
        .await
        .map_err(at_sb(format!("giving br0 the MAC {mac}")))?;
        tracing::info!(sandbox = name, %mac, "br0 takes the ingress address's MAC");
    }
    set_rule(config, network, Some(addr)).await
}

const BR0_ARP_NOTIFY: &str = "/proc/sys/net/ipv4/conf/br0/arp_notify";

/// `net.ipv4.conf.br0.arp_notify=1` in the sandbox: a MAC change of br0
/// then sends a gratuitous ARP for the gateway address.
async fn notify_on_address_change(sandbox: &Path, label: &str) -> Result<(), OverlayError> {
    netns::run_in(Some(sandbox), || {
        // /proc/sys/net follows the calling thread's namespace.
        std::fs::write(BR0_ARP_NOTIFY, "1")?;
        Ok(())
    })
    .await
    .map_err(|source| OverlayError::Sysctl {
        path: BR0_ARP_NOTIFY,
        netns: label.to_owned(),
        source,
    })
}

async fn link_index(nl: &Netlink, sandbox: &str, link: &str) -> Result<u32, OverlayError> {
    nl.link(link)
        .await
        .map_err(OverlayError::netlink(
            format!("looking up {link}"),
            sandbox,
            HINT_GENERIC,
        ))?
        .map(|l| l.header.index)
        .ok_or_else(|| OverlayError::Config(format!("{link} is missing in {sandbox}")))
}

/// Removes the SNAT rule of `network` (the sandbox's route and FDB entry go
/// with the sandbox or are replaced by the next `ensure`).
pub async fn remove(config: &OverlayConfig, network: &Network) -> Result<(), OverlayError> {
    set_rule(config, network, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(handle: u64, comment: &str) -> Rule {
        Rule {
            chain: "postrouting".into(),
            handle,
            comment: Some(comment.into()),
        }
    }

    #[test]
    fn one_rule_per_network_replaced_when_the_address_changes() {
        let a = Ipv4Addr::new(10, 10, 0, 31);
        let changes = plan(4096, Some(a), &[]);
        assert!(
            matches!(&changes[..], [Change::AddRule { comment, .. }] if comment == "netagent ingress vni 4096 snat 10.10.0.31")
        );
        let present = [rule(7, "netagent ingress vni 4096 snat 10.10.0.31")];
        assert!(plan(4096, Some(a), &present).is_empty());
        let stale = [
            rule(7, "netagent ingress vni 4096 snat 10.10.0.15"),
            rule(8, "netagent vni 4096 masquerade 10.10.0.0/24"),
            rule(9, "netagent ingress vni 4097 snat 10.20.0.15"),
        ];
        let changes = plan(4096, Some(a), &stale);
        assert_eq!(changes.len(), 2);
        assert!(matches!(&changes[0], Change::DeleteRule { handle: 7, .. }));
        let changes = plan(4096, None, &stale);
        assert_eq!(changes.len(), 1);
    }
}
