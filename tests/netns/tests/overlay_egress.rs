//! Containers reach the outside through their node (masquerade), unless the
//! network is internal; networks stay isolated from each other through the
//! node. Driven through `netagent::dataplane::overlay` directly against a
//! lab node's namespace; the "outside" is the lab's external host
//! (198.18.0.200), a lab namespace. Nothing is created in the root namespace.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use netagent::dataplane::{masquerade, overlay::Overlay};
use netlab::{require_root, wait_until, Lab, LabSpec};
use serde_json::Value;

const EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);

mod common;

use common::{config, endpoint, link, link_names, network, pings, run, stdout};

/// The rules of `chain` in table `ip <table>` of `netns`: (comment, packets).
fn rule_counters(lab: &Lab, netns: &str, table: &str, chain: &str) -> Vec<(String, u64)> {
    let json: Value = serde_json::from_str(&stdout(
        lab,
        netns,
        &["nft", "-j", "list", "chain", "ip", table, chain],
    ))
    .expect("nft -j output");
    json["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|item| {
            let rule = item.get("rule")?;
            let comment = rule["comment"].as_str().unwrap_or_default().to_owned();
            let packets = rule["expr"]
                .as_array()?
                .iter()
                .find_map(|e| e.get("counter")?["packets"].as_u64())
                .unwrap_or(0);
            Some((comment, packets))
        })
        .collect()
}

fn packets(counters: &[(String, u64)], comment: &str) -> u64 {
    counters
        .iter()
        .find(|(c, _)| c == comment)
        .unwrap_or_else(|| panic!("no rule {comment:?} in {counters:?}"))
        .1
}

/// What must not change when ensure_sandbox runs again: link indexes, routes,
/// neighbours and the table (with rule handles).
fn snapshot(lab: &Lab, node: &str, sandbox: &str, table: &str) -> String {
    [
        stdout(lab, node, &["ip", "-o", "link", "show", "nagw4096"]),
        stdout(lab, node, &["ip", "-o", "addr", "show", "dev", "nagw4096"]),
        stdout(lab, node, &["ip", "route", "show"]),
        stdout(lab, node, &["ip", "neigh", "show", "dev", "nagw4096"]),
        stdout(lab, sandbox, &["ip", "-o", "link", "show", "gw0"]),
        stdout(lab, sandbox, &["ip", "-o", "addr", "show", "dev", "gw0"]),
        stdout(lab, sandbox, &["ip", "route", "show"]),
        stdout(lab, sandbox, &["ip", "neigh", "show", "dev", "gw0"]),
        stdout(lab, sandbox, &["sysctl", "-n", "net.ipv4.ip_forward"]),
        stdout(lab, node, &["nft", "-a", "list", "table", "ip", table]),
    ]
    .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_reach_outside_masqueraded_unless_internal() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(1)).expect("lab");
    let ca = lab.add_container("ca").expect("ca");
    let cb = lab.add_container("cb").expect("cb");
    let ci = lab.add_container("ci").expect("ci");
    let config = config(&lab, "n1");
    let table = masquerade::table_name(&config.netns_prefix);
    let overlay = Overlay::new(config.clone()).expect("overlay");
    let node = lab.node("n1").unwrap().netns.clone();
    let node_addr = lab.node("n1").unwrap().addr;
    let ext = lab.external_netns();
    let (a, b, i) = (
        network("a", 4096, 10, false),
        network("b", 4097, 20, false),
        network("i", 4098, 30, true),
    );
    let (sba, sbi) = (overlay.sandbox_name(&a), overlay.sandbox_name(&i));

    for net in [&a, &b, &i] {
        overlay.ensure_sandbox(net).await.expect("sandbox");
    }
    let (ip_a, ip_b, ip_i) = (
        Ipv4Addr::new(10, 10, 0, 2),
        Ipv4Addr::new(10, 20, 0, 2),
        Ipv4Addr::new(10, 30, 0, 2),
    );
    overlay
        .attach(&a, &endpoint("eaaaaaaaaaaa", ip_a, &ca.netns_path()))
        .await
        .expect("attach a");
    overlay
        .attach(&b, &endpoint("ebbbbbbbbbbb", ip_b, &cb.netns_path()))
        .await
        .expect("attach b");
    overlay
        .attach(&i, &endpoint("eiiiiiiiiiii", ip_i, &ci.netns_path()))
        .await
        .expect("attach i");

    // The uplinks: non-internal networks only.
    assert!(link(&lab, &sba, "gw0").is_some(), "gw0 in {sba}");
    assert!(link(&lab, &node, "nagw4096").is_some());
    assert!(link(&lab, &node, "nagw4097").is_some());
    assert!(
        link(&lab, &sbi, "gw0").is_none(),
        "an internal network has no uplink"
    );
    assert!(link(&lab, &node, "nagw4098").is_none());
    let route = stdout(&lab, &node, &["ip", "route", "show", "10.10.0.0/24"]);
    assert!(
        route.contains("via 169.254.0.2 dev nagw4096") && route.contains("onlink"),
        "{route}"
    );
    let route = stdout(&lab, &sba, &["ip", "route", "show", "default"]);
    assert!(route.contains("via 169.254.0.1 dev gw0"), "{route}");
    let rules = stdout(&lab, &node, &["nft", "list", "table", "ip", &table]);
    for want in [
        "ip saddr 10.10.0.0/24 oifname != \"nagw*\"",
        "ip saddr 10.20.0.0/24 oifname != \"nagw*\"",
        "masquerade",
        "iifname \"nagw*\" oifname \"nagw*\"",
        "drop",
    ] {
        assert!(rules.contains(want), "{want} missing: {rules}");
    }
    assert!(
        !rules.contains("10.30.0.0"),
        "internal network rule: {rules}"
    );

    // ensure_sandbox again, and by a restarted agent: nothing changes.
    let before = snapshot(&lab, &node, &sba, &table);
    overlay.ensure_sandbox(&a).await.expect("ensure again");
    Overlay::new(config.clone())
        .expect("overlay")
        .ensure_sandbox(&a)
        .await
        .expect("ensure after restart");
    assert_eq!(snapshot(&lab, &node, &sba, &table), before);

    // Missing or wrong pieces are repaired: flushed rules, a deleted uplink,
    // a pair a crash left whole inside the sandbox.
    stdout(&lab, &node, &["nft", "flush", "table", "ip", &table]);
    stdout(&lab, &node, &["ip", "link", "del", "nagw4096"]);
    stdout(
        &lab,
        &sbi,
        &[
            "ip", "link", "add", "gw0", "type", "veth", "peer", "name", "nagw4098",
        ],
    );
    for net in [&a, &b] {
        overlay.ensure_sandbox(net).await.expect("repair");
    }
    assert!(link(&lab, &node, "nagw4096").is_some(), "uplink recreated");
    let rules = stdout(&lab, &node, &["nft", "list", "table", "ip", &table]);
    assert!(
        rules.contains("10.10.0.0/24") && rules.contains("10.20.0.0/24") && rules.contains("drop"),
        "{rules}"
    );
    // The internal network's sandbox loses an uplink it should not have.
    overlay.ensure_sandbox(&i).await.expect("ensure internal");
    assert!(link(&lab, &sbi, "gw0").is_none() && link(&lab, &sbi, "nagw4098").is_none());
    // Crash between creating the pair and moving its node end out.
    stdout(&lab, &node, &["ip", "link", "del", "nagw4097"]);
    let sbb = overlay.sandbox_name(&b);
    stdout(
        &lab,
        &sbb,
        &[
            "ip", "link", "add", "gw0", "type", "veth", "peer", "name", "nagw4097",
        ],
    );
    overlay
        .ensure_sandbox(&b)
        .await
        .expect("adopt a stranded pair");
    assert!(link(&lab, &node, "nagw4097").is_some() && link(&lab, &sbb, "nagw4097").is_none());

    // The external host counts who pings it.
    for args in [
        &["nft", "add", "table", "ip", "probe"][..],
        &[
            "nft", "add", "chain", "ip", "probe", "input", "{", "type", "filter", "hook", "input",
            "priority", "0", ";", "}",
        ],
        &[
            "nft",
            "add",
            "rule",
            "ip",
            "probe",
            "input",
            "ip",
            "saddr",
            "198.18.0.11",
            "icmp",
            "type",
            "echo-request",
            "counter",
            "comment",
            "\"from-node\"",
        ],
        &[
            "nft",
            "add",
            "rule",
            "ip",
            "probe",
            "input",
            "ip",
            "saddr",
            "10.0.0.0/8",
            "counter",
            "comment",
            "\"from-container\"",
        ],
    ] {
        stdout(&lab, &ext, args);
    }
    assert_eq!(node_addr, Ipv4Addr::new(198, 18, 0, 11));

    // A container of a non-internal network reaches the external host, which
    // sees the node's address.
    wait_until(Duration::from_secs(10), || {
        pings(&lab, &ca.netns, EXTERNAL).then_some(())
    })
    .expect("a container of a non-internal network reaches the external host");
    assert!(
        pings(&lab, &cb.netns, EXTERNAL),
        "network b reaches out too"
    );
    let seen = rule_counters(&lab, &ext, "probe", "input");
    assert!(packets(&seen, "from-node") >= 2, "{seen:?}");
    assert_eq!(packets(&seen, "from-container"), 0, "{seen:?}");

    // An internal network does not get out.
    assert!(
        !pings(&lab, &ci.netns, EXTERNAL),
        "an internal network reached the external host"
    );
    assert_eq!(
        packets(
            &rule_counters(&lab, &ext, "probe", "input"),
            "from-container"
        ),
        0
    );

    // Two networks do not reach each other through the node; the isolation
    // rule is what stops them.
    let isolate = |lab: &Lab| {
        packets(
            &rule_counters(lab, &node, &table, "forward"),
            "netagent isolate uplinks",
        )
    };
    let dropped = isolate(&lab);
    assert!(!pings(&lab, &ca.netns, ip_b), "network a reached network b");
    assert!(!pings(&lab, &cb.netns, ip_a), "network b reached network a");
    assert!(
        isolate(&lab) >= dropped + 2,
        "the isolation rule did not drop"
    );
    assert!(
        pings(&lab, &ca.netns, a.gateway),
        "a still reaches its gateway"
    );

    // Nothing of this in the root namespace.
    let root = Command::new("nft")
        .args(["list", "table", "ip", &table])
        .output()
        .expect("nft");
    assert!(
        !root.status.success(),
        "table {table} in the root namespace"
    );
    let root_links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip");
    assert!(!String::from_utf8_lossy(&root_links.stdout).contains("nagw409"));

    // Removal: the network's uplink and rule go; the table with the last one.
    overlay.remove_sandbox(&a).await.expect("remove a");
    assert!(link(&lab, &node, "nagw4096").is_none(), "uplink of a left");
    let rules = stdout(&lab, &node, &["nft", "list", "table", "ip", &table]);
    assert!(
        !rules.contains("10.10.0.0") && !rules.contains("vni 4096"),
        "{rules}"
    );
    assert!(rules.contains("10.20.0.0/24"), "{rules}");
    let routes = stdout(&lab, &node, &["ip", "route", "show"]);
    assert!(!routes.contains("10.10.0.0"), "{routes}");
    overlay.remove_sandbox(&i).await.expect("remove i");
    assert!(
        run(&lab, &node, &["nft", "list", "table", "ip", &table]).0,
        "the table went while network b still uses it"
    );
    overlay.remove_sandbox(&b).await.expect("remove b");
    overlay.remove_sandbox(&b).await.expect("remove b again");
    assert!(
        !run(&lab, &node, &["nft", "list", "table", "ip", &table]).0,
        "the table outlived the last network"
    );
    assert!(
        link_names(&lab, &node)
            .iter()
            .all(|n| !n.starts_with("nagw")),
        "{:?}",
        link_names(&lab, &node)
    );
    assert!(overlay.sandboxes().await.expect("sandboxes").is_empty());
    lab.teardown().expect("clean teardown");
}
