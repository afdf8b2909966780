//! Events and address books for the trace unit tests (`names`, `batch`).

use std::net::Ipv4Addr;

use netagent_common::{TraceEvent, TraceTuple, TRACE_CAPTURE_BYTES};

use super::names::AddressBook;
use crate::model::{Endpoint, PublishedPort, Service, ServiceVip};

/// An address as the programs write it (network order in a native u32).
pub fn ne(ip: [u8; 4]) -> u32 {
    u32::from_ne_bytes(ip)
}

/// A port as the programs write it (network order in a native u16).
pub fn port(p: u16) -> u16 {
    u16::from_ne_bytes(p.to_be_bytes())
}

pub fn tuple(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> TraceTuple {
    TraceTuple {
        saddr: ne(src),
        daddr: ne(dst),
        sport: port(sport),
        dport: port(dport),
    }
}

/// A TCP event of service 1 on ifindex 9, no packet bytes captured.
pub fn event(kind: u8, before: TraceTuple, after: TraceTuple) -> TraceEvent {
    TraceEvent {
        timestamp_ns: 1_000,
        ifindex: 9,
        kind,
        reason: 0,
        proto: 6,
        flags: 0,
        before,
        after,
        service_id: 1,
        packet_len: 60,
        captured_len: 0,
        pad2: 0,
        headers: [0; TRACE_CAPTURE_BYTES],
    }
}

/// The names a test book gives its network, client, service and node.
pub struct Names {
    pub network: &'static str,
    pub client: &'static str,
    pub service: &'static str,
    pub node: &'static str,
}

/// On network `net1` (10.0.0.0/24): a client (.2) on node n1, task web.1
/// (.3) of the service (VIP .250, publishes 8080 → 80) on n2, an unnamed
/// endpoint (.4), n1's ingress address (.254); the node at 198.18.0.11.
pub fn book(names: &Names) -> AddressBook {
    let endpoint = |id: &str, node: &str, last: u8| {
        Endpoint::new(
            id,
            names.network,
            "net1",
            node,
            Ipv4Addr::new(10, 0, 0, last),
        )
    };
    let mut client = endpoint("c0ffee001234", "n1", 2);
    client.name = names.client.into();
    let mut web = endpoint("beef00005678", "n2", 3);
    web.name = "web.1".into();
    web.service = Some(names.service.into());
    let unnamed = endpoint("abcdef000000", "n1", 4);
    let ingress = endpoint(&crate::ingress::pseudo_endpoint_id("n1", 4096), "n1", 254);
    let service = Service {
        name: names.service.into(),
        id: "s1".into(),
        endpoint_mode: Default::default(),
        vips: vec![ServiceVip {
            network: names.network.into(),
            network_id: "net1".into(),
            addr: Ipv4Addr::new(10, 0, 0, 250),
        }],
        networks: vec![names.network.into()],
        ports: vec![PublishedPort {
            published: 8080,
            target: 80,
            protocol: Default::default(),
            mode: Default::default(),
        }],
    };
    AddressBook::build(
        &[client, web, unnamed, ingress],
        &[service],
        &[(names.node.into(), Ipv4Addr::new(198, 18, 0, 11))],
    )
    .with_underlay("eth0")
}
