//! The control plane end to end, in process, on 127.0.0.1 only: a manager
//! serving TLS on a free port, a worker joining with a token, and both
//! driving it through `ManagerClient`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    sync::Arc,
    time::{Duration, Instant},
};

use netagent_api::types::{CreateNetwork, UpdateNode};

use super::{
    service::tests::{create, port, update},
    testdir::TestDir,
    *,
};
use crate::model::{Availability, EndpointMode, Protocol, PublishMode, Role, Service};

fn localhost() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "manager never listened on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

type Server = tokio::task::JoinHandle<Result<(), ControlError>>;

/// A new cluster whose manager serves TLS on a free 127.0.0.1 port; the
/// identity lists that port as the manager's.
async fn serve_new_cluster(dir: &TestDir) -> (Arc<Manager>, ClusterIdentity, Server) {
    let (manager, mut identity) = Manager::init(dir.path(), "m1", localhost(), None)
        .await
        .unwrap();
    let addr = free_port();
    let manager = Arc::new(manager);
    let server = tokio::spawn({
        let manager = manager.clone();
        async move { manager.serve(addr).await }
    });
    wait_listening(addr).await;
    identity.managers = vec![addr];
    (manager, identity, server)
}

/// Stops the server and opens the store again, as a restarted manager does.
/// Drop every client first.
async fn restart(
    server: Server,
    manager: Arc<Manager>,
    dir: &TestDir,
    identity: &ClusterIdentity,
) -> Manager {
    server.abort();
    let _ = server.await;
    let mut manager = Some(manager);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Connection tasks may still hold the old store for a moment.
        if let Some(old) = manager.take() {
            if let Err(old) = Arc::try_unwrap(old) {
                manager = Some(old);
            }
        }
        if manager.is_none() {
            match Manager::open(dir.path(), identity).await {
                Ok(reopened) => return reopened,
                Err(error) => assert!(Instant::now() < deadline, "reopen: {error}"),
            }
        }
        assert!(Instant::now() < deadline, "old manager still referenced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_join_networks_blocks_tokens_restart() {
    let manager_dir = TestDir::new("control-manager");
    let worker_dir = TestDir::new("control-worker");

    let (manager, manager_id, server) = serve_new_cluster(&manager_dir).await;
    let addr = manager_id.managers[0];
    assert_eq!(manager_id.role, Role::Manager);
    assert_eq!(
        ClusterIdentity::load(manager_dir.path())
            .unwrap()
            .unwrap()
            .cluster_id,
        manager_id.cluster_id
    );
    let again = Manager::init(manager_dir.path(), "m1", localhost(), None).await;
    let message = again.err().unwrap().to_string();
    assert!(
        message.contains("already in cluster") && message.contains("cluster leave"),
        "{message}"
    );
    let admin = ManagerClient::new(&manager_id).unwrap();

    // Joining: a wrong token, then the right one.
    let worker_token = admin.join_token(Role::Worker, false).await.unwrap();
    assert!(worker_token.starts_with("NATKN-1-"));
    assert_eq!(
        worker_token,
        admin.join_token(Role::Worker, false).await.unwrap()
    );
    let manager_token = admin.join_token(Role::Manager, false).await.unwrap();
    assert_ne!(worker_token, manager_token);
    let wrong = format!("{}{}", &worker_token[..worker_token.len() - 4], "zzzz");
    let error = join(addr, &wrong, "w1", localhost())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid join token"), "{error}");
    let other_ca = ca::ClusterCa::generate("elsewhere").unwrap();
    let foreign = token::format(&other_ca.fingerprint(), &token::new_secret());
    let error = join(addr, &foreign, "w1", localhost())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("does not match the fingerprint"), "{error}");

    let worker_id = join(addr, &worker_token, "w1", localhost()).await.unwrap();
    assert_eq!(worker_id.role, Role::Worker);
    assert_eq!(worker_id.cluster_id, manager_id.cluster_id);
    assert_eq!(worker_id.cluster_key, manager_id.cluster_key);
    assert_eq!(worker_id.managers[0], addr);
    worker_id.save(worker_dir.path()).unwrap();
    let worker_id = ClusterIdentity::load(worker_dir.path()).unwrap().unwrap();
    let worker = ManagerClient::new(&worker_id).unwrap();
    let nodes = worker.nodes().await.unwrap();
    assert_eq!(nodes.len(), 2);
    assert!(nodes
        .iter()
        .any(|n| n.id == worker_id.node_id && n.role == Role::Worker));

    // A client without a certificate gets nothing but join.
    let anonymous = ManagerClient::anonymous(&manager_id.ca_pem, vec![addr]).unwrap();
    let error = anonymous.networks().await.unwrap_err().to_string();
    assert!(error.contains("certificate"), "{error}");

    // Networks.
    let web = admin
        .create_network(CreateNetwork {
            name: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(web.vni, 4096);
    assert_eq!(web.subnet, "10.0.0.0/24".parse().unwrap());
    assert_eq!(web.gateway, ip("10.0.0.1"));
    let db = admin
        .create_network(CreateNetwork {
            name: "db".into(),
            subnet: Some("192.168.50.0/24".parse().unwrap()),
            gateway: Some(ip("192.168.50.254")),
            vni: Some(77),
            internal: true,
            mtu: Some(1400),
        })
        .await
        .unwrap();
    assert_eq!(
        (db.vni, db.gateway, db.internal, db.mtu),
        (77, ip("192.168.50.254"), true, Some(1400))
    );
    let refused = [
        (
            CreateNetwork {
                name: "web".into(),
                ..Default::default()
            },
            "already exists",
        ),
        (
            CreateNetwork {
                name: "x".into(),
                subnet: Some("10.0.0.128/25".parse().unwrap()),
                ..Default::default()
            },
            "overlaps",
        ),
        (
            CreateNetwork {
                name: "x".into(),
                subnet: Some("172.20.0.0/30".parse().unwrap()),
                ..Default::default()
            },
            "too small",
        ),
        (
            CreateNetwork {
                name: "x".into(),
                subnet: Some("172.20.0.0/24".parse().unwrap()),
                gateway: Some(ip("172.21.0.1")),
                ..Default::default()
            },
            "outside",
        ),
        (
            CreateNetwork {
                name: "x".into(),
                vni: Some(77),
                ..Default::default()
            },
            "already used",
        ),
        (
            CreateNetwork {
                name: "x".into(),
                vni: Some(1 << 24),
                ..Default::default()
            },
            "out of range",
        ),
        (
            CreateNetwork {
                name: "bad name".into(),
                ..Default::default()
            },
            "not valid",
        ),
    ];
    for (request, expected) in refused {
        let error = admin.create_network(request).await.unwrap_err().to_string();
        assert!(error.contains(expected), "{expected}: {error}");
        assert!(!error.contains('\n'));
    }
    let error = worker
        .create_network(CreateNetwork {
            name: "w".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("worker"), "{error}");
    // Nothing half-made.
    let names: Vec<String> = worker
        .networks()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["db", "web"]);

    // Blocks: disjoint, also when racing.
    let manager_block = admin
        .allocate_block(&web.id, &manager_id.node_id)
        .await
        .unwrap();
    let worker_block = worker
        .allocate_block(&web.id, &worker_id.node_id)
        .await
        .unwrap();
    assert!(!allocator::overlaps(&manager_block, &worker_block));
    let error = worker
        .allocate_block(&web.id, &manager_id.node_id)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("only for itself"), "{error}");
    let worker = Arc::new(worker);
    let admin = Arc::new(admin);
    let mut racing = Vec::new();
    for i in 0..8 {
        let (client, node) = if i % 2 == 0 {
            (worker.clone(), worker_id.node_id.clone())
        } else {
            (admin.clone(), manager_id.node_id.clone())
        };
        let network = web.id.clone();
        racing.push(tokio::spawn(async move {
            client.allocate_block(&network, &node).await
        }));
    }
    let mut all = vec![manager_block, worker_block];
    for task in racing {
        all.push(task.await.unwrap().unwrap());
    }
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert!(!allocator::overlaps(a, b), "{a} and {b} overlap");
        }
    }
    let mine = worker.node_blocks(&worker_id.node_id).await.unwrap();
    assert_eq!(mine.len(), 5);
    assert!(mine.iter().all(|(network, _)| *network == web.id));

    // Reservations.
    let outside_blocks = ip("10.0.0.200");
    worker
        .reserve_ip(&web.id, &worker_id.node_id, outside_blocks)
        .await
        .unwrap();
    let error = admin
        .reserve_ip(&web.id, &manager_id.node_id, outside_blocks)
        .await
        .unwrap_err();
    assert!(matches!(error, ControlError::Conflict(_)), "{error}");
    let in_worker_block = worker_block.hosts().next().unwrap();
    let error = admin
        .reserve_ip(&web.id, &manager_id.node_id, in_worker_block)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("another node's address block"),
        "{error}"
    );
    let error = admin
        .reserve_ip(&web.id, &manager_id.node_id, web.gateway)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("gateway"), "{error}");
    worker.release_ip(&web.id, outside_blocks).await.unwrap();
    admin
        .reserve_ip(&web.id, &manager_id.node_id, outside_blocks)
        .await
        .unwrap();
    let error = worker
        .release_ip(&web.id, outside_blocks)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("reserved by node"), "{error}");

    // Rotation: the old token stops working at once.
    let rotated = admin.join_token(Role::Worker, true).await.unwrap();
    assert_ne!(rotated, worker_token);
    let error = join(addr, &worker_token, "w2", localhost())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid join token"), "{error}");
    let second = join(addr, &rotated, "w2", localhost()).await.unwrap();
    assert_eq!(second.role, Role::Worker);
    let promoted = join(addr, &manager_token, "m2", localhost()).await.unwrap();
    assert_eq!(promoted.role, Role::Manager);

    // Removing a node revokes its certificate and frees its addresses.
    let second_client = ManagerClient::new(&second).unwrap();
    second_client
        .allocate_block(&db.id, &second.node_id)
        .await
        .unwrap();
    assert_eq!(second_client.nodes().await.unwrap().len(), 4);
    let error = worker.remove_node("w2").await.unwrap_err().to_string();
    assert!(error.contains("worker"), "{error}");
    // Over the managers' API, as `netctl node rm` on a manager sends it.
    let removed = admin.remove_node(&second.node_id).await.unwrap();
    assert_eq!(removed.name, "w2");
    let error = second_client.nodes().await.unwrap_err().to_string();
    assert!(error.contains("no longer known"), "{error}");
    assert!(admin.node_blocks(&second.node_id).await.unwrap().is_empty());
    assert!(admin.remove_node("w2").await.is_err());
    assert!(manager.remove_node(&manager_id.node_id).await.is_err());
    drop(second_client);

    // Removing a network drops its blocks.
    admin.remove_network("web").await.unwrap();
    assert!(worker
        .node_blocks(&worker_id.node_id)
        .await
        .unwrap()
        .is_empty());
    let error = admin.remove_network("web").await.unwrap_err();
    assert!(matches!(error, ControlError::NotFound(_)), "{error}");

    // Restart: the desired state survives.
    drop((admin, worker, anonymous));
    let reopened = restart(server, manager, &manager_dir, &manager_id).await;
    let networks = reopened.networks().await.unwrap();
    assert_eq!(networks, vec![db.clone()]);
    assert_eq!(reopened.nodes().await.unwrap().len(), 3);
    assert_eq!(
        reopened.join_token(Role::Worker, false).await.unwrap(),
        rotated
    );
    let block = reopened
        .allocate_block(&db.id, &worker_id.node_id)
        .await
        .unwrap();
    assert_eq!(block, "192.168.50.0/30".parse().unwrap());
}

#[tokio::test]
async fn init_refuses_bad_input_and_leaves_nothing() {
    let dir = TestDir::new("control-init");
    let error = Manager::init(
        dir.path(),
        "m1",
        localhost(),
        Some("10.0.0.0/26".parse().unwrap()),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(error.contains("smaller than a /24"), "{error}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let error = Manager::init(dir.path(), "", localhost(), None)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("not valid"), "{error}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let (manager, identity) = Manager::init(
        dir.path(),
        "m1",
        localhost(),
        Some("172.30.0.0/16".parse().unwrap()),
    )
    .await
    .unwrap();
    let network = manager
        .create_network(CreateNetwork {
            name: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(network.subnet, "172.30.0.0/24".parse().unwrap());
    drop(manager);
    // A store that belongs to another cluster is refused on open.
    let mut other = identity.clone();
    other.cluster_id = "someoneelse".into();
    assert!(Manager::open(dir.path(), &other).await.is_err());
    assert!(Manager::open(dir.path(), &identity).await.is_ok());
}

fn vip_of(service: &Service, network: &str) -> Option<Ipv4Addr> {
    service
        .vips
        .iter()
        .find(|v| v.network == network)
        .map(|v| v.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_vips_ports_updates_and_restart() {
    let dir = TestDir::new("control-services");
    let (manager, identity, server) = serve_new_cluster(&dir).await;
    let admin = ManagerClient::new(&identity).unwrap();
    let node = identity.node_id.clone();
    let network = |name: &str, subnet: Option<&str>| CreateNetwork {
        name: name.into(),
        subnet: subnet.map(|s| s.parse().unwrap()),
        ..Default::default()
    };
    let web = admin.create_network(network("web", None)).await.unwrap();
    let db = admin
        .create_network(network("db", Some("192.168.60.0/29")))
        .await
        .unwrap();
    let front = admin.create_network(network("front", None)).await.unwrap();
    admin
        .create_network(CreateNetwork {
            internal: true,
            ..network("vault", None)
        })
        .await
        .unwrap();
    let block = admin.allocate_block(&web.id, &node).await.unwrap();
    admin
        .reserve_ip(&web.id, &node, ip("10.0.0.254"))
        .await
        .unwrap();

    // vip: one VIP per network, inside the subnet, from the top, skipping
    // the reservation; outside every block.
    let tcp8080 = port(8080, Protocol::Tcp, PublishMode::Ingress);
    let api = admin
        .create_service(create(
            "api",
            &["web", "db"],
            EndpointMode::Vip,
            vec![tcp8080.clone()],
        ))
        .await
        .unwrap();
    assert_eq!(api.networks, ["web", "db"]);
    assert_eq!(api.vips.len(), 2);
    assert_eq!(vip_of(&api, "web"), Some(ip("10.0.0.253")));
    assert_eq!(vip_of(&api, "db"), Some(ip("192.168.60.6")));
    assert!(api.vips.iter().all(|v| !block.contains(&v.addr)));
    assert_eq!(api.vips[0].network_id, web.id);
    // A VIP cannot be reserved, nor end up in a block: the /29 has two /30
    // blocks and the VIP sits in the second.
    let error = admin
        .reserve_ip(&web.id, &node, ip("10.0.0.253"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("virtual IP"), "{error}");
    assert_eq!(
        admin.allocate_block(&db.id, &node).await.unwrap(),
        "192.168.60.0/30".parse().unwrap()
    );
    assert!(admin.allocate_block(&db.id, &node).await.is_err());

    // dnsrr: no VIP, host-mode ports only.
    let udp53 = port(53, Protocol::Udp, PublishMode::Host);
    let dns = admin
        .create_service(create("dns", &["web"], EndpointMode::Dnsrr, vec![udp53]))
        .await
        .unwrap();
    assert!(dns.vips.is_empty());
    assert_eq!(dns.networks, ["web"]);

    let refused = [
        (
            create("API", &["web"], EndpointMode::Vip, vec![]),
            "already exists",
        ),
        (
            create("x", &["nope"], EndpointMode::Vip, vec![]),
            "no network nope",
        ),
        (
            create("x", &[], EndpointMode::Vip, vec![]),
            "at least one network",
        ),
        (
            create("-x", &["web"], EndpointMode::Vip, vec![]),
            "DNS label",
        ),
        (
            create("x", &["web"], EndpointMode::Dnsrr, vec![tcp8080.clone()]),
            "dnsrr services cannot publish in ingress mode: use mode=host",
        ),
        (
            create("x", &["web"], EndpointMode::Vip, vec![tcp8080.clone()]),
            "8080/tcp is already used by service api",
        ),
        (
            create(
                "x",
                &["vault", "web"],
                EndpointMode::Vip,
                vec![port(9000, Protocol::Tcp, PublishMode::Ingress)],
            ),
            "cannot publish 9000/tcp: its network vault is internal",
        ),
        // Half of it would work: nothing is made.
        (
            create("x", &["front", "nope"], EndpointMode::Vip, vec![]),
            "no network nope",
        ),
    ];
    for (request, expected) in refused {
        let error = admin.create_service(request).await.unwrap_err().to_string();
        assert!(error.contains(expected), "{expected}: {error}");
        assert!(!error.contains('\n'));
    }
    let services = admin.services().await.unwrap();
    assert_eq!(services, vec![api.clone(), dns.clone()]);

    // Networks in use cannot go.
    let error = admin.remove_network("db").await.unwrap_err().to_string();
    assert!(error.contains("still used by service api"), "{error}");
    assert!(!error.contains('\n'));

    // Update: add front (a VIP there), leave db (its VIP released).
    let api = admin
        .update_service("api", update(&["front"], &["db"]))
        .await
        .unwrap();
    assert_eq!(api.networks, ["web", "front"]);
    assert_eq!(vip_of(&api, "db"), None);
    let front_vip = vip_of(&api, "front").unwrap();
    assert!(front.subnet.contains(&front_vip));
    assert_eq!(vip_of(&api, "web"), Some(ip("10.0.0.253")));
    let error = admin
        .update_service("api", update(&[], &["web", "front"]))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no network"), "{error}");
    // db is free again: its old VIP can be reserved, then the network removed.
    admin
        .reserve_ip(&db.id, &node, ip("192.168.60.6"))
        .await
        .unwrap();
    admin.remove_network("db").await.unwrap();

    // rm releases the VIPs: the next service gets the same address.
    let removed = admin.remove_service("api").await.unwrap();
    assert_eq!(removed.id, api.id);
    assert!(matches!(
        admin.remove_service("api").await.unwrap_err(),
        ControlError::NotFound(_)
    ));
    let again = admin
        .create_service(create("api2", &["web"], EndpointMode::Vip, vec![tcp8080]))
        .await
        .unwrap();
    assert_eq!(vip_of(&again, "web"), Some(ip("10.0.0.253")));

    // Restart: the services survive.
    drop(admin);
    let reopened = restart(server, manager, &dir, &identity).await;
    assert_eq!(reopened.services().await.unwrap(), vec![again.clone(), dns]);
    let error = reopened
        .remove_network("web")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("still used by service api2"), "{error}");
    reopened.remove_service(&again.id).await.unwrap();
    reopened.remove_service("dns").await.unwrap();
    reopened.remove_network("web").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_availability_and_labels_are_revisioned_manager_only_and_survive_restart() {
    let dir = TestDir::new("control-nodes");
    let worker_dir = TestDir::new("control-nodes-worker");
    let (manager, identity, server) = serve_new_cluster(&dir).await;
    let admin = ManagerClient::new(&identity).unwrap();
    let addr = identity.managers[0];
    let worker_token = admin.join_token(Role::Worker, false).await.unwrap();
    let worker_id = join(addr, &worker_token, "w1", localhost()).await.unwrap();
    worker_id.save(worker_dir.path()).unwrap();
    let worker = ManagerClient::new(&worker_id).unwrap();
    let store = manager.store();
    let drain = UpdateNode {
        availability: Some(Availability::Drain),
        add_labels: [("zone".to_owned(), "a".to_owned())].into(),
        ..Default::default()
    };

    // A manager drains w1: one revisioned write of its record.
    let before = store.revision().unwrap();
    let drained = admin.update_node("w1", drain.clone()).await.unwrap();
    assert_eq!(drained.availability, Availability::Drain);
    assert_eq!(drained.labels["zone"], "a");
    assert_eq!(store.revision().unwrap(), before + 1);
    let listed = worker.nodes().await.unwrap();
    let w1 = listed.iter().find(|n| n.name == "w1").unwrap();
    assert_eq!(w1, &drained);

    // Refused, changing nothing: from a worker, an unknown node, a bad label.
    let before = store.revision().unwrap();
    let error = worker
        .update_node("w1", UpdateNode::default())
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("this node is a worker"),
        "{error}"
    );
    let error = admin.update_node("w9", drain.clone()).await.unwrap_err();
    assert!(matches!(error, ControlError::NotFound(_)), "{error}");
    let bad = UpdateNode {
        availability: Some(Availability::Active),
        add_labels: [("bad key".to_owned(), String::new())].into(),
        ..Default::default()
    };
    let error = admin.update_node("w1", bad).await.unwrap_err();
    assert!(error.to_string().contains("label key"), "{error}");
    // The same again changes nothing either.
    admin.update_node("w1", drain).await.unwrap();
    assert_eq!(store.revision().unwrap(), before);

    // Back to active, by id; survives a restart.
    let active = UpdateNode {
        availability: Some(Availability::Active),
        ..Default::default()
    };
    let back = admin.update_node(&worker_id.node_id, active).await.unwrap();
    assert_eq!(back.availability, Availability::Active);
    assert_eq!(back.labels["zone"], "a");
    drop((admin, worker, store));
    let reopened = restart(server, manager, &dir, &identity).await;
    let nodes = reopened.nodes().await.unwrap();
    assert_eq!(nodes.iter().find(|n| n.name == "w1"), Some(&back));
}
