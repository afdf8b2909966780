//! Three (then four) gossip instances on 127.0.0.1: convergence, withdrawal,
//! dead-node removal, restart with a new generation, and a foreign key.

// A test may unwrap: a panic is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use netagent::{
    gossip::{Gossip, GossipConfig, GossipView},
    model::{Endpoint, Mac},
};
use tokio::sync::watch;

const KEY: [u8; 32] = [42; 32];

fn free_addr() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap()
}

fn config(name: &str, addr: SocketAddr, seeds: &[SocketAddr], key: [u8; 32]) -> GossipConfig {
    GossipConfig {
        node_name: name.into(),
        cluster_id: "test-cluster".into(),
        listen_addr: addr,
        seeds: seeds.iter().copied().filter(|s| *s != addr).collect(),
        cluster_key: key,
        vtep: Ipv4Addr::new(127, 0, 0, 1),
        gossip_interval: Duration::ZERO, // the 200 ms default
    }
}

fn endpoint(id: &str, node: &str, last: u8) -> Endpoint {
    let ip = Ipv4Addr::new(10, 0, 0, last);
    Endpoint {
        name: format!("web.{last}"),
        service: Some("web".into()),
        ..Endpoint::new(id, "front", "n1", node, ip)
    }
}

/// Waits until `pred` holds on every receiver; returns how long it took, or
/// panics with `what` after `limit`.
async fn wait_all(
    rxs: &mut [watch::Receiver<Arc<GossipView>>],
    limit: Duration,
    what: &str,
    pred: impl Fn(&GossipView) -> bool,
) -> Duration {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    for rx in rxs.iter_mut() {
        loop {
            if pred(&rx.borrow_and_update()) {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("{what}: view channel closed"),
                Err(_) => panic!(
                    "{what}: not within {limit:?}; last view: {:?}",
                    rx.borrow().nodes.keys().collect::<Vec<_>>()
                ),
            }
        }
    }
    start.elapsed()
}

/// Watches the receivers for `window` and panics if `bad` ever holds.
async fn never(
    rxs: &mut [watch::Receiver<Arc<GossipView>>],
    window: Duration,
    what: &str,
    bad: impl Fn(&GossipView) -> bool,
) {
    let deadline = tokio::time::Instant::now() + window;
    for rx in rxs.iter_mut() {
        assert!(!bad(&rx.borrow_and_update()), "{what}");
    }
    loop {
        let changed = {
            let changes = rxs.iter_mut().map(|rx| Box::pin(rx.changed()));
            tokio::time::timeout_at(deadline, futures::future::select_all(changes))
                .await
                .map(|(result, _, _)| result)
        };
        match changed {
            Err(_) => return,
            Ok(Err(_)) => panic!("{what}: view channel closed"),
            Ok(Ok(())) => {
                for rx in rxs.iter_mut() {
                    assert!(!bad(&rx.borrow_and_update()), "{what}");
                }
            }
        }
    }
}

fn has_endpoint(view: &GossipView, node: &str, id: &str) -> bool {
    view.nodes
        .get(node)
        .is_some_and(|peer| peer.endpoints.contains_key(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_cluster_converges_forgets_dead_and_refuses_strangers() {
    let (addr_a, addr_b, addr_c, addr_d) = (free_addr(), free_addr(), free_addr(), free_addr());
    let all = [addr_a, addr_b, addr_c];

    let a = Gossip::start(config("a", addr_a, &all, KEY), vec![])
        .await
        .unwrap();
    let b = Gossip::start(config("b", addr_b, &all, KEY), vec![])
        .await
        .unwrap();
    let c = Gossip::start(
        config("c", addr_c, &all, KEY),
        vec![endpoint("c1", "c", 31), endpoint("c2", "c", 32)],
    )
    .await
    .unwrap();

    let mut all_rx = [a.subscribe(), b.subscribe(), c.subscribe()];
    let took = wait_all(&mut all_rx, Duration::from_secs(10), "3 nodes", |v| {
        v.nodes.len() == 3
            && v.nodes.values().all(|p| p.vtep.is_some())
            && has_endpoint(v, "c", "c2")
    })
    .await;
    println!("cluster of 3 formed in {took:?}");

    // Publish on a: visible on b and c within 1 s.
    a.publish(&endpoint("a1", "a", 11)).await;
    let mut others = [b.subscribe(), c.subscribe()];
    let took = wait_all(&mut others, Duration::from_secs(1), "a1 published", |v| {
        has_endpoint(v, "a", "a1")
    })
    .await;
    println!("publish converged in {took:?}");
    assert_eq!(
        b.subscribe().borrow().nodes["a"].endpoints["a1"],
        endpoint("a1", "a", 11)
    );

    // Withdraw: gone within 1 s.
    a.withdraw("a1").await;
    let took = wait_all(&mut others, Duration::from_secs(1), "a1 withdrawn", |v| {
        v.nodes.contains_key("a") && !has_endpoint(v, "a", "a1")
    })
    .await;
    println!("withdraw converged in {took:?}");

    // c dies: it leaves a's and b's views within 5 s.
    c.shutdown().await;
    let mut survivors = [a.subscribe(), b.subscribe()];
    let took = wait_all(&mut survivors, Duration::from_secs(5), "c dead", |v| {
        !v.nodes.contains_key("c") && v.nodes.len() == 2
    })
    .await;
    println!("dead node left the views in {took:?}");
    assert!(took < Duration::from_secs(5));

    // c comes back (new generation) with only c2: c1 must not come back.
    let c = Gossip::start(
        config("c", addr_c, &all, KEY),
        vec![endpoint("c2", "c", 32)],
    )
    .await
    .unwrap();
    let took = wait_all(&mut survivors, Duration::from_secs(5), "c back", |v| {
        has_endpoint(v, "c", "c2")
    })
    .await;
    println!("restarted node back in the views in {took:?}");
    never(
        &mut survivors,
        Duration::from_secs(2),
        "c1 of c's old generation came back",
        |v| has_endpoint(v, "c", "c1"),
    )
    .await;

    // d has another key: nobody sees it, and the others count its packets.
    let rejected_before = a.rejected_packets() + b.rejected_packets() + c.rejected_packets();
    let d = Gossip::start(
        config("d", addr_d, &all, [7; 32]),
        vec![endpoint("d1", "d", 41)],
    )
    .await
    .unwrap();
    let mut everyone = [a.subscribe(), b.subscribe(), c.subscribe()];
    never(
        &mut everyone,
        Duration::from_secs(3),
        "d with the wrong key joined",
        |v| v.nodes.contains_key("d"),
    )
    .await;
    let rejected_after = a.rejected_packets() + b.rejected_packets() + c.rejected_packets();
    println!(
        "packets rejected from d: {}",
        rejected_after - rejected_before
    );
    assert!(rejected_after > rejected_before);
    assert_eq!(
        d.subscribe().borrow().nodes.keys().collect::<Vec<_>>(),
        vec!["d"]
    );
    assert_eq!(
        d.rejected_packets(),
        0,
        "nobody answers d, so d rejects nothing"
    );

    for g in [a, b, c, d] {
        g.shutdown().await;
    }
}

/// A state far larger than one datagram: chitchat sends it in MTU-bounded
/// deltas over several rounds, and the largest ones are fragmented by the
/// sealed transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_large_state_converges() {
    const N: usize = 4000;
    let (addr_x, addr_y) = (free_addr(), free_addr());
    let endpoints: Vec<Endpoint> = (0..N)
        .map(|i| {
            let mut e = endpoint(&format!("endpoint-{i:05}-{:x}", i * 7919), "x", 0);
            e.ip = Ipv4Addr::from(0x0a00_0000 + i as u32);
            e.mac = Mac::from_ipv4(e.ip);
            e.aliases = vec![format!("alias-{}", i * 31)];
            e
        })
        .collect();
    let x = Gossip::start(config("x", addr_x, &[addr_y], KEY), endpoints)
        .await
        .unwrap();
    let y = Gossip::start(config("y", addr_y, &[addr_x], KEY), vec![])
        .await
        .unwrap();
    let took = wait_all(
        &mut [y.subscribe()],
        Duration::from_secs(30),
        "large state",
        |v| v.nodes.get("x").is_some_and(|p| p.endpoints.len() == N),
    )
    .await;
    println!("{N} endpoints converged in {took:?}");
    assert_eq!(y.rejected_packets(), 0);
    x.shutdown().await;
    y.shutdown().await;
}

#[tokio::test]
async fn gossip_refuses_wildcard_listen_address() {
    let addr: SocketAddr = "0.0.0.0:7946".parse().unwrap();
    assert!(Gossip::start(config("w", addr, &[], KEY), vec![])
        .await
        .is_err());
}
