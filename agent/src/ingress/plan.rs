//! What this node's published ports should be, from the services and the
//! endpoints it sees. Pure, so that it is tested without a kernel.
//!
//! - Ingress mode: every node opens the port; it is served by the table of
//!   the service's VIP (its first network), so backends and their states are
//!   the VIP's own.
//! - Host mode: only a node with a local task of the service opens the port;
//!   it gets its own table (a `host_key` entry in LB_SERVICES) holding the
//!   node's own tasks only.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use crate::{
    lb::plan::{Backend, Vip},
    model::{Endpoint, Health, Protocol, PublishMode, Service},
};

/// One port to write into INGRESS_PORTS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub published: u16,
    pub protocol: Protocol,
    pub target: u16,
    /// The LB_SERVICES key whose table serves it.
    pub table: Ipv4Addr,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ports: Vec<Port>,
    /// The host-mode ports' tables, to program with the VIPs.
    pub host_tables: BTreeMap<Ipv4Addr, Vip>,
    /// Networks (ids) carrying an ingress-mode port: every node needs their
    /// sandbox and a return path for remote tasks.
    pub networks: BTreeSet<String>,
}

/// The IP protocol number.
pub fn proto_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    }
}

/// The LB_SERVICES key of a host-mode port's table: `0.<proto>.<port>`,
/// in 0.0.0.0/8, which no VIP and no packet's destination ever is.
pub fn host_key(published: u16, protocol: Protocol) -> Ipv4Addr {
    let [hi, lo] = published.to_be_bytes();
    Ipv4Addr::new(0, proto_number(protocol), hi, lo)
}

fn is_task_of(endpoint: &Endpoint, service: &Service) -> bool {
    endpoint
        .service
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case(&service.name) || s == service.id)
}

/// The plan of node `node` from the `services` and every endpoint it sees
/// (its own included; copies may repeat).
pub fn plan(node: &str, services: &[Service], endpoints: &[Endpoint]) -> Plan {
    let mut out = Plan::default();
    for service in services {
        for port in &service.ports {
            match port.mode {
                PublishMode::Ingress => {
                    let Some(vip) = service.vips.first() else {
                        continue;
                    };
                    out.networks.insert(vip.network_id.clone());
                    out.ports.push(Port {
                        published: port.published,
                        protocol: port.protocol,
                        target: port.target,
                        table: vip.addr,
                    });
                }
                PublishMode::Host => {
                    let mut backends: Vec<Backend> = endpoints
                        .iter()
                        .filter(|e| e.node == node && is_task_of(e, service))
                        .map(|e| Backend {
                            ip: e.ip,
                            node: e.node.clone(),
                            active: e.health == Health::Healthy,
                        })
                        .collect();
                    backends.sort();
                    backends.dedup_by(|a, b| a.ip == b.ip);
                    if backends.is_empty() {
                        // No local task: the port stays closed here.
                        continue;
                    }
                    let key = host_key(port.published, port.protocol);
                    out.host_tables.insert(
                        key,
                        Vip {
                            service: service.name.clone(),
                            network_id: String::new(),
                            addr: key,
                            backends,
                        },
                    );
                    out.ports.push(Port {
                        published: port.published,
                        protocol: port.protocol,
                        target: port.target,
                        table: key,
                    });
                }
            }
        }
    }
    out.ports
        .sort_by_key(|p| (p.published, proto_number(p.protocol)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EndpointMode, PublishedPort, ServiceVip};

    fn task(id: &str, node: &str, ip: [u8; 4], health: Health) -> Endpoint {
        Endpoint {
            service: Some("web".into()),
            health,
            ..Endpoint::new(id, "appnet", "net1", node, Ipv4Addr::from(ip))
        }
    }

    fn web(mode: PublishMode) -> Service {
        Service {
            name: "web".into(),
            id: "id-web".into(),
            endpoint_mode: EndpointMode::Vip,
            vips: vec![ServiceVip {
                network: "appnet".into(),
                network_id: "net1".into(),
                addr: Ipv4Addr::new(10, 10, 0, 250),
            }],
            networks: vec!["appnet".into()],
            ports: vec![PublishedPort {
                published: 8080,
                target: 80,
                protocol: Protocol::Tcp,
                mode,
            }],
        }
    }

    #[test]
    fn ingress_ports_open_everywhere_on_the_vip_table() {
        let plan = plan("n3", &[web(PublishMode::Ingress)], &[]);
        assert_eq!(
            plan.ports,
            vec![Port {
                published: 8080,
                protocol: Protocol::Tcp,
                target: 80,
                table: Ipv4Addr::new(10, 10, 0, 250),
            }]
        );
        assert!(plan.host_tables.is_empty());
        assert_eq!(plan.networks, BTreeSet::from(["net1".to_string()]));
    }

    #[test]
    fn host_ports_open_only_with_a_local_task_and_hold_only_local_tasks() {
        let endpoints = [
            task("a", "n1", [10, 10, 0, 2], Health::Healthy),
            task("a", "n1", [10, 10, 0, 2], Health::Healthy),
            task("b", "n1", [10, 10, 0, 3], Health::Unhealthy),
            task("c", "n2", [10, 10, 0, 18], Health::Healthy),
        ];
        let services = [web(PublishMode::Host)];
        assert!(plan("n3", &services, &endpoints).ports.is_empty());
        let n1 = plan("n1", &services, &endpoints);
        let key = host_key(8080, Protocol::Tcp);
        assert_eq!(key, Ipv4Addr::new(0, 6, 0x1f, 0x90));
        assert_eq!(n1.ports[0].table, key);
        let table = &n1.host_tables[&key];
        assert_eq!(table.active(), vec![Ipv4Addr::new(10, 10, 0, 2)]);
        assert_eq!(table.backends.len(), 2);
        assert!(n1.networks.is_empty());
    }
}
