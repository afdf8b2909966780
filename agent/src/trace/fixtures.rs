//! Events and address books for the trace unit tests (`names`, `batch`),
//! and records made as documents, to compare the stream's lines with.

use std::net::Ipv4Addr;

use netagent_api::trace::TraceRecord;
use netagent_common::{TraceEvent, TraceTuple, TRACE_CAPTURE_BYTES};

use super::{
    decode::{self, protocol_word, reason_word, verdict_word},
    json::Name,
    names::{AddressBook, Interface},
};
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

/// The words of an event's codes as a record holds them (the stream's
/// lines are written from `decode`'s `*_word` directly).
pub fn verdict(kind: u8) -> String {
    match verdict_word(kind) {
        Some(word) => word.to_owned(),
        None => format!("kind-{kind}"),
    }
}

pub fn reason(reason: u8) -> Option<String> {
    match reason_word(reason) {
        Ok(word) => word.map(str::to_owned),
        Err(other) => Some(format!("reason-{other}")),
    }
}

pub fn protocol(event: &TraceEvent) -> String {
    match protocol_word(event) {
        Ok(word) => word.to_owned(),
        Err(other) => other.to_string(),
    }
}

impl AddressBook {
    /// The record of `event` as a document (`netctl` reads lines back into
    /// this; the stream's lines are written from `name` directly).
    pub fn resolve(&self, event: &TraceEvent, node: &str, wall_offset_ns: i128) -> TraceRecord {
        let r = self.name(event, node, wall_offset_ns);
        let text = |name: Option<&Name>| name.map(|n| n.text().to_owned());
        TraceRecord {
            time_ns: r.time_ns,
            node: node.to_owned(),
            interface: match r.interface {
                Interface::Named(name) => name.text().to_owned(),
                Interface::Index(index) => format!("if{index}"),
            },
            endpoint: text(r.endpoint),
            verdict: verdict(event.kind),
            reason: reason(event.reason),
            protocol: protocol(event),
            before: r.before,
            after: r.after,
            service: text(r.service),
            network: text(r.network),
            task: r.task.map(str::to_owned),
            snat: r.snat,
            names: r
                .names()
                .map(|(addr, named)| (addr, named.label.text().to_owned()))
                .collect(),
            packet_len: event.packet_len,
            headers: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                decode::headers(event),
            ),
        }
    }
}
