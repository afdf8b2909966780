//! Who an address is: a task, a service's VIP or a node. Built from the
//! agent's model (endpoints, services, nodes) and swapped in whole.

use std::{collections::HashMap, net::Ipv4Addr};

use netagent_common::TraceEvent;

use super::{
    decode,
    record::{TraceRecord, Tuple},
};
use crate::model::{Endpoint, Service};

/// What one address is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// The task name (else the endpoint id), `SERVICE (vip)` or the node name.
    pub label: String,
    /// The service of the task or VIP.
    pub service: Option<String>,
    pub network: Option<String>,
    /// The endpoint id, for a task: its veth is `ve-<id8>` on its node.
    pub endpoint_id: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct AddressBook {
    by_addr: HashMap<Ipv4Addr, Named>,
}

impl AddressBook {
    /// `nodes` are (name, underlay address) pairs.
    pub fn build(
        endpoints: &[Endpoint],
        services: &[Service],
        nodes: &[(String, Ipv4Addr)],
    ) -> Self {
        let mut by_addr = HashMap::new();
        for (name, addr) in nodes {
            by_addr.insert(
                *addr,
                Named {
                    label: format!("node {name}"),
                    service: None,
                    network: None,
                    endpoint_id: None,
                },
            );
        }
        for service in services {
            for vip in &service.vips {
                by_addr.insert(
                    vip.addr,
                    Named {
                        label: format!("{} (vip)", service.name),
                        service: Some(service.name.clone()),
                        network: Some(vip.network.clone()),
                        endpoint_id: None,
                    },
                );
            }
        }
        for ep in endpoints {
            let label = if ep.name.is_empty() {
                crate::cli::short_id(&ep.id)
            } else {
                ep.name.clone()
            };
            by_addr.insert(
                ep.ip,
                Named {
                    label,
                    service: ep.service.clone(),
                    network: Some(ep.network.clone()),
                    endpoint_id: Some(ep.id.clone()),
                },
            );
        }
        Self { by_addr }
    }

    pub fn get(&self, addr: Ipv4Addr) -> Option<&Named> {
        self.by_addr.get(&addr)
    }

    /// The record of `event`, seen on `node`; `wall_offset_ns` turns the
    /// event's monotonic time into wall-clock time.
    pub fn resolve(&self, event: &TraceEvent, node: &str, wall_offset_ns: i128) -> TraceRecord {
        let before = decode::tuple(&event.before);
        let after = decode::tuple(&event.after);
        // The local container is the client side: the source of what it
        // sent, the destination of what it receives.
        let local = if decode::from_container(event.kind) {
            before.src
        } else {
            before.dst
        };
        // The VIP: where the container sent it, or what the reply now
        // comes from.
        let vip = if decode::from_container(event.kind) {
            before.dst
        } else {
            after.src
        };
        let endpoint = self.get(local);
        let service = self.get(vip).and_then(|n| n.service.clone());
        let network = self
            .get(vip)
            .and_then(|n| n.network.clone())
            .or_else(|| endpoint.and_then(|n| n.network.clone()));
        let interface = match endpoint.and_then(|n| n.endpoint_id.as_deref()) {
            Some(id) => crate::dataplane::endpoint::host_veth_name(id),
            None => format!("if{}", event.ifindex),
        };
        let names = addrs(&before, &after)
            .filter_map(|addr| self.get(addr).map(|n| (addr, n.label.clone())))
            .collect();
        let time_ns = (i128::from(event.timestamp_ns) + wall_offset_ns).max(0);
        TraceRecord {
            time_ns: u64::try_from(time_ns).unwrap_or(u64::MAX),
            node: node.to_owned(),
            interface,
            endpoint: endpoint
                .filter(|n| n.endpoint_id.is_some())
                .map(|n| n.label.clone()),
            verdict: decode::verdict(event.kind),
            reason: decode::reason(event.reason),
            protocol: decode::protocol(event),
            before,
            after,
            service,
            network,
            names,
            packet_len: event.packet_len,
            headers: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                decode::headers(event),
            ),
        }
    }
}

fn addrs(before: &Tuple, after: &Tuple) -> impl Iterator<Item = Ipv4Addr> {
    [before.src, before.dst, after.src, after.dst]
        .into_iter()
        .filter(|a| !a.is_unspecified())
}

#[cfg(test)]
mod tests {
    use netagent_common::{
        TraceTuple, TRACE_CAPTURE_BYTES, TRACE_KIND_REVERSE, TRACE_KIND_TRANSLATE,
    };

    use super::*;
    use crate::model::{Service, ServiceVip};

    fn ne(ip: [u8; 4]) -> u32 {
        u32::from_ne_bytes(ip)
    }

    fn port(p: u16) -> u16 {
        u16::from_ne_bytes(p.to_be_bytes())
    }

    fn book() -> AddressBook {
        let mut client = Endpoint::new(
            "c0ffee001234",
            "appnet",
            "net1",
            "n1",
            Ipv4Addr::new(10, 0, 0, 2),
        );
        client.name = "client.1".into();
        let mut web = Endpoint::new(
            "beef00005678",
            "appnet",
            "net1",
            "n2",
            Ipv4Addr::new(10, 0, 0, 3),
        );
        web.name = "web.1".into();
        web.service = Some("web".into());
        let service = Service {
            name: "web".into(),
            id: "s1".into(),
            endpoint_mode: Default::default(),
            vips: vec![ServiceVip {
                network: "appnet".into(),
                network_id: "net1".into(),
                addr: Ipv4Addr::new(10, 0, 0, 250),
            }],
            networks: vec!["appnet".into()],
            ports: vec![],
        };
        AddressBook::build(
            &[client, web],
            &[service],
            &[("n1".into(), Ipv4Addr::new(198, 18, 0, 11))],
        )
    }

    fn event(kind: u8, before: TraceTuple, after: TraceTuple) -> TraceEvent {
        TraceEvent {
            timestamp_ns: 1_000,
            ifindex: 9,
            kind,
            reason: 0,
            proto: 6,
            pad: 0,
            before,
            after,
            service_id: 1,
            packet_len: 60,
            captured_len: 2,
            pad2: 0,
            headers: [0; TRACE_CAPTURE_BYTES],
        }
    }

    #[test]
    fn a_translation_names_client_service_and_backend() {
        let sent = TraceTuple {
            saddr: ne([10, 0, 0, 2]),
            daddr: ne([10, 0, 0, 250]),
            sport: port(40000),
            dport: port(80),
        };
        let now = TraceTuple {
            daddr: ne([10, 0, 0, 3]),
            ..sent
        };
        let record = book().resolve(&event(TRACE_KIND_TRANSLATE, sent, now), "n1", 5);
        assert_eq!(record.time_ns, 1_005);
        assert_eq!(record.verdict, "translate");
        assert_eq!(record.endpoint.as_deref(), Some("client.1"));
        assert_eq!(record.interface, "ve-c0ffee00");
        assert_eq!(record.service.as_deref(), Some("web"));
        assert_eq!(record.network.as_deref(), Some("appnet"));
        assert_eq!(record.names[&Ipv4Addr::new(10, 0, 0, 3)], "web.1");
        assert_eq!(record.names[&Ipv4Addr::new(10, 0, 0, 250)], "web (vip)");
        assert_eq!(record.headers, "AAA=");
    }

    #[test]
    fn a_reverse_translation_is_about_the_receiving_container() {
        let reply = TraceTuple {
            saddr: ne([10, 0, 0, 3]),
            daddr: ne([10, 0, 0, 2]),
            sport: port(80),
            dport: port(40000),
        };
        let now = TraceTuple {
            saddr: ne([10, 0, 0, 250]),
            ..reply
        };
        let record = book().resolve(&event(TRACE_KIND_REVERSE, reply, now), "n1", 0);
        assert_eq!(record.endpoint.as_deref(), Some("client.1"));
        assert_eq!(record.service.as_deref(), Some("web"));
    }

    #[test]
    fn unknown_addresses_stay_unnamed() {
        let t = TraceTuple {
            saddr: ne([192, 0, 2, 1]),
            daddr: ne([192, 0, 2, 2]),
            sport: 0,
            dport: 0,
        };
        let record = book().resolve(&event(TRACE_KIND_TRANSLATE, t, t), "n1", 0);
        assert!(record.names.is_empty());
        assert_eq!(record.interface, "if9");
        assert_eq!(record.service, None);
    }
}
