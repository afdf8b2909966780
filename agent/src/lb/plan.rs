//! What the load balancer should hold: every VIP of every `vip`-mode service
//! and its tasks on that network, from the services and the endpoints of
//! the gossip view. Pure, so that it is tested without a kernel.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::{Hash, Hasher},
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};

use super::fingerprint::{mix, BuildFingerprint, Fingerprint};
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
    desired_of(services, endpoints)
}

/// `desired` over any services and endpoints: a service's VIPs depend only
/// on the endpoints of its groups (`Groups`), so the planner plans a few
/// services from their endpoints alone.
fn desired_of<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
) -> BTreeMap<Ipv4Addr, Vip> {
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

/// What changed since the last plan.
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// Only these addresses: entries that changed, appeared or went.
    Only(BTreeSet<Ipv4Addr>),
    /// Anything may have: the plan was rebuilt whole.
    All,
}

/// Keeps the last plan and re-plans only the services whose inputs
/// changed, so that one gossip event costs a hash of the inputs (no
/// allocation per service or endpoint) plus the planning of what it
/// touched, not a whole `desired`.
///
/// A service's VIPs depend only on the service and the endpoints of its
/// groups (VIP network, name or id lower-cased): each pass fingerprints
/// every group, in input order (the first copy of a task wins), and a
/// service whose own fingerprint (its fields and its groups') differs is
/// planned again from its groups' endpoints alone. Irregular inputs (two
/// services with one id, one address claimed twice) fall back to the whole
/// plan, which keeps `desired`'s last-wins order.
#[derive(Default)]
pub struct Planner {
    /// Always `desired(services, endpoints)` extended with the extra
    /// entries of the last update.
    desired: BTreeMap<Ipv4Addr, Vip>,
    /// By service id.
    services: HashMap<String, Planned, BuildFingerprint>,
    extra: BTreeMap<Ipv4Addr, Vip>,
    /// Group -> fingerprint of its endpoints, this pass (a reused buffer).
    groups: HashMap<u64, u64, BuildFingerprint>,
    /// Each endpoint's group this pass, in input order (a reused buffer).
    endpoint_groups: Vec<Option<u64>>,
    /// The last plan was rebuilt whole for irregular inputs: so is the next.
    irregular: bool,
    planned_once: bool,
    pass: u64,
}

struct Planned {
    fingerprint: u64,
    vips: Vec<Ipv4Addr>,
    /// The pass that last saw the service.
    pass: u64,
}

impl Planner {
    /// The whole plan, as of the last update.
    pub fn desired(&self) -> &BTreeMap<Ipv4Addr, Vip> {
        &self.desired
    }

    /// Brings the plan up to `services`, `endpoints` and `extra`.
    pub fn update(
        &mut self,
        services: &[Service],
        endpoints: &[Endpoint],
        extra: BTreeMap<Ipv4Addr, Vip>,
    ) -> Changes {
        self.pass += 1;
        self.groups.clear();
        self.endpoint_groups.clear();
        for e in endpoints {
            let group = e.service.as_deref().map(|s| group(&e.network_id, s));
            if let Some(group) = group {
                let fingerprint = self.groups.entry(group).or_insert(0);
                *fingerprint = mix(*fingerprint, endpoint_hash(e));
            }
            self.endpoint_groups.push(group);
        }
        if self.irregular || !self.planned_once {
            return self.rebuild(services, endpoints, extra);
        }
        // The services whose inputs changed, and those that went.
        let mut dirty: Vec<(&Service, u64)> = Vec::new();
        for service in services {
            let fingerprint = self.fingerprint(service);
            match self.services.get_mut(service.id.as_str()) {
                // Seen already this pass: two services with one id.
                Some(p) if p.pass == self.pass => return self.rebuild(services, endpoints, extra),
                Some(p) if p.fingerprint == fingerprint => p.pass = self.pass,
                _ => dirty.push((service, fingerprint)),
            }
        }
        let pass = self.pass;
        let mut stale: Vec<Ipv4Addr> = Vec::new();
        self.services.retain(|_, p| {
            if p.pass != pass {
                stale.append(&mut p.vips);
            }
            p.pass == pass
        });
        let mut changed = BTreeSet::new();
        for (service, _) in &dirty {
            if let Some(p) = self.services.get_mut(service.id.as_str()) {
                stale.append(&mut p.vips);
            }
        }
        for vip in stale {
            self.desired.remove(&vip);
            changed.insert(vip);
        }
        // Plan the dirty services from their groups' endpoints alone.
        if !dirty.is_empty() {
            let wanted: HashSet<u64, BuildFingerprint> = dirty
                .iter()
                .flat_map(|(s, _)| {
                    s.vips.iter().flat_map(|vip| {
                        [
                            group(&vip.network_id, &s.name),
                            group(&vip.network_id, &s.id),
                        ]
                    })
                })
                .collect();
            let tasks = endpoints
                .iter()
                .zip(&self.endpoint_groups)
                .filter(|(_, group)| group.is_some_and(|g| wanted.contains(&g)))
                .map(|(e, _)| e);
            let planned = desired_of(dirty.iter().map(|&(s, _)| s), tasks);
            let claimed: usize = dirty.iter().map(|(s, _)| vips_of(s).count()).sum();
            if planned.len() != claimed || planned.keys().any(|a| self.desired.contains_key(a)) {
                return self.rebuild(services, endpoints, extra);
            }
            for (service, fingerprint) in dirty {
                self.services.insert(
                    service.id.clone(),
                    Planned {
                        fingerprint,
                        vips: vips_of(service).collect(),
                        pass,
                    },
                );
            }
            // Fewer entries than services: two with one id.
            if self.services.len() != services.len() {
                return self.rebuild(services, endpoints, extra);
            }
            changed.extend(planned.keys().copied());
            self.desired.extend(planned);
        }
        // The extra entries, compared whole (a few host-mode ports).
        if extra != self.extra {
            for (addr, old) in &self.extra {
                if extra.get(addr) != Some(old) {
                    self.desired.remove(addr);
                    changed.insert(*addr);
                }
            }
            for (addr, new) in &extra {
                if self.extra.get(addr) != Some(new) {
                    if self.desired.contains_key(addr) {
                        return self.rebuild(services, endpoints, extra);
                    }
                    self.desired.insert(*addr, new.clone());
                    changed.insert(*addr);
                }
            }
            self.extra = extra;
        }
        Changes::Only(changed)
    }

    /// The whole plan from scratch.
    fn rebuild(
        &mut self,
        services: &[Service],
        endpoints: &[Endpoint],
        extra: BTreeMap<Ipv4Addr, Vip>,
    ) -> Changes {
        let mut desired = desired(services, endpoints);
        let claimed: usize = services.iter().map(|s| vips_of(s).count()).sum();
        let vips = desired.len();
        desired.extend(extra.clone());
        self.services.clear();
        for service in services {
            let planned = Planned {
                fingerprint: self.fingerprint(service),
                vips: vips_of(service).collect(),
                pass: self.pass,
            };
            self.services.insert(service.id.clone(), planned);
        }
        self.irregular = self.services.len() != services.len()
            || vips != claimed
            || desired.len() != vips + extra.len();
        self.desired = desired;
        self.extra = extra;
        self.planned_once = true;
        Changes::All
    }

    /// What `service`'s VIPs are planned from, this pass.
    fn fingerprint(&self, service: &Service) -> u64 {
        let mut hasher = Fingerprint::default();
        (&service.name, &service.id).hash(&mut hasher);
        (service.endpoint_mode == EndpointMode::Vip).hash(&mut hasher);
        for vip in &service.vips {
            (&vip.network_id, vip.addr).hash(&mut hasher);
            for name in [&service.name, &service.id] {
                let tasks = self.groups.get(&group(&vip.network_id, name));
                tasks.hash(&mut hasher);
            }
        }
        hasher.finish()
    }
}

/// The addresses `desired` gives `service`.
fn vips_of(service: &Service) -> impl Iterator<Item = Ipv4Addr> + '_ {
    let vips = if service.endpoint_mode == EndpointMode::Vip {
        &service.vips[..]
    } else {
        &[]
    };
    vips.iter().map(|vip| vip.addr)
}

/// The group of the endpoints that name service `service` on network
/// `network_id` (any case), without allocating.
fn group(network_id: &str, service: &str) -> u64 {
    let mut hasher = Fingerprint::default();
    network_id.hash(&mut hasher);
    hasher.write_lower(service);
    hasher.finish()
}

/// What planning reads of an endpoint.
fn endpoint_hash(e: &Endpoint) -> u64 {
    let mut hasher = Fingerprint::default();
    (
        &e.id,
        &e.service,
        &e.node,
        e.ip,
        e.health == Health::Healthy,
    )
        .hash(&mut hasher);
    hasher.finish()
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

    /// A tiny deterministic generator (no dependency for tests).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) % n as u64) as usize
        }
    }

    fn numbered(n: usize) -> Service {
        let mut s = service(&format!("svc{n}"), EndpointMode::Vip);
        s.vips[0].addr = Ipv4Addr::new(10, 10, 1, n as u8);
        s
    }

    fn extra_entry(n: u8, backends: usize) -> (Ipv4Addr, Vip) {
        let addr = Ipv4Addr::new(0, 6, 0, n);
        let backends = (0..backends)
            .map(|b| Backend {
                ip: Ipv4Addr::new(10, 10, 9, b as u8),
                node: "n1".into(),
                active: true,
            })
            .collect();
        let vip = Vip {
            service: "host".into(),
            network_id: "net1".into(),
            addr,
            backends,
        };
        (addr, vip)
    }

    /// Applies one random change of the kinds gossip and the managers make.
    fn mutate(rng: &mut Lcg, services: &mut Vec<Service>, endpoints: &mut Vec<Endpoint>) {
        let pick = |rng: &mut Lcg, len: usize| rng.below(len.max(1));
        match rng.below(12) {
            0 => {
                let n = 100 + rng.below(100);
                endpoints.push(endpoint(
                    &format!("t{n}"),
                    &format!("svc{}", rng.below(12)),
                    ["net1", "net2"][rng.below(2)],
                    [10, 10, 2, n as u8],
                    Health::Healthy,
                ));
            }
            1 if !endpoints.is_empty() => {
                let i = pick(rng, endpoints.len());
                endpoints.remove(i);
            }
            2 if !endpoints.is_empty() => {
                let i = pick(rng, endpoints.len());
                let e = &mut endpoints[i];
                e.health = match e.health {
                    Health::Healthy => Health::Unhealthy,
                    _ => Health::Healthy,
                };
            }
            3 if !endpoints.is_empty() => {
                let i = pick(rng, endpoints.len());
                endpoints[i].node = format!("n{}", rng.below(3));
            }
            4 if !endpoints.is_empty() => {
                // Another copy of a task (local and gossip), maybe differing.
                let i = pick(rng, endpoints.len());
                let mut copy = endpoints[i].clone();
                copy.health = Health::Unhealthy;
                let at = pick(rng, endpoints.len());
                endpoints.insert(at, copy);
            }
            5 if !endpoints.is_empty() => {
                // Named by id, or in another case.
                let i = pick(rng, endpoints.len());
                let name = endpoints[i].service.clone().unwrap_or_default();
                endpoints[i].service = Some(match rng.below(2) {
                    0 => name.to_uppercase(),
                    _ => format!("id-{}", name.to_lowercase()),
                });
            }
            6 => {
                // Now and then one whose id another service has.
                let s = numbered(rng.below(12));
                if rng.below(10) == 0 || !services.iter().any(|o| o.id == s.id) {
                    services.push(s);
                }
            }
            7 if !services.is_empty() => {
                let i = pick(rng, services.len());
                services.remove(i);
            }
            8 if !services.is_empty() => {
                // A new address, now and then one another service has.
                let i = pick(rng, services.len());
                let host = match rng.below(10) {
                    0 => rng.below(14),
                    _ => 20 + rng.below(200),
                };
                if let Some(vip) = services[i].vips.first_mut() {
                    vip.addr = Ipv4Addr::new(10, 10, 1, host as u8);
                }
            }
            9 if !services.is_empty() => {
                let i = pick(rng, services.len());
                services[i].endpoint_mode = match services[i].endpoint_mode {
                    EndpointMode::Vip => EndpointMode::Dnsrr,
                    EndpointMode::Dnsrr => EndpointMode::Vip,
                };
            }
            10 if !services.is_empty() => {
                let i = pick(rng, services.len());
                services[i].vips.push(ServiceVip {
                    network: "other".into(),
                    network_id: "net2".into(),
                    addr: Ipv4Addr::new(10, 20, 1, rng.below(250) as u8),
                });
            }
            _ => {}
        }
    }

    #[test]
    fn planner_matches_the_whole_plan_through_random_changes() {
        let mut rng = Lcg(7);
        let mut incremental = 0;
        for round in 0..40 {
            let mut services: Vec<Service> = (0..10).map(numbered).collect();
            let mut endpoints: Vec<Endpoint> = (0..30)
                .map(|t| {
                    endpoint(
                        &format!("t{t}"),
                        &format!("svc{}", t % 12),
                        "net1",
                        [10, 10, 2, t as u8],
                        Health::Healthy,
                    )
                })
                .collect();
            let mut planner = Planner::default();
            let mut before = BTreeMap::new();
            for step in 0..60 {
                for _ in 0..rng.below(3) + 1 {
                    mutate(&mut rng, &mut services, &mut endpoints);
                }
                let extra: BTreeMap<_, _> = (0..rng.below(3) as u8)
                    .map(|n| extra_entry(n, rng.below(3)))
                    .collect();
                let changes = planner.update(&services, &endpoints, extra.clone());
                let mut whole = desired(&services, &endpoints);
                whole.extend(extra);
                assert_eq!(planner.desired(), &whole, "round {round} step {step}");
                if let Changes::Only(changed) = changes {
                    incremental += 1;
                    let keys: BTreeSet<_> = before.keys().chain(whole.keys()).collect();
                    for addr in keys {
                        if before.get(addr) != whole.get(addr) {
                            assert!(changed.contains(addr), "round {round} step {step}: {addr}");
                        }
                    }
                }
                before = whole;
            }
        }
        // Most passes are incremental: irregular inputs are the exception.
        assert!(
            incremental > 40 * 60 * 2 / 3,
            "{incremental} incremental passes"
        );
    }

    #[test]
    fn one_task_change_replans_only_its_vip() {
        let services: Vec<Service> = (0..10).map(numbered).collect();
        let mut endpoints: Vec<Endpoint> = (0..20)
            .map(|t| {
                let ip = [10, 10, 2, t as u8];
                endpoint(
                    &format!("t{t}"),
                    &format!("svc{}", t % 10),
                    "net1",
                    ip,
                    Health::Healthy,
                )
            })
            .collect();
        let mut planner = Planner::default();
        assert_eq!(
            planner.update(&services, &endpoints, BTreeMap::new()),
            Changes::All
        );
        let nothing = Changes::Only(BTreeSet::new());
        assert_eq!(
            planner.update(&services, &endpoints, BTreeMap::new()),
            nothing
        );
        endpoints[13].health = Health::Unhealthy;
        let svc3: BTreeSet<_> = [Ipv4Addr::new(10, 10, 1, 3)].into();
        assert_eq!(
            planner.update(&services, &endpoints, BTreeMap::new()),
            Changes::Only(svc3.clone())
        );
        assert!(!planner.desired()[&Ipv4Addr::new(10, 10, 1, 3)].backends[1].active);
        // A task naming the service in another case belongs to it too.
        endpoints.push(endpoint(
            "t99",
            "SVC3",
            "net1",
            [10, 10, 2, 99],
            Health::Healthy,
        ));
        assert_eq!(
            planner.update(&services, &endpoints, BTreeMap::new()),
            Changes::Only(svc3)
        );
        assert_eq!(
            planner.update(&services, &endpoints, BTreeMap::new()),
            nothing
        );
    }

    #[test]
    fn two_services_on_one_address_keep_the_whole_plan_order() {
        let mut services: Vec<Service> = (0..3).map(numbered).collect();
        services[2].vips[0].addr = services[0].vips[0].addr;
        let endpoints = vec![endpoint(
            "t1",
            "svc2",
            "net1",
            [10, 10, 2, 1],
            Health::Healthy,
        )];
        let mut planner = Planner::default();
        planner.update(&services, &endpoints, BTreeMap::new());
        assert_eq!(planner.desired(), &desired(&services, &endpoints));
        services.swap(0, 2);
        assert_eq!(
            planner.update(&services, &endpoints, BTreeMap::new()),
            Changes::All
        );
        assert_eq!(planner.desired(), &desired(&services, &endpoints));
    }
}
