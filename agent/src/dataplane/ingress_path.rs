//! The way back for published-port flows whose task runs on another node.
//!
//! `ingress_in` (eBPF, underlay) DNATs a published port to the task and,
//! when the task is remote, gives the flow this node's ingress address A on
//! the network (`ipam::ingress_address`) as its source and hands it straight
//! to the sandbox (see `ebpf/programs/src/ingress.rs`; the agent's
//! `ingress` module attaches `ingress_uplink` and writes INGRESS_UPLINKS).
//! Here, in the sandbox: `A/32 via 169.254.0.1 dev gw0 onlink`, and br0
//! takes A's MAC (`02:42:<A>`, which other nodes send A's frames to) as its
//! own, so that a reply arriving from vxlan0 is for the bridge itself: it
//! goes up to the sandbox's IP stack (a frame for any other MAC would be
//! dropped there as "other host") and is forwarded up `nagw<vni>`, where
//! `ingress_uplink` takes it. A is not an address of the sandbox. Setting
//! the MAC also pins it (a bridge otherwise takes its lowest port's MAC,
//! which changes as ports come and go); `arp_notify` is turned on first so
//! that local containers learn the new gateway MAC at once from the
//! gratuitous ARP the change sends. The route also passes `rp_filter` for
//! the translated packets `ingress_in` puts on gw0 (source A).
//!
//! Earlier versions SNATed with an nf_tables rule in the agent's table
//! (comment `netagent ingress vni <vni> snat <A>`): `ensure` and `remove`
//! delete such a rule.
//!
//! Other nodes learn A like any endpoint (gossip, then FDB + neighbour).

use std::{net::Ipv4Addr, path::Path};

use rtnetlink::LinkUnspec;

use super::{
    error::{OverlayError, HINT_GENERIC},
    masquerade::{self, POSTROUTING},
    netlink, netns,
    nftables::{Change, Rule},
    sandbox,
    spec::OverlayConfig,
    uplink,
};
use crate::model::{Mac, Network};

/// The comments of the nf_tables SNAT rules earlier versions used.
fn tag(vni: u32) -> String {
    format!("netagent ingress vni {vni} ")
}

/// What deletes the earlier versions' SNAT rules of `vni`.
fn plan(vni: u32, rules: &[Rule]) -> Vec<Change> {
    let tag = tag(vni);
    rules
        .iter()
        .filter(|rule| rule.chain == POSTROUTING.name)
        .filter(|rule| rule.comment.as_deref().is_some_and(|c| c.starts_with(&tag)))
        .map(|rule| Change::DeleteRule {
            chain: rule.chain.clone(),
            handle: rule.handle,
        })
        .collect()
}

/// Deletes the SNAT rule an earlier version gave `network`, if any. A
/// missing table is fine.
async fn remove_legacy_rule(config: &OverlayConfig, network: &Network) -> Result<(), OverlayError> {
    let vni = network.vni;
    masquerade::in_node(config, move |nft| {
        let table = nft.table().to_owned();
        let exists = nft
            .table_exists()
            .map_err(masquerade::error(format!("looking up table {table}")))?;
        if !exists {
            return Ok(());
        }
        let rules = nft
            .rules()
            .map_err(masquerade::error(format!("listing the rules of {table}")))?;
        let changes = plan(vni, &rules);
        if changes.is_empty() {
            return Ok(());
        }
        nft.commit(&changes).map_err(masquerade::error(format!(
            "removing the nf_tables published-port SNAT of VNI {vni} from table {table}"
        )))?;
        tracing::info!(
            vni,
            "nf_tables published-port SNAT removed (now done in eBPF)"
        );
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
    let gw = sandbox::link_index(&opened, uplink::SANDBOX_LINK).await?;
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
        .map_err(at_sb(format!("looking up {}", sandbox::BRIDGE)))?
        .ok_or_else(|| OverlayError::LinkMissing {
            link: sandbox::BRIDGE,
            sandbox: name.to_owned(),
        })?;
    let br = br_link.header.index;
    if netlink::link_mac(&br_link) != Some(mac) {
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
    remove_legacy_rule(config, network).await
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
        cause: source,
    })
}

/// Removes what `ensure` left in the node namespace (the sandbox's route
/// and br0's MAC go with the sandbox or are replaced by the next `ensure`).
pub async fn remove(config: &OverlayConfig, network: &Network) -> Result<(), OverlayError> {
    remove_legacy_rule(config, network).await
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
    fn every_earlier_snat_rule_of_the_network_goes_and_nothing_else() {
        let rules = [
            rule(7, "netagent ingress vni 4096 snat 10.10.0.15"),
            rule(8, "netagent vni 4096 masquerade 10.10.0.0/24"),
            rule(9, "netagent ingress vni 4097 snat 10.20.0.15"),
            rule(10, "netagent ingress vni 4096 snat 10.10.0.31"),
        ];
        let changes = plan(4096, &rules);
        assert_eq!(changes.len(), 2);
        assert!(matches!(&changes[0], Change::DeleteRule { handle: 7, .. }));
        assert!(matches!(&changes[1], Change::DeleteRule { handle: 10, .. }));
        assert!(plan(4096, &rules[1..3]).is_empty());
    }
}
