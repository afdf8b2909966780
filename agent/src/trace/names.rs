//! Who an address is: a task, a service's VIP or a node, and which service
//! a published port belongs to. Built from the agent's model (endpoints,
//! services, nodes) and swapped in whole; every name is rendered as JSON
//! then (`json::Name`), so naming an event allocates nothing.

use std::{collections::HashMap, net::Ipv4Addr};

use netagent_api::trace::Tuple;
use netagent_common::{TraceEvent, TRACE_FLAG_PUBLISHED, TRACE_FLAG_REMOTE_TASK};

use super::{
    decode,
    json::{self, Name},
};
use crate::model::{Endpoint, Service};

/// What one address is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// The task name (else the endpoint id), `SERVICE (vip)` or the node name.
    pub label: Name,
    /// `"ADDR":"label"`: the address's entry in a record's `names`.
    names_entry: Box<[u8]>,
    /// The service of the task or VIP.
    pub service: Option<Name>,
    pub network: Option<Name>,
    /// For a task: its veth on its node, `ve-<id8>`.
    pub veth: Option<Name>,
}

impl Named {
    fn new(
        addr: Ipv4Addr,
        label: String,
        service: Option<String>,
        network: Option<String>,
        endpoint_id: Option<String>,
    ) -> Self {
        let label = Name::new(label);
        let mut names_entry = Vec::with_capacity(label.json().len() + 18);
        json::addr(&mut names_entry, addr);
        names_entry.push(b':');
        names_entry.extend_from_slice(label.json());
        Self {
            label,
            names_entry: names_entry.into(),
            service: service.map(Name::new),
            network: network.map(Name::new),
            veth: endpoint_id.map(|id| Name::new(crate::dataplane::endpoint::host_veth_name(&id))),
        }
    }
}

/// The service a published port (port, IP protocol) belongs to: ports are
/// unique in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Published {
    service: Name,
    /// The network of the table serving it (the service's first VIP).
    network: Option<Name>,
}

#[derive(Clone, Debug, Default)]
pub struct AddressBook {
    by_addr: HashMap<Ipv4Addr, Named>,
    published: HashMap<(u16, u8), Published>,
    /// Nodes' ingress addresses, by node, then network name.
    ingress_addrs: HashMap<String, HashMap<String, Ipv4Addr>>,
    /// This node's underlay interface, where the published-port programs run.
    underlay: Option<Name>,
}

/// The interface an event happened on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface<'a> {
    Named(&'a Name),
    /// `if<index>`: not one the address book knows.
    Index(u32),
}

/// An event with its addresses named, borrowing the book's names: what a
/// record says, before it is written (`batch`) or made a document
/// (`fixtures`' `AddressBook::resolve`, for the tests).
#[derive(Clone, Debug)]
pub struct Resolved<'a> {
    pub time_ns: u64,
    pub interface: Interface<'a>,
    pub endpoint: Option<&'a Name>,
    pub before: Tuple,
    pub after: Tuple,
    pub service: Option<&'a Name>,
    pub network: Option<&'a Name>,
    /// `local` or `remote`, for a published-port flow sent on to a task.
    pub task: Option<&'static str>,
    pub snat: Option<Ipv4Addr>,
    /// The named addresses among the tuples' and the SNAT address, in
    /// address order, each once.
    names: [Option<(Ipv4Addr, &'a Named)>; 5],
}

impl<'a> Resolved<'a> {
    /// The entries of the record's `names`, in address order.
    pub fn names(&self) -> impl Iterator<Item = (Ipv4Addr, &'a Named)> + '_ {
        self.names.iter().flatten().copied()
    }

    /// `"ADDR":"label"` for each entry of `names`, in order.
    pub fn names_entries(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.names().map(|(_, named)| &*named.names_entry)
    }
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
                Named::new(*addr, format!("node {name}"), None, None, None),
            );
        }
        for service in services {
            for vip in &service.vips {
                by_addr.insert(
                    vip.addr,
                    Named::new(
                        vip.addr,
                        format!("{} (vip)", service.name),
                        Some(service.name.clone()),
                        Some(vip.network.clone()),
                        None,
                    ),
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
                        service: Name::new(service.name.clone()),
                        network: service.vips.first().map(|v| Name::new(v.network.clone())),
                    },
                );
            }
        }
        let mut ingress_addrs: HashMap<String, HashMap<String, Ipv4Addr>> = HashMap::new();
        for ep in endpoints {
            if crate::ingress::is_pseudo_endpoint(ep) {
                ingress_addrs
                    .entry(ep.node.clone())
                    .or_default()
                    .insert(ep.network.clone(), ep.ip);
                by_addr.insert(
                    ep.ip,
                    Named::new(
                        ep.ip,
                        format!("node {} ingress", ep.node),
                        None,
                        Some(ep.network.clone()),
                        None,
                    ),
                );
                continue;
            }
            let label = if ep.name.is_empty() {
                crate::model::short_id(&ep.id)
            } else {
                ep.name.clone()
            };
            by_addr.insert(
                ep.ip,
                Named::new(
                    ep.ip,
                    label,
                    ep.service.clone(),
                    Some(ep.network.clone()),
                    Some(ep.id.clone()),
                ),
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
        self.underlay = Some(Name::new(underlay.into()));
        self
    }

    pub fn get(&self, addr: Ipv4Addr) -> Option<&Named> {
        self.by_addr.get(&addr)
    }

    /// What `event`, seen on `node`, is about; `wall_offset_ns` turns the
    /// event's monotonic time into wall-clock time.
    pub fn name(&self, event: &TraceEvent, node: &str, wall_offset_ns: i128) -> Resolved<'_> {
        let before = decode::tuple(&event.before);
        let after = decode::tuple(&event.after);
        let time_ns = (i128::from(event.timestamp_ns) + wall_offset_ns).max(0);
        let mut resolved = Resolved {
            time_ns: u64::try_from(time_ns).unwrap_or(u64::MAX),
            interface: Interface::Index(event.ifindex),
            endpoint: None,
            before,
            after,
            service: None,
            network: None,
            task: None,
            snat: None,
            names: [None; 5],
        };
        if event.flags & TRACE_FLAG_PUBLISHED != 0 {
            self.name_published(event, node, &mut resolved);
        } else {
            self.name_vip(event, &mut resolved);
        }
        // Unnamed addresses (the SNAT one too) are skipped below.
        let addrs = [before.src, before.dst, after.src, after.dst]
            .into_iter()
            .filter(|a| !a.is_unspecified())
            .chain(resolved.snat);
        let mut count = 0;
        for addr in addrs {
            let Some(named) = self.get(addr) else {
                continue;
            };
            let found = &mut resolved.names[..count];
            if found.iter().flatten().any(|(a, _)| *a == addr) {
                continue;
            }
            resolved.names[count] = Some((addr, named));
            count += 1;
        }
        resolved.names[..count].sort_unstable_by_key(|entry| entry.map(|(a, _)| a));
        resolved
    }

    /// An event of the VIP programs: the local container is the client.
    fn name_vip<'a>(&'a self, event: &TraceEvent, resolved: &mut Resolved<'a>) {
        let (before, after) = (resolved.before, resolved.after);
        // The local container is the client side: the source of what it
        // sent, the destination of what it receives. The VIP: where the
        // container sent it, or what the reply now comes from.
        let (local, vip) = if decode::from_container(event.kind) {
            (before.src, before.dst)
        } else {
            (before.dst, after.src)
        };
        let endpoint = self.get(local);
        let vip = self.get(vip);
        resolved.service = vip.and_then(|n| n.service.as_ref());
        resolved.network = vip
            .and_then(|n| n.network.as_ref())
            .or_else(|| endpoint.and_then(|n| n.network.as_ref()));
        if let Some((veth, label)) =
            endpoint.and_then(|n| n.veth.as_ref().map(|veth| (veth, &n.label)))
        {
            resolved.interface = Interface::Named(veth);
            resolved.endpoint = Some(label);
        }
    }

    /// An event of the published-port programs: the interface is the
    /// underlay, the service is the published port's, the endpoint is the
    /// task (on this node or another).
    fn name_published<'a>(&'a self, event: &TraceEvent, node: &str, resolved: &mut Resolved<'a>) {
        if let Some(underlay) = &self.underlay {
            resolved.interface = Interface::Named(underlay);
        }
        let (before, after) = (resolved.before, resolved.after);
        let (published, task) = if decode::from_container(event.kind) {
            // Client -> node:published => client -> task:target.
            let forwarded = after != before;
            (before.dport, forwarded.then_some(after.dst))
        } else {
            // Task:target -> client => node:published -> client.
            (after.sport, Some(before.src))
        };
        let port = self.published.get(&(published, event.proto));
        let task = task.and_then(|addr| self.get(addr));
        resolved.endpoint = task.filter(|n| n.veth.is_some()).map(|n| &n.label);
        resolved.service = port.map(|p| &p.service);
        resolved.network = task
            .and_then(|n| n.network.as_ref())
            .or_else(|| port.and_then(|p| p.network.as_ref()));
        if decode::is_forward(event.kind) {
            let remote = event.flags & TRACE_FLAG_REMOTE_TASK != 0;
            resolved.task = Some(if remote { "remote" } else { "local" });
            if remote {
                resolved.snat = resolved.network.and_then(|net| {
                    self.ingress_addrs
                        .get(node)
                        .and_then(|nets| nets.get(net.text()))
                        .copied()
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use netagent_common::{
        TraceTuple, TRACE_KIND_FORWARD, TRACE_KIND_REVERSE, TRACE_KIND_TRANSLATE,
    };

    use super::*;
    use crate::trace::fixtures::{self, event, ne, port};

    fn book() -> AddressBook {
        fixtures::book(&fixtures::Names {
            network: "appnet",
            client: "client.1",
            service: "web",
            node: "n1",
        })
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
        let mut translated = event(TRACE_KIND_TRANSLATE, sent, now);
        translated.captured_len = 2;
        let record = book().resolve(&translated, "n1", 5);
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
