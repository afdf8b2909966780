//! `netctl --format json` prints the local API's documents as they are: a
//! public contract for scripts. Each document, filled with fixed values, must
//! render byte for byte as its golden file in `tests/json_contract/`
//! (`UPDATE_GOLDEN=1 cargo test --test json_contract` rewrites them, for a
//! change to the contract made on purpose).

// A test may unwrap: a panic is a failed test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use netagent_api::{
    model::{
        Availability, Endpoint, EndpointMode, Health, Mac, Network, NodeInfo, NodeStatus, Protocol,
        PublishMode, PublishedPort, Role, Service, ServiceVip,
    },
    types::{
        BackendState, ClusterInfo, Direction, InterfaceCounters, ProgramStatus, ServiceDatapath,
        ServiceInspect, Status, TokenResponse, TraceStats, VipState,
    },
};
use serde::Serialize;

/// What netctl writes for `value`: pretty JSON and a newline.
fn printed<T: Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("serialize");
    text.push('\n');
    text
}

fn assert_golden(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/json_contract")
        .join(format!("{name}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).expect("write golden");
        return;
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    assert_eq!(text, golden, "the JSON of `{name}` changed");
}

fn network() -> Network {
    Network {
        name: "appnet".into(),
        id: "u9yvo5vbzo3in1hdgqtjmw9bo".into(),
        vni: 4096,
        subnet: "10.10.0.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 10, 0, 1),
        internal: false,
        mtu: Some(1400),
    }
}

fn endpoint() -> Endpoint {
    Endpoint {
        id: "ed6a3e721e2195b9612a5e5858adc6b2f38a9d4535a8a52a56714a6f4e66b0bf".into(),
        name: "web.1".into(),
        network: "appnet".into(),
        network_id: "u9yvo5vbzo3in1hdgqtjmw9bo".into(),
        service: Some("web".into()),
        node: "n2".into(),
        ip: Ipv4Addr::new(10, 10, 0, 5),
        mac: Mac::from_ipv4(Ipv4Addr::new(10, 10, 0, 5)),
        aliases: vec!["www".into()],
        health: Health::Unhealthy,
    }
}

fn service() -> Service {
    Service {
        name: "web".into(),
        id: "k2b0yqj5fp9m4g2c8x1z7w3vd".into(),
        endpoint_mode: EndpointMode::Vip,
        vips: vec![ServiceVip {
            network: "appnet".into(),
            network_id: "u9yvo5vbzo3in1hdgqtjmw9bo".into(),
            addr: Ipv4Addr::new(10, 10, 0, 254),
        }],
        networks: vec!["appnet".into()],
        ports: vec![
            PublishedPort {
                published: 8080,
                target: 80,
                protocol: Protocol::Tcp,
                mode: PublishMode::Ingress,
            },
            PublishedPort {
                published: 5353,
                target: 53,
                protocol: Protocol::Udp,
                mode: PublishMode::Host,
            },
        ],
    }
}

#[test]
fn status_is_unchanged() {
    let status = Status {
        node_name: "n1".into(),
        version: "0.1.0".into(),
        uptime_secs: 42,
        advertise_addr: "198.18.0.11".parse().unwrap(),
        bpffs: "/sys/fs/bpf/netagent".into(),
        programs: vec![ProgramStatus {
            name: "count_ingress".into(),
            kind: "tc".into(),
            ifname: "eth0".into(),
            direction: Direction::Ingress,
            prog_id: 17,
        }],
        interfaces: vec![InterfaceCounters {
            ifname: "eth0".into(),
            ifindex: 2,
            rx_packets: 10,
            rx_bytes: 1000,
            tx_packets: 11,
            tx_bytes: 1100,
        }],
        cluster_id: Some("xk64jfgm9ulz5a9migaoqhphi".into()),
        role: Some(Role::Manager),
        gossip_rejected_packets: Some(3),
        trace: Some(TraceStats {
            tracers: 1,
            all_packets: 0,
            emitted: 5,
            lost: 0,
        }),
    };
    assert_golden("status", &printed(&status));
}

#[test]
fn cluster_documents_are_unchanged() {
    let info = ClusterInfo {
        cluster_id: "xk64jfgm9ulz5a9migaoqhphi".into(),
        node_id: "gz4yjjahp71j4c6hede7xf9wz".into(),
        node_name: "n1".into(),
        role: Role::Worker,
        managers: vec!["198.18.0.11:2377".parse().unwrap()],
    };
    assert_golden("cluster_info", &printed(&info));
    let token = TokenResponse {
        token: "NATKN-1-abc-def".into(),
    };
    assert_golden("token", &printed(&token));
}

#[test]
fn node_list_is_unchanged() {
    let nodes = vec![NodeInfo {
        name: "n1".into(),
        id: "gz4yjjahp71j4c6hede7xf9wz".into(),
        role: Role::Manager,
        availability: Availability::Drain,
        status: NodeStatus::Ready,
        addr: "198.18.0.11".parse().unwrap(),
        labels: BTreeMap::from([("zone".into(), "a".into())]),
    }];
    assert_golden("node_ls", &printed(&nodes));
}

#[test]
fn network_endpoint_and_service_are_unchanged() {
    assert_golden("network", &printed(&network()));
    assert_golden("endpoint_ls", &printed(&vec![endpoint()]));
    assert_golden("service", &printed(&service()));
}

/// `service inspect`: the service's fields and `datapath`, the VIPs'
/// backends as the load balancer sees them; printed with its keys sorted.
#[test]
fn service_inspect_is_unchanged() {
    let datapath = vec![VipState {
        vip: Ipv4Addr::new(10, 10, 0, 254),
        table_slot: 0,
        table_size: 1021,
        table: vec![(Ipv4Addr::new(10, 10, 0, 5), 1021)],
        backends: vec![BackendState {
            id: 1,
            ip: Ipv4Addr::new(10, 10, 0, 5),
            state: "active".into(),
            connections: 7,
        }],
    }];
    assert_golden(
        "service_inspect",
        &printed_by_netctl(ServiceInspect {
            service: service(),
            datapath: Some(ServiceDatapath::Vips(datapath)),
        }),
    );
    assert_golden(
        "service_inspect_error",
        &printed_by_netctl(ServiceInspect {
            service: service(),
            datapath: Some(ServiceDatapath::Unreadable(
                "the VIP maps cannot be read".into(),
            )),
        }),
    );
}

/// What `netctl service inspect` prints of what the agent sent: the
/// document read back from the wire, printed through a JSON value.
fn printed_by_netctl(sent: ServiceInspect) -> String {
    let wire = serde_json::to_string(&sent).expect("serialize");
    let read: ServiceInspect = serde_json::from_str(&wire).expect("read back");
    assert_eq!(read, sent, "the document does not survive the wire");
    printed(&serde_json::to_value(&read).expect("to a value"))
}
