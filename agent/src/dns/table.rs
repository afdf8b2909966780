//! Names → records: every name the cluster answers, built once per change of
//! the services, endpoints or networks and then only read (no locks, no
//! allocation on lookups).
//!
//! Keys are lowercase, without a trailing dot. Each name maps to one record
//! set per network, so that a container only sees the sets of the networks it
//! is attached to:
//!
//! * `SERVICE`: the VIP on each network (vip), or the healthy task addresses
//!   (dnsrr, shuffled per answer) but those of drained nodes (see `drain`);
//! * `tasks.SERVICE`: the healthy task addresses (shuffled per answer);
//! * task/container names and aliases: the endpoint's address;
//! * each of the above followed by `.NETWORK` (the network's name): the set of
//!   that network only.
//!
//! PTR: a task address maps to `<task name>.<network name>` (as Docker does, so
//! the reverse name is unique across networks; an endpoint without a name uses
//! its first alias), a VIP maps to the service name.

use std::{
    collections::{hash_map::Entry, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;

use crate::model::{Endpoint, EndpointMode, Health, Network, Service};

/// The addresses of one name on one network.
#[derive(Debug, PartialEq, Eq)]
pub struct RecordSet {
    pub network_id: Box<str>,
    pub addrs: Vec<Ipv4Addr>,
    /// Answered in a random order (dnsrr services and `tasks.`).
    pub shuffle: bool,
}

/// The reverse name of one address on one network.
#[derive(Debug, PartialEq, Eq)]
pub struct Pointer {
    pub network_id: Box<str>,
    /// The target name in wire format (uncompressed labels, root included).
    pub target: Box<[u8]>,
}

/// What the table knows about a name, for the networks in scope.
#[derive(Debug, PartialEq, Eq)]
pub enum Known<'a> {
    /// Not a cluster name (for this container): forward it.
    No,
    /// A cluster name: answer from the sets in scope among these (possibly
    /// no address).
    Name(&'a [RecordSet]),
    /// A reverse name of a cluster address.
    Pointers(&'a [Pointer]),
    /// A reverse name inside a network in scope that nothing holds.
    NoPointer,
}

/// Every name the cluster answers, built from the services, the endpoints of
/// the live nodes and the networks; immutable, swapped in whole.
#[derive(Debug, Default)]
pub struct DnsTable {
    names: HashMap<Box<str>, Vec<RecordSet>>,
    pointers: HashMap<Ipv4Addr, Vec<Pointer>>,
    /// Network id and subnet, to answer NXDOMAIN for unused overlay addresses.
    subnets: Vec<(Box<str>, Ipv4Net)>,
}

impl DnsTable {
    /// Unhealthy endpoints are left out.
    pub fn build(services: &[Service], endpoints: &[Endpoint], networks: &[Network]) -> Self {
        Self::build_draining(services, endpoints, networks, &BTreeSet::new())
    }

    /// `build`, with the tasks of the `drained` nodes also left out of dnsrr
    /// service answers (load balancing); they keep their other names.
    pub fn build_draining(
        services: &[Service],
        endpoints: &[Endpoint],
        networks: &[Network],
        drained: &BTreeSet<String>,
    ) -> Self {
        let mut table = DnsTable {
            subnets: networks
                .iter()
                .map(|net| (net.id.as_str().into(), net.subnet))
                .collect(),
            ..DnsTable::default()
        };
        let healthy = || endpoints.iter().filter(|ep| ep.health == Health::Healthy);

        for service in services {
            let tasks = format!("tasks.{}", service.name);
            // A service on a network with no healthy task is still a cluster
            // name there: NOERROR with no answer rather than forwarded.
            let service_networks = service
                .networks
                .iter()
                .filter_map(|name| networks.iter().find(|net| &net.name == name));
            for net in service_networks {
                let (net_name, id) = (net.name.as_str(), net.id.as_str());
                table.reserve_name(&tasks, net_name, id);
                if service.endpoint_mode == EndpointMode::Dnsrr {
                    table.reserve_name(&service.name, net_name, id);
                }
            }
            match service.endpoint_mode {
                EndpointMode::Vip => {
                    for vip in &service.vips {
                        table.add_name(
                            &service.name,
                            &vip.network,
                            &vip.network_id,
                            vip.addr,
                            false,
                        );
                        table.add_pointer(vip.addr, &vip.network_id, &service.name);
                    }
                }
                EndpointMode::Dnsrr => {
                    let balanced = healthy().filter(|ep| {
                        ep.service.as_deref() == Some(&service.name) && !drained.contains(&ep.node)
                    });
                    for ep in balanced {
                        table.add_name(&service.name, &ep.network, &ep.network_id, ep.ip, true);
                    }
                }
            }
        }

        for ep in healthy() {
            if let Some(service) = &ep.service {
                let tasks = format!("tasks.{service}");
                table.add_name(&tasks, &ep.network, &ep.network_id, ep.ip, true);
            }
            for name in std::iter::once(&ep.name).chain(&ep.aliases) {
                if !name.is_empty() {
                    table.add_name(name, &ep.network, &ep.network_id, ep.ip, false);
                }
            }
            let reverse = std::iter::once(&ep.name)
                .chain(&ep.aliases)
                .find(|name| !name.is_empty());
            if let Some(name) = reverse {
                table.add_pointer(ep.ip, &ep.network_id, &format!("{name}.{}", ep.network));
            }
        }
        table
    }

    /// The record sets of `name` (lowercase, no trailing dot), all networks.
    pub fn sets(&self, name: &str) -> &[RecordSet] {
        self.names.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    /// Whether `name` (lowercase, no trailing dot) is a cluster name on one
    /// of the networks in `scope` (network ids).
    pub fn known<'a>(&'a self, name: &str, scope: &[String]) -> Known<'a> {
        if let Some(addr) = reverse_v4(name) {
            let pointers = self
                .pointers
                .get(&addr)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if pointers.iter().any(|p| in_scope(&p.network_id, scope)) {
                return Known::Pointers(pointers);
            }
            let inside = self
                .subnets
                .iter()
                .any(|(id, net)| net.contains(&addr) && in_scope(id, scope));
            return if inside { Known::NoPointer } else { Known::No };
        }
        let sets = self.sets(name);
        if sets.iter().any(|set| in_scope(&set.network_id, scope)) {
            Known::Name(sets)
        } else {
            Known::No
        }
    }

    /// An empty set for `name` and `name.network` on one network.
    fn reserve_name(&mut self, name: &str, network: &str, network_id: &str) {
        for key in [lower(name), lower(&format!("{name}.{network}"))] {
            self.set_mut(&key, network_id);
        }
    }

    /// `name` and `name.network` → `addr` on one network.
    fn add_name(
        &mut self,
        name: &str,
        network: &str,
        network_id: &str,
        addr: Ipv4Addr,
        shuffle: bool,
    ) {
        for key in [lower(name), lower(&format!("{name}.{network}"))] {
            let set = self.set_mut(&key, network_id);
            set.shuffle |= shuffle;
            if !set.addrs.contains(&addr) {
                set.addrs.push(addr);
            }
        }
    }

    fn set_mut(&mut self, key: &str, network_id: &str) -> &mut RecordSet {
        let sets = match self.names.entry(key.into()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(Vec::new()),
        };
        let index = match sets.iter().position(|set| &*set.network_id == network_id) {
            Some(index) => index,
            None => {
                sets.push(RecordSet {
                    network_id: network_id.into(),
                    addrs: Vec::new(),
                    shuffle: false,
                });
                sets.len() - 1
            }
        };
        &mut sets[index]
    }

    fn add_pointer(&mut self, addr: Ipv4Addr, network_id: &str, target: &str) {
        let Some(target) = wire_name(target) else {
            tracing::debug!(%addr, target, "dns: reverse name not representable, skipped");
            return;
        };
        let pointers = self.pointers.entry(addr).or_default();
        if !pointers.iter().any(|p| &*p.network_id == network_id) {
            pointers.push(Pointer {
                network_id: network_id.into(),
                target,
            });
        }
    }
}

pub fn in_scope(network_id: &str, scope: &[String]) -> bool {
    scope.iter().any(|id| id == network_id)
}

fn lower(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `d.c.b.a.in-addr.arpa` → `a.b.c.d`.
fn reverse_v4(name: &str) -> Option<Ipv4Addr> {
    let octets = name.strip_suffix(".in-addr.arpa")?;
    let mut parts = octets.rsplit('.');
    let mut bytes = [0u8; 4];
    for byte in &mut bytes {
        *byte = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(bytes))
}

/// A dotted name in uncompressed wire format; `None` when a label is empty
/// or longer than 63 bytes, or the name longer than 255.
fn wire_name(name: &str) -> Option<Box<[u8]>> {
    let mut wire = Vec::with_capacity(name.len() + 2);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    (wire.len() <= 255).then(|| wire.into_boxed_slice())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::ServiceVip;

    pub fn network(name: &str, id: &str, subnet: &str) -> Network {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        Network {
            name: name.into(),
            id: id.into(),
            vni: 4096,
            gateway: subnet.hosts().next().unwrap(),
            subnet,
            internal: false,
            mtu: None,
        }
    }

    pub fn endpoint(name: &str, service: Option<&str>, net: &Network, ip: [u8; 4]) -> Endpoint {
        let ip = Ipv4Addr::from(ip);
        Endpoint {
            name: name.into(),
            service: service.map(Into::into),
            ..Endpoint::new(format!("{name}-{}", net.id), &net.name, &net.id, "n1", ip)
        }
    }

    pub fn service(name: &str, mode: EndpointMode, vips: &[(&Network, [u8; 4])]) -> Service {
        Service {
            name: name.into(),
            id: format!("svc-{name}"),
            endpoint_mode: mode,
            vips: vips
                .iter()
                .map(|(net, addr)| ServiceVip {
                    network: net.name.clone(),
                    network_id: net.id.clone(),
                    addr: Ipv4Addr::from(*addr),
                })
                .collect(),
            networks: vips.iter().map(|(net, _)| net.name.clone()).collect(),
            ports: Vec::new(),
        }
    }

    /// Two networks: `front` (10.1/24) and `back` (10.2/24); `web` (vip) on
    /// both with two tasks on front and one on back, one task unhealthy;
    /// `db` (dnsrr) on back; a standalone container `tool` with an alias.
    pub fn sample() -> (Vec<Service>, Vec<Endpoint>, Vec<Network>) {
        let front = network("front", "id-front", "10.1.0.0/24");
        let back = network("back", "id-back", "10.2.0.0/24");
        let web = service(
            "Web",
            EndpointMode::Vip,
            &[(&front, [10, 1, 0, 100]), (&back, [10, 2, 0, 100])],
        );
        let mut db = service("db", EndpointMode::Dnsrr, &[]);
        db.networks = vec!["back".into()];
        let mut sick = endpoint("web.3", Some("Web"), &front, [10, 1, 0, 4]);
        sick.health = Health::Unhealthy;
        let mut tool = endpoint("tool", None, &front, [10, 1, 0, 9]);
        tool.aliases = vec!["Helper".into()];
        let endpoints = vec![
            endpoint("web.1", Some("Web"), &front, [10, 1, 0, 2]),
            endpoint("web.2", Some("Web"), &front, [10, 1, 0, 3]),
            sick,
            endpoint("web.1", Some("Web"), &back, [10, 2, 0, 2]),
            endpoint("db.1", Some("db"), &back, [10, 2, 0, 5]),
            endpoint("db.2", Some("db"), &back, [10, 2, 0, 6]),
            tool,
        ];
        (vec![web, db], endpoints, vec![front, back])
    }

    pub fn sample_table() -> DnsTable {
        let (services, endpoints, networks) = sample();
        DnsTable::build(&services, &endpoints, &networks)
    }

    fn addrs(table: &DnsTable, name: &str, scope: &[&str]) -> Vec<Ipv4Addr> {
        let mut addrs: Vec<Ipv4Addr> = table
            .sets(name)
            .iter()
            .filter(|set| scope.contains(&&*set.network_id))
            .flat_map(|set| set.addrs.iter().copied())
            .collect();
        addrs.sort();
        addrs
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn vip_service_answers_the_vip_of_each_network_in_scope() {
        let table = sample_table();
        assert_eq!(addrs(&table, "web", &["id-front"]), [ip("10.1.0.100")]);
        assert_eq!(
            addrs(&table, "web", &["id-front", "id-back"]),
            [ip("10.1.0.100"), ip("10.2.0.100")]
        );
        assert!(!table.sets("web").iter().any(|set| set.shuffle));
    }

    #[test]
    fn dnsrr_service_answers_the_task_addresses_shuffled() {
        let table = sample_table();
        assert_eq!(
            addrs(&table, "db", &["id-back"]),
            [ip("10.2.0.5"), ip("10.2.0.6")]
        );
        assert!(table.sets("db").iter().all(|set| set.shuffle));
        assert_eq!(table.known("db", &["id-front".into()]), Known::No);
    }

    #[test]
    fn tasks_names_hold_healthy_tasks_only() {
        let table = sample_table();
        assert_eq!(
            addrs(&table, "tasks.web", &["id-front"]),
            [ip("10.1.0.2"), ip("10.1.0.3")]
        );
        assert_eq!(addrs(&table, "tasks.web", &["id-back"]), [ip("10.2.0.2")]);
        assert!(table.sets("web.3").is_empty());
        assert!(table.sets("tasks.web").iter().all(|set| set.shuffle));
    }

    #[test]
    fn names_aliases_and_name_dot_network() {
        let table = sample_table();
        assert_eq!(addrs(&table, "tool", &["id-front"]), [ip("10.1.0.9")]);
        assert_eq!(addrs(&table, "helper", &["id-front"]), [ip("10.1.0.9")]);
        assert_eq!(
            addrs(&table, "helper.front", &["id-front"]),
            [ip("10.1.0.9")]
        );
        assert_eq!(
            addrs(&table, "web.1", &["id-front", "id-back"]),
            [ip("10.1.0.2"), ip("10.2.0.2")]
        );
        assert_eq!(
            addrs(&table, "web.1.back", &["id-front", "id-back"]),
            [ip("10.2.0.2")]
        );
        assert_eq!(
            addrs(&table, "web.back", &["id-front", "id-back"]),
            [ip("10.2.0.100")]
        );
        assert_eq!(addrs(&table, "tasks.web.front", &["id-front"]).len(), 2);
        // On a network out of scope, NAME.NETWORK is unknown.
        assert_eq!(table.known("web.back", &["id-front".into()]), Known::No);
        assert!(matches!(
            table.known("web.1.back", &["id-back".into()]),
            Known::Name(_)
        ));
    }

    #[test]
    fn scope_hides_other_networks() {
        let table = sample_table();
        let front = ["id-front".to_string()];
        assert!(matches!(table.known("tool", &front), Known::Name(_)));
        assert_eq!(table.known("tool", &["id-back".into()]), Known::No);
        assert_eq!(table.known("db.1", &front), Known::No);
        assert_eq!(table.known("example.com", &front), Known::No);
    }

    #[test]
    fn dnsrr_service_without_healthy_task_is_still_known() {
        let (services, mut endpoints, networks) = sample();
        for ep in &mut endpoints {
            if ep.service.as_deref() == Some("db") {
                ep.health = Health::Unhealthy;
            }
        }
        let table = DnsTable::build(&services, &endpoints, &networks);
        let back = ["id-back".to_string()];
        assert!(matches!(table.known("db", &back), Known::Name(_)));
        assert!(matches!(table.known("tasks.db", &back), Known::Name(_)));
        assert!(addrs(&table, "db", &["id-back"]).is_empty());
    }

    #[test]
    fn drained_nodes_leave_dnsrr_answers_but_keep_their_task_names() {
        let (services, mut endpoints, networks) = sample();
        for ep in &mut endpoints {
            if ep.name == "db.2" {
                ep.node = "n2".into();
            }
        }
        let drained = BTreeSet::from(["n2".to_owned()]);
        let table = DnsTable::build_draining(&services, &endpoints, &networks, &drained);
        assert_eq!(addrs(&table, "db", &["id-back"]), [ip("10.2.0.5")]);
        assert_eq!(
            addrs(&table, "tasks.db", &["id-back"]),
            [ip("10.2.0.5"), ip("10.2.0.6")]
        );
        assert_eq!(addrs(&table, "db.2", &["id-back"]), [ip("10.2.0.6")]);
    }

    #[test]
    fn reverse_names_of_tasks_and_vips() {
        let table = sample_table();
        let front = ["id-front".to_string()];
        let Known::Pointers(ptrs) = table.known("2.0.1.10.in-addr.arpa", &front) else {
            panic!("no pointer");
        };
        assert_eq!(&*ptrs[0].target, b"\x03web\x011\x05front\x00");
        let Known::Pointers(ptrs) = table.known("100.0.1.10.in-addr.arpa", &front) else {
            panic!("no pointer");
        };
        assert_eq!(&*ptrs[0].target, b"\x03Web\x00");
        // An alias-only endpoint has no name: the container name is used.
        let Known::Pointers(ptrs) = table.known("9.0.1.10.in-addr.arpa", &front) else {
            panic!("no pointer");
        };
        assert_eq!(&*ptrs[0].target, b"\x04tool\x05front\x00");
        // Unhealthy, unused, out of scope, outside the overlay.
        assert_eq!(
            table.known("4.0.1.10.in-addr.arpa", &front),
            Known::NoPointer
        );
        assert_eq!(
            table.known("77.0.1.10.in-addr.arpa", &front),
            Known::NoPointer
        );
        assert_eq!(table.known("5.0.2.10.in-addr.arpa", &front), Known::No);
        assert_eq!(table.known("8.8.8.8.in-addr.arpa", &front), Known::No);
        assert_eq!(table.known("1.8.8.8.8.in-addr.arpa", &front), Known::No);
    }

    #[test]
    fn keys_are_lowercase_without_trailing_dot() {
        let table = sample_table();
        assert!(!table.sets("web").is_empty());
        assert!(table.sets("Web").is_empty());
        assert_eq!(lower("Tasks.WEB."), "tasks.web");
    }
}
