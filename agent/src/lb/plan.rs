//! What the load balancer should hold: every VIP of every `vip`-mode service
//! and its tasks on that network, from the services and the endpoints of
//! the gossip view. Pure, so that it is tested without a kernel.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};

use crate::model::{Endpoint, EndpointMode, Health, Service, ServiceVip};

/// One backend of one VIP.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    pub ip: Ipv4Addr,
    /// The node the task runs on.
    pub node: String,
    /// Healthy: takes new flows. Otherwise draining: only its open flows.
    pub active: bool,
}

/// One VIP and its backends, sorted by address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vip {
    pub service: String,
    pub network_id: String,
    pub addr: Ipv4Addr,
    pub backends: Vec<Backend>,
}

impl Vip {
    /// The addresses of the backends that take new flows.
    pub fn active(&self) -> Vec<Ipv4Addr> {
        self.backends
            .iter()
            .filter(|b| b.active)
            .map(|b| b.ip)
            .collect()
    }
}

/// The VIPs to program, by address. Endpoints may repeat (local and gossip
/// copies); a task counts once. Linear in services plus endpoints: the
/// endpoints are grouped by network and service first.
pub fn desired(services: &[Service], endpoints: &[Endpoint]) -> BTreeMap<Ipv4Addr, Vip> {
    // network id -> service as the endpoint names it, lower-cased -> tasks.
    let mut tasks: HashMap<&str, HashMap<Cow<'_, str>, Vec<&Endpoint>>> = HashMap::new();
    for e in endpoints {
        if let Some(service) = &e.service {
            tasks
                .entry(e.network_id.as_str())
                .or_default()
                .entry(lower(service))
                .or_default()
                .push(e);
        }
    }
    let mut vips = BTreeMap::new();
    for service in services {
        if service.endpoint_mode != EndpointMode::Vip {
            continue;
        }
        let name = lower(&service.name);
        let id = lower(&service.id);
        for vip in &service.vips {
            let Some(network) = tasks.get(vip.network_id.as_str()) else {
                vips.insert(vip.addr, Vip::of(service, vip, Vec::new()));
                continue;
            };
            // By name (any case), or by id (exactly).
            let by_name = network.get(&name).into_iter().flatten();
            let by_id = network
                .get(&id)
                .filter(|_| id != name)
                .into_iter()
                .flatten()
                .filter(|e| e.service.as_deref() == Some(service.id.as_str()));
            let mut seen: Vec<&str> = Vec::new();
            let mut backends: Vec<Backend> = Vec::new();
            for e in by_name.chain(by_id) {
                if seen.contains(&e.id.as_str()) {
                    continue;
                }
                seen.push(&e.id);
                backends.push(Backend {
                    ip: e.ip,
                    node: e.node.clone(),
                    active: e.health == Health::Healthy,
                });
            }
            backends.sort();
            backends.dedup_by(|a, b| a.ip == b.ip);
            vips.insert(vip.addr, Vip::of(service, vip, backends));
        }
    }
    vips
}

/// `text` in lower case, copied only when it has upper-case letters.
fn lower(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

impl Vip {
    fn of(service: &Service, vip: &ServiceVip, backends: Vec<Backend>) -> Self {
        Vip {
            service: service.name.clone(),
            network_id: vip.network_id.clone(),
            addr: vip.addr,
            backends,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(
        id: &str,
        service: &str,
        network_id: &str,
        ip: [u8; 4],
        health: Health,
    ) -> Endpoint {
        let ip = Ipv4Addr::from(ip);
        Endpoint {
            service: Some(service.into()),
            health,
            ..Endpoint::new(id, "appnet", network_id, "n2", ip)
        }
    }

    fn service(name: &str, mode: EndpointMode) -> Service {
        Service {
            name: name.into(),
            id: format!("id-{name}"),
            endpoint_mode: mode,
            vips: if mode == EndpointMode::Vip {
                vec![ServiceVip {
                    network: "appnet".into(),
                    network_id: "net1".into(),
                    addr: Ipv4Addr::new(10, 10, 0, 250),
                }]
            } else {
                Vec::new()
            },
            networks: vec!["appnet".into()],
            ports: Vec::new(),
        }
    }

    #[test]
    fn tasks_of_the_service_on_the_vip_network_are_backends() {
        let services = [
            service("web", EndpointMode::Vip),
            service("db", EndpointMode::Dnsrr),
        ];
        let endpoints = [
            endpoint("e3", "web", "net1", [10, 10, 0, 3], Health::Unhealthy),
            endpoint("e2", "WEB", "net1", [10, 10, 0, 2], Health::Healthy),
            endpoint("e2", "web", "net1", [10, 10, 0, 2], Health::Healthy),
            endpoint("e4", "web", "net2", [10, 20, 0, 4], Health::Healthy),
            endpoint("e5", "db", "net1", [10, 10, 0, 5], Health::Healthy),
            // By service id, exactly; a differently cased id is no match.
            endpoint("e6", "id-web", "net1", [10, 10, 0, 6], Health::Healthy),
            endpoint("e7", "ID-WEB", "net1", [10, 10, 0, 7], Health::Healthy),
        ];
        let vips = desired(&services, &endpoints);
        assert_eq!(vips.len(), 1);
        let web = &vips[&Ipv4Addr::new(10, 10, 0, 250)];
        assert_eq!(
            web.backends,
            vec![
                Backend {
                    ip: Ipv4Addr::new(10, 10, 0, 2),
                    node: "n2".into(),
                    active: true
                },
                Backend {
                    ip: Ipv4Addr::new(10, 10, 0, 3),
                    node: "n2".into(),
                    active: false
                },
                Backend {
                    ip: Ipv4Addr::new(10, 10, 0, 6),
                    node: "n2".into(),
                    active: true
                },
            ]
        );
        assert_eq!(
            web.active(),
            vec![Ipv4Addr::new(10, 10, 0, 2), Ipv4Addr::new(10, 10, 0, 6)]
        );
    }
}
