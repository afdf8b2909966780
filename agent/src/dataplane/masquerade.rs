//! Masquerade and uplink isolation in the node namespace: one nf_tables
//! table owned by the agent, `ip netagent_<netns prefix>`:
//!
//! ```text
//! table ip netagent_<prefix> {
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr <subnet> oifname != "nagw*" counter masquerade comment "netagent vni <vni> masquerade <subnet>"  # one per network
//!   }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     iifname "nagw*" oifname "nagw*" counter drop comment "netagent isolate uplinks"
//!   }
//! }
//! ```
//!
//! Rules are found again by their comment. `ensure` reads the table first and
//! commits only what is missing or wrong, in one transaction; `remove` deletes
//! the network's rule, and the whole table with the last network's rule.

use std::path::Path;

use super::{
    error::OverlayError,
    netns,
    nftables::{
        Chain, Change, CmpOp, Expr, Hook, MetaKey, Nft, NftError, Rule, Verdict, FAMILY_IP,
    },
    spec::OverlayConfig,
    uplink,
};
use crate::model::Network;

pub(super) const POSTROUTING: Chain = Chain {
    name: "postrouting",
    kind: "nat",
    hook: Hook::PostRouting,
    // NF_IP_PRI_NAT_SRC ("srcnat")
    priority: 100,
};
const FORWARD: Chain = Chain {
    name: "forward",
    kind: "filter",
    hook: Hook::Forward,
    // NF_IP_PRI_FILTER ("filter")
    priority: 0,
};
const ISOLATE_COMMENT: &str = "netagent isolate uplinks";
const NODE: &str = "the node namespace";
const HINT: &str = "check that the agent runs as root and the kernel has nf_tables with NAT and masquerade (nf_tables, nft_nat, nft_masq), then see `nft list ruleset` in the node namespace";

/// The agent's table: `netagent_` + the namespace prefix with every byte
/// outside [A-Za-z0-9_] turned into `_` (a name `nft` can type).
pub fn table_name(netns_prefix: &str) -> String {
    let sanitised: String = netns_prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("netagent_{sanitised}")
}

/// The comment that tags a network's rule; every rule of `vni` starts with
/// `vni_tag(vni)`.
fn vni_tag(vni: u32) -> String {
    format!("netagent vni {vni} ")
}

fn masquerade_comment(network: &Network) -> String {
    format!("{}masquerade {}", vni_tag(network.vni), network.subnet)
}

fn is_network_rule(rule: &Rule) -> bool {
    rule.comment
        .as_deref()
        .is_some_and(|c| c.starts_with("netagent vni "))
}

/// `ip saddr <subnet> oifname != "nagw*" counter masquerade`.
fn masquerade_exprs(network: &Network) -> Vec<Expr> {
    vec![
        // IPv4 source address: network header bytes 12..16.
        Expr::network_header(12, 4),
        Expr::and(&network.subnet.netmask().octets()),
        Expr::cmp(CmpOp::Eq, &network.subnet.network().octets()),
        Expr::meta(MetaKey::OifName),
        Expr::cmp(CmpOp::Neq, uplink::NODE_PREFIX.as_bytes()),
        Expr::counter(),
        Expr::masquerade(),
    ]
}

/// `iifname "nagw*" oifname "nagw*" counter drop`.
fn isolate_exprs() -> Vec<Expr> {
    vec![
        Expr::meta(MetaKey::IifName),
        Expr::cmp(CmpOp::Eq, uplink::NODE_PREFIX.as_bytes()),
        Expr::meta(MetaKey::OifName),
        Expr::cmp(CmpOp::Eq, uplink::NODE_PREFIX.as_bytes()),
        Expr::counter(),
        Expr::verdict(Verdict::Drop),
    ]
}

/// What `ensure` must change, given what exists now.
fn plan_ensure(
    network: &Network,
    table_exists: bool,
    chains_exist: [bool; 2],
    rules: &[Rule],
) -> Vec<Change> {
    let mut changes = Vec::new();
    if !table_exists {
        changes.push(Change::AddTable);
    }
    for (chain, exists) in [POSTROUTING, FORWARD].into_iter().zip(chains_exist) {
        if !exists {
            changes.push(Change::AddChain(chain));
        }
    }
    let isolated = rules
        .iter()
        .any(|r| r.chain == FORWARD.name && r.comment.as_deref() == Some(ISOLATE_COMMENT));
    if !isolated {
        changes.push(Change::AddRule {
            chain: FORWARD.name,
            exprs: isolate_exprs(),
            comment: ISOLATE_COMMENT.into(),
        });
    }
    let wanted = masquerade_comment(network);
    let tag = vni_tag(network.vni);
    let mut present = false;
    for rule in rules {
        let Some(comment) = rule.comment.as_deref() else {
            continue;
        };
        if rule.chain == POSTROUTING.name && comment == wanted && !present {
            present = true;
        } else if comment.starts_with(&tag) {
            // A stale rule of this VNI (another subnet) or a duplicate.
            changes.push(Change::DeleteRule {
                chain: rule.chain.clone(),
                handle: rule.handle,
            });
        }
    }
    if !present {
        changes.push(Change::AddRule {
            chain: POSTROUTING.name,
            exprs: masquerade_exprs(network),
            comment: wanted,
        });
    }
    changes
}

/// What `remove` must change: the network's rules, or the whole table when
/// no other network's rule is left.
fn plan_remove(vni: u32, rules: &[Rule]) -> Vec<Change> {
    let tag = vni_tag(vni);
    let (ours, others): (Vec<&Rule>, Vec<&Rule>) = rules
        .iter()
        .filter(|r| is_network_rule(r))
        .partition(|r| r.comment.as_deref().is_some_and(|c| c.starts_with(&tag)));
    if others.is_empty() {
        return vec![Change::DeleteTable];
    }
    ours.into_iter()
        .map(|r| Change::DeleteRule {
            chain: r.chain.clone(),
            handle: r.handle,
        })
        .collect()
}

pub(super) fn error(what: String) -> impl FnOnce(NftError) -> OverlayError {
    OverlayError::nftables(what, NODE, HINT)
}

/// Runs `work` with an nf_tables socket of the agent's table, on a thread
/// inside the node namespace.
pub(super) async fn in_node<T, F>(config: &OverlayConfig, work: F) -> Result<T, OverlayError>
where
    T: Send + 'static,
    F: FnOnce(&mut Nft) -> Result<T, OverlayError> + Send + 'static,
{
    let table = table_name(&config.netns_prefix);
    let node: Option<&Path> = config.node_netns.as_deref();
    netns::run_in(node, move || {
        Ok(Nft::open(FAMILY_IP, &table)
            .map_err(error(format!("opening nf_tables for table {table}")))
            .and_then(|mut nft| work(&mut nft)))
    })
    .await
    .map_err(|source| OverlayError::Netns {
        cause: source,
        hint: "check that the node namespace exists and the agent runs as root",
    })?
}

/// Adds the network's masquerade rule (and the table, chains and isolation
/// rule if missing). Changes nothing when everything is there.
pub async fn ensure(config: &OverlayConfig, network: &Network) -> Result<(), OverlayError> {
    let network = network.clone();
    in_node(config, move |nft| {
        let table = nft.table().to_owned();
        let table_exists = nft
            .table_exists()
            .map_err(error(format!("looking up table {table}")))?;
        let (chains, rules) = if table_exists {
            let mut chains = [false; 2];
            for (exists, chain) in chains.iter_mut().zip([POSTROUTING, FORWARD]) {
                *exists = nft
                    .chain_exists(chain.name)
                    .map_err(error(format!("looking up chain {}", chain.name)))?;
            }
            let rules = nft
                .rules()
                .map_err(error(format!("listing the rules of {table}")))?;
            (chains, rules)
        } else {
            ([false; 2], Vec::new())
        };
        let changes = plan_ensure(&network, table_exists, chains, &rules);
        if changes.is_empty() {
            return Ok(());
        }
        nft.commit(&changes).map_err(error(format!(
            "adding the masquerade of {} (VNI {}) to table {table}",
            network.subnet, network.vni
        )))?;
        tracing::info!(table = %table, vni = network.vni, subnet = %network.subnet, changes = changes.len(), "masquerade programmed");
        Ok(())
    })
    .await
}

/// Removes the network's rules; the table goes with the last network.
/// Nothing to remove is not an error.
pub async fn remove(config: &OverlayConfig, network: &Network) -> Result<(), OverlayError> {
    let vni = network.vni;
    in_node(config, move |nft| {
        let table = nft.table().to_owned();
        if !nft
            .table_exists()
            .map_err(error(format!("looking up table {table}")))?
        {
            return Ok(());
        }
        let rules = nft
            .rules()
            .map_err(error(format!("listing the rules of {table}")))?;
        let changes = plan_remove(vni, &rules);
        match nft.commit(&changes) {
            Ok(()) => {}
            // Gone meanwhile: what we wanted.
            Err(error) if error.is(libc::ENOENT) => {}
            Err(source) => {
                return Err(error(format!(
                    "removing the masquerade of VNI {vni} from table {table}"
                ))(source))
            }
        }
        tracing::info!(table = %table, vni, table_removed = matches!(changes.first(), Some(Change::DeleteTable)), "masquerade removed");
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn network(vni: u32, subnet: &str) -> Network {
        let subnet: ipnet::Ipv4Net = subnet.parse().expect("subnet");
        Network {
            name: format!("n{vni}"),
            id: format!("id{vni}"),
            vni,
            subnet,
            gateway: Ipv4Addr::from(u32::from(subnet.network()) + 1),
            internal: false,
            mtu: None,
        }
    }

    fn rule(chain: &str, handle: u64, comment: &str) -> Rule {
        Rule {
            chain: chain.into(),
            handle,
            comment: Some(comment.into()),
        }
    }

    #[test]
    fn table_names_are_nft_identifiers() {
        assert_eq!(table_name("nl1a2b3c-n1"), "netagent_nl1a2b3c_n1");
        assert_eq!(table_name("netagent"), "netagent_netagent");
    }

    #[test]
    fn ensure_on_nothing_builds_everything() {
        let net = network(4096, "10.10.0.0/24");
        let changes = plan_ensure(&net, false, [false; 2], &[]);
        let kinds: Vec<&str> = changes
            .iter()
            .map(|c| match c {
                Change::AddTable => "table",
                Change::AddChain(_) => "chain",
                Change::AddRule { chain, .. } => chain,
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["table", "chain", "chain", "forward", "postrouting"]);
    }

    #[test]
    fn ensure_over_a_right_table_changes_nothing() {
        let net = network(4096, "10.10.0.0/24");
        let rules = [
            rule("forward", 2, ISOLATE_COMMENT),
            rule(
                "postrouting",
                3,
                "netagent vni 4096 masquerade 10.10.0.0/24",
            ),
            rule(
                "postrouting",
                4,
                "netagent vni 40960 masquerade 10.20.0.0/24",
            ),
        ];
        assert!(plan_ensure(&net, true, [true; 2], &rules).is_empty());
    }

    #[test]
    fn ensure_replaces_a_stale_rule_of_the_vni() {
        let net = network(4096, "10.10.0.0/24");
        let rules = [
            rule("forward", 2, ISOLATE_COMMENT),
            rule(
                "postrouting",
                3,
                "netagent vni 4096 masquerade 10.99.0.0/24",
            ),
        ];
        let changes = plan_ensure(&net, true, [true; 2], &rules);
        assert!(matches!(changes[0], Change::DeleteRule { handle: 3, .. }));
        assert!(matches!(
            changes[1],
            Change::AddRule {
                chain: "postrouting",
                ..
            }
        ));
        assert_eq!(changes.len(), 2);
    }

    #[test]
    fn remove_deletes_the_rule_or_the_table_with_the_last_network() {
        let rules = [
            rule("forward", 2, ISOLATE_COMMENT),
            rule(
                "postrouting",
                3,
                "netagent vni 4096 masquerade 10.10.0.0/24",
            ),
            rule(
                "postrouting",
                4,
                "netagent vni 4097 masquerade 10.20.0.0/24",
            ),
        ];
        let changes = plan_remove(4096, &rules);
        assert_eq!(changes.len(), 1);
        assert!(matches!(changes[0], Change::DeleteRule { handle: 3, .. }));
        assert!(matches!(
            plan_remove(4097, &rules[..3]).as_slice(),
            [Change::DeleteRule { handle: 4, .. }]
        ));
        assert!(matches!(
            plan_remove(4096, &rules[..2]).as_slice(),
            [Change::DeleteTable]
        ));
        assert!(matches!(
            plan_remove(4096, &[]).as_slice(),
            [Change::DeleteTable]
        ));
    }
}
