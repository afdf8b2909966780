//! The overlay data plane, driven through `netagent::dataplane::overlay`
//! directly (no agent process): two lab nodes, one sandbox each for the same
//! VNI, a container on each, static peers; then adoption, removal and
//! failure clean-up. Everything lives in lab namespaces.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use netagent::{
    dataplane::overlay::Overlay,
    model::{Network, Peer},
};
use netlab::{require_root, wait_until, Lab, LabSpec};

mod common;

use common::{endpoint, link, link_names, pings, stdout};

fn network() -> Network {
    common::network("front", 4096, 10, false)
}

fn overlay(lab: &Lab, node: &str) -> Overlay {
    Overlay::new(common::config(lab, node)).expect("overlay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_connects_containers_across_nodes_and_cleans_up() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(2)).expect("lab");
    let c1 = lab.add_container("c1").expect("c1");
    let c2 = lab.add_container("c2").expect("c2");
    let (o1, o2) = (overlay(&lab, "n1"), overlay(&lab, "n2"));
    let net = network();
    let (sb1, sb2) = (o1.sandbox_name(&net), o2.sandbox_name(&net));
    let (vtep1, vtep2) = (lab.node("n1").unwrap().addr, lab.node("n2").unwrap().addr);

    // Sandboxes; a second ensure adopts without touching anything.
    o1.ensure_sandbox(&net).await.expect("sandbox n1");
    o2.ensure_sandbox(&net).await.expect("sandbox n2");
    let vxlan = link(&lab, &sb1, "vxlan0").expect("vxlan0 in sandbox");
    let bridge = link(&lab, &sb1, "br0").expect("br0 in sandbox");
    assert_eq!(vxlan["mtu"], 1450, "{vxlan}");
    assert_eq!(vxlan["master"], "br0", "{vxlan}");
    o1.ensure_sandbox(&net).await.expect("ensure again");
    assert_eq!(
        link(&lab, &sb1, "vxlan0").unwrap()["ifindex"],
        vxlan["ifindex"]
    );
    assert_eq!(
        link(&lab, &sb1, "br0").unwrap()["ifindex"],
        bridge["ifindex"]
    );
    assert_eq!(o1.sandboxes().await.expect("sandboxes"), vec![4096]);
    // A restarted agent (a new Overlay) adopts it too, and repairs only what
    // is wrong: a vxlan0 that went down comes back up, same device.
    stdout(&lab, &sb1, &["ip", "link", "set", "vxlan0", "down"]);
    overlay(&lab, "n1")
        .ensure_sandbox(&net)
        .await
        .expect("adopt after restart");
    let adopted = link(&lab, &sb1, "vxlan0").expect("vxlan0");
    assert_eq!(adopted["ifindex"], vxlan["ifindex"]);
    assert!(
        adopted["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "UP")),
        "{adopted}"
    );
    let details = stdout(&lab, &sb1, &["ip", "-d", "link", "show", "vxlan0"]);
    for want in [
        "id 4096",
        "dstport 4789",
        "nolearning",
        "proxy",
        "local 198.18.0.11",
    ] {
        assert!(details.contains(want), "{want} missing: {details}");
    }
    // The vxlan device is not left in the node namespace.
    let node1 = lab.node("n1").unwrap().netns.clone();
    assert!(link_names(&lab, &node1)
        .iter()
        .all(|n| !n.starts_with("nvx") && n != "vxlan0"));

    // One container per node.
    let (ip1, ip2) = (Ipv4Addr::new(10, 10, 0, 2), Ipv4Addr::new(10, 10, 0, 3));
    let e1 = endpoint("e1aaaaaaaaaa", ip1, &c1.netns_path());
    let e2 = endpoint("e2bbbbbbbbbb", ip2, &c2.netns_path());
    o1.attach(&net, &e1).await.expect("attach c1");
    o2.attach(&net, &e2).await.expect("attach c2");
    assert_eq!(
        o1.attached(&net).await.expect("attached"),
        vec![e1.endpoint_id.clone()]
    );
    let eth0 = link(&lab, &c1.netns, "eth0").expect("eth0 in c1");
    assert_eq!(eth0["address"], e1.mac.to_string());
    assert_eq!(eth0["mtu"], 1450);
    let routes = stdout(&lab, &c1.netns, &["ip", "route", "show", "default"]);
    assert!(routes.contains("via 10.10.0.1"), "{routes}");

    // Peers, added twice: idempotent.
    let p1 = Peer {
        ip: ip1,
        mac: e1.mac,
        vtep: vtep1,
    };
    let p2 = Peer {
        ip: ip2,
        mac: e2.mac,
        vtep: vtep2,
    };
    for _ in 0..2 {
        o1.add_peer(&net, &p2).await.expect("peer on n1");
        o2.add_peer(&net, &p1).await.expect("peer on n2");
    }
    assert_eq!(o1.peers(&net).await.expect("peers"), vec![p2]);
    assert_eq!(o2.peers(&net).await.expect("peers"), vec![p1]);

    wait_until(Duration::from_secs(5), || {
        pings(&lab, &c1.netns, ip2).then_some(())
    })
    .expect("c1 reaches c2 across nodes");
    assert!(pings(&lab, &c2.netns, ip1), "c2 reaches c1");
    assert!(
        pings(&lab, &c1.netns, net.gateway),
        "c1 reaches its gateway"
    );

    // vxlan0's own table holds exactly the static peer entry: nothing
    // learned, no all-zeros flood entry.
    let fdb = stdout(&lab, &sb1, &["bridge", "fdb", "show", "dev", "vxlan0"]);
    let own: Vec<&str> = fdb.lines().filter(|l| !l.contains("master")).collect();
    assert_eq!(own.len(), 1, "{fdb}");
    assert!(
        own[0].starts_with(&e2.mac.to_string())
            && own[0].contains(&format!("dst {vtep2}"))
            && own[0].contains("self permanent"),
        "{fdb}"
    );

    // Removing the peer stops the traffic; removing again is fine.
    o1.remove_peer(&net, &p2).await.expect("remove peer");
    o1.remove_peer(&net, &p2).await.expect("remove peer again");
    assert!(o1.peers(&net).await.expect("peers").is_empty());
    assert!(
        !pings(&lab, &c1.netns, ip2),
        "traffic flows without a peer entry"
    );

    // An attach to a namespace that does not exist: one-line error, no veth.
    let missing = Path::new("/run/netns").join(format!("{}-nope", lab.prefix()));
    let error = o1
        .attach(
            &net,
            &endpoint("e3cccccccccc", Ipv4Addr::new(10, 10, 0, 4), &missing),
        )
        .await
        .expect_err("attach to a missing namespace");
    let message = error.to_string();
    assert!(
        !message.contains('\n') && message.contains("nope"),
        "{message}"
    );
    let veths: Vec<String> = link_names(&lab, &sb1)
        .into_iter()
        .filter(|n| n.starts_with("ve-") || n.starts_with("vp-"))
        .collect();
    assert_eq!(veths, vec!["ve-e1aaaaaa".to_owned()]);
    // A second attach of the same endpoint fails and leaves the first alone.
    let again = o1.attach(&net, &e1).await.expect_err("attach twice");
    assert!(!again.to_string().contains('\n'));
    assert!(link(&lab, &sb1, "ve-e1aaaaaa").is_some());

    // Detach (twice: idempotent), then remove the sandboxes (twice too).
    o1.detach(&net, &e1.endpoint_id).await.expect("detach");
    o1.detach(&net, &e1.endpoint_id)
        .await
        .expect("detach again");
    o2.detach(&net, &e2.endpoint_id).await.expect("detach c2");
    assert!(
        link(&lab, &c1.netns, "eth0").is_none(),
        "the pair went with the host end"
    );
    assert!(o1.attached(&net).await.expect("attached").is_empty());
    for (o, sb) in [(&o1, &sb1), (&o2, &sb2)] {
        o.remove_sandbox(&net).await.expect("remove sandbox");
        o.remove_sandbox(&net).await.expect("remove sandbox again");
        assert!(!Path::new("/run/netns").join(sb).exists(), "{sb} left");
        assert!(o.sandboxes().await.expect("sandboxes").is_empty());
    }
    // The VNI is free at once: a new sandbox can be made and removed.
    o1.ensure_sandbox(&net).await.expect("sandbox again");
    o1.remove_sandbox(&net).await.expect("remove it");
    for node in ["n1", "n2"] {
        let netns = lab.node(node).unwrap().netns.clone();
        assert!(link_names(&lab, &netns)
            .iter()
            .all(|n| !n.starts_with("nvx") && !n.starts_with("ve-")));
    }
    lab.teardown().expect("clean teardown");
}
