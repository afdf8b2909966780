//! Node availability in the datapath (`netctl node update --availability`).
//!
//! We have no scheduler, so a drained node's tasks keep running; what
//! drain means here is "no new load-balanced traffic to them": the load
//! balancer (VIPs and published ports, which share its tables) treats each
//! task of a drained node as draining, exactly as an unhealthy task (its
//! open flows stay, new flows go elsewhere), and DNS leaves it out of dnsrr
//! service answers. `tasks.SERVICE`, task names and aliases still answer
//! (the tasks still run; peers find each other through them).

use std::collections::BTreeSet;

use crate::{
    control::NodeRecord,
    model::{Availability, Endpoint, Health},
};

/// The names of the drained nodes among `nodes`.
pub fn drained_nodes(nodes: &[NodeRecord]) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| n.availability == Availability::Drain)
        .map(|n| n.name.clone())
        .collect()
}

/// The endpoints as the load balancer must see them: every task of a
/// drained node is draining (unhealthy), the others are unchanged.
pub fn drain_tasks(endpoints: &mut [Endpoint], drained: &BTreeSet<String>) {
    if drained.is_empty() {
        return;
    }
    for endpoint in endpoints {
        if drained.contains(&endpoint.node) {
            endpoint.health = Health::Unhealthy;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{
        lb::plan::desired,
        model::{Role, Service, ServiceVip},
    };

    fn record(name: &str, availability: Availability) -> NodeRecord {
        NodeRecord {
            id: format!("id-{name}"),
            name: name.into(),
            role: Role::Worker,
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            availability,
            labels: Default::default(),
        }
    }

    #[test]
    fn tasks_of_drained_nodes_are_draining_backends() {
        let drained = drained_nodes(&[
            record("n1", Availability::Active),
            record("n2", Availability::Drain),
        ]);
        assert_eq!(drained, BTreeSet::from(["n2".to_owned()]));
        let task = |id: &str, node: &str, last: u8| Endpoint {
            service: Some("web".into()),
            ..Endpoint::new(id, "appnet", "net1", node, Ipv4Addr::new(10, 0, 0, last))
        };
        let mut endpoints = vec![task("a", "n1", 2), task("b", "n2", 3)];
        drain_tasks(&mut endpoints, &drained);
        let vip = Ipv4Addr::new(10, 0, 0, 100);
        let service = Service {
            name: "web".into(),
            id: "s1".into(),
            endpoint_mode: Default::default(),
            vips: vec![ServiceVip {
                network: "appnet".into(),
                network_id: "net1".into(),
                addr: vip,
            }],
            networks: vec!["appnet".into()],
            ports: Vec::new(),
        };
        let plan = desired(&[service], &endpoints);
        let states: Vec<(Ipv4Addr, bool)> = plan[&vip]
            .backends
            .iter()
            .map(|b| (b.ip, b.active))
            .collect();
        // The drained node's task stays a backend (its open flows), draining.
        assert_eq!(
            states,
            [
                (Ipv4Addr::new(10, 0, 0, 2), true),
                (Ipv4Addr::new(10, 0, 0, 3), false)
            ]
        );
        // Active again: nothing is left draining.
        let mut endpoints = vec![task("a", "n1", 2), task("b", "n2", 3)];
        drain_tasks(&mut endpoints, &BTreeSet::new());
        assert!(endpoints.iter().all(|e| e.health == Health::Healthy));
    }
}
