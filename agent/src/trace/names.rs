//! Who an address is: a task, a service's VIP or a node, and which service
//! a published port belongs to. Built from the agent's model (endpoints,
//! services, nodes) and swapped in whole.

use std::{collections::HashMap, net::Ipv4Addr};

use netagent_common::{TraceEvent, TRACE_FLAG_PUBLISHED, TRACE_FLAG_REMOTE_TASK};

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

/// The service a published port (port, IP protocol) belongs to: ports are
/// unique in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Published {
    service: String,
    /// The network of the table serving it (the service's first VIP).
    network: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct AddressBook {
    by_addr: HashMap<Ipv4Addr, Named>,
    published: HashMap<(u16, u8), Published>,
    /// Nodes' ingress addresses, by (node, network name).
    ingress_addrs: HashMap<(String, String), Ipv4Addr>,
    /// This node's underlay interface, where the published-port programs run.
    underlay: Option<String>,
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
        let mut published = HashMap::new();
        for service in services {
            for port in &service.ports {
                let proto = crate::ingress::plan::proto_number(port.protocol);
                published.insert(
                    (port.published, proto),
                    Published {
                        service: service.name.clone(),
                        network: service.vips.first().map(|v| v.network.clone()),
                    },
                );
            }
        }
        let mut ingress_addrs = HashMap::new();
        for ep in endpoints {
            if crate::ingress::is_pseudo_endpoint(ep) {
                ingress_addrs.insert((ep.node.clone(), ep.network.clone()), ep.ip);
                by_addr.insert(
                    ep.ip,
                    Named {
                        label: format!("node {} ingress", ep.node),
                        service: None,
                        network: Some(ep.network.clone()),
                        endpoint_id: None,
                    },
                );
                continue;
            }
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
        Self {
            by_addr,
            published,
            ingress_addrs,
            underlay: None,
        }
    }

    /// Names the interface of the published-port events.
    pub fn with_underlay(mut self, underlay: impl Into<String>) -> Self {
        self.underlay = Some(underlay.into());
        self
    }

    pub fn get(&self, addr: Ipv4Addr) -> Option<&Named> {
        self.by_addr.get(&addr)
    }

    /// The record of `event`, seen on `node`; `wall_offset_ns` turns the
    /// event's monotonic time into wall-clock time.
    pub fn resolve(&self, event: &TraceEvent, node: &str, wall_offset_ns: i128) -> TraceRecord {
        if event.flags & TRACE_FLAG_PUBLISHED != 0 {
            return self.resolve_published(event, node, wall_offset_ns);
        }
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
        let mut record = self.record(event, node, wall_offset_ns, interface);
        record.endpoint = endpoint
            .filter(|n| n.endpoint_id.is_some())
            .map(|n| n.label.clone());
        record.service = service;
        record.network = network;
        record
    }

    /// An event of the published-port programs: the interface is the
    /// underlay, the service is the published port's, the endpoint is the
    /// task (on this node or another).
    fn resolve_published(
        &self,
        event: &TraceEvent,
        node: &str,
        wall_offset_ns: i128,
    ) -> TraceRecord {
        let interface = match &self.underlay {
            Some(name) => name.clone(),
            None => format!("if{}", event.ifindex),
        };
        let mut record = self.record(event, node, wall_offset_ns, interface);
        let (published, task) = if decode::from_container(event.kind) {
            // Client -> node:published => client -> task:target.
            let forwarded = record.after != record.before;
            (record.before.dport, forwarded.then_some(record.after.dst))
        } else {
            // Task:target -> client => node:published -> client.
            (record.after.sport, Some(record.before.src))
        };
        let port = self.published.get(&(published, event.proto));
        let task = task.and_then(|addr| self.get(addr));
        record.endpoint = task
            .filter(|n| n.endpoint_id.is_some())
            .map(|n| n.label.clone());
        record.service = port.map(|p| p.service.clone());
        record.network = task
            .and_then(|n| n.network.clone())
            .or_else(|| port.and_then(|p| p.network.clone()));
        if decode::is_forward(event.kind) {
            let remote = event.flags & TRACE_FLAG_REMOTE_TASK != 0;
            record.task = Some(if remote { "remote" } else { "local" }.to_owned());
            if remote {
                record.snat = record
                    .network
                    .as_ref()
                    .and_then(|net| self.ingress_addrs.get(&(node.to_owned(), net.clone())))
                    .copied();
            }
        }
        if let Some(addr) = record.snat {
            if let Some(named) = self.get(addr) {
                record.names.insert(addr, named.label.clone());
            }
        }
        record
    }

    /// The record of `event` with its tuples named, its service, network
    /// and endpoint left for the caller.
    fn record(
        &self,
        event: &TraceEvent,
        node: &str,
        wall_offset_ns: i128,
        interface: String,
    ) -> TraceRecord {
        let before = decode::tuple(&event.before);
        let after = decode::tuple(&event.after);
        let names = addrs(&before, &after)
            .filter_map(|addr| self.get(addr).map(|n| (addr, n.label.clone())))
            .collect();
        let time_ns = (i128::from(event.timestamp_ns) + wall_offset_ns).max(0);
        TraceRecord {
            time_ns: u64::try_from(time_ns).unwrap_or(u64::MAX),
            node: node.to_owned(),
            interface,
            endpoint: None,
            verdict: decode::verdict(event.kind),
            reason: decode::reason(event.reason),
            protocol: decode::protocol(event),
            before,
            after,
            service: None,
            network: None,
            task: None,
            snat: None,
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
        TraceTuple, TRACE_CAPTURE_BYTES, TRACE_KIND_FORWARD, TRACE_KIND_REVERSE,
        TRACE_KIND_TRANSLATE,
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
            ports: vec![crate::model::PublishedPort {
                published: 8080,
                target: 80,
                protocol: Default::default(),
                mode: Default::default(),
            }],
        };
        let ingress = Endpoint::new(
            crate::ingress::pseudo_endpoint_id("n1", 4096),
            "appnet",
            "net1",
            "n1",
            Ipv4Addr::new(10, 0, 0, 254),
        );
        AddressBook::build(
            &[client, web, ingress],
            &[service],
            &[("n1".into(), Ipv4Addr::new(198, 18, 0, 11))],
        )
        .with_underlay("eth0")
    }

    fn event(kind: u8, before: TraceTuple, after: TraceTuple) -> TraceEvent {
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

    fn published(kind: u8, flags: u8, before: TraceTuple, after: TraceTuple) -> TraceEvent {
        TraceEvent {
            flags: TRACE_FLAG_PUBLISHED | flags,
            ..event(kind, before, after)
        }
    }

    #[test]
    fn a_published_port_forward_names_service_task_and_snat() {
        let sent = TraceTuple {
            saddr: ne([198, 18, 0, 200]),
            daddr: ne([198, 18, 0, 11]),
            sport: port(40000),
            dport: port(8080),
        };
        let now = TraceTuple {
            daddr: ne([10, 0, 0, 3]),
            dport: port(80),
            ..sent
        };
        let event = published(TRACE_KIND_FORWARD, TRACE_FLAG_REMOTE_TASK, sent, now);
        let record = book().resolve(&event, "n1", 0);
        assert_eq!(record.verdict, "forward");
        assert_eq!(record.interface, "eth0");
        assert_eq!(record.endpoint.as_deref(), Some("web.1"));
        assert_eq!(record.service.as_deref(), Some("web"));
        assert_eq!(record.network.as_deref(), Some("appnet"));
        assert_eq!(record.task.as_deref(), Some("remote"));
        assert_eq!(record.snat, Some(Ipv4Addr::new(10, 0, 0, 254)));
        assert_eq!(record.names[&Ipv4Addr::new(198, 18, 0, 11)], "node n1");
        assert_eq!(
            record.names[&Ipv4Addr::new(10, 0, 0, 254)],
            "node n1 ingress"
        );
        // A local task: no SNAT.
        let local = book().resolve(&published(TRACE_KIND_FORWARD, 0, sent, now), "n1", 0);
        assert_eq!(local.task.as_deref(), Some("local"));
        assert_eq!(local.snat, None);
    }

    #[test]
    fn a_published_port_reply_and_a_closed_port_name_the_service() {
        let reply = TraceTuple {
            saddr: ne([10, 0, 0, 3]),
            daddr: ne([198, 18, 0, 200]),
            sport: port(80),
            dport: port(40000),
        };
        let now = TraceTuple {
            saddr: ne([198, 18, 0, 11]),
            sport: port(8080),
            ..reply
        };
        let record = book().resolve(&published(TRACE_KIND_REVERSE, 0, reply, now), "n1", 0);
        assert_eq!(record.verdict, "reverse");
        assert_eq!(record.endpoint.as_deref(), Some("web.1"));
        assert_eq!(record.service.as_deref(), Some("web"));
        assert_eq!(record.task, None);

        let sent = TraceTuple {
            saddr: ne([198, 18, 0, 200]),
            daddr: ne([198, 18, 0, 11]),
            sport: port(40000),
            dport: port(8080),
        };
        let mut closed = published(netagent_common::TRACE_KIND_PASS, 0, sent, sent);
        closed.reason = netagent_common::TRACE_REASON_NO_BACKEND;
        let record = book().resolve(&closed, "n1", 0);
        assert_eq!(record.reason.as_deref(), Some("no-backend"));
        assert_eq!(record.service.as_deref(), Some("web"));
        assert_eq!(record.network.as_deref(), Some("appnet"));
        assert_eq!(record.endpoint, None);
        // UDP 8080 is not published.
        closed.proto = 17;
        assert_eq!(book().resolve(&closed, "n1", 0).service, None);
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
