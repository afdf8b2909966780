//! Services in the store: `services/<id>` holds the record, `vips/<network
//! id>/<ip>` each VIP (under the network's allocation guard, so blocks and
//! reservations see it), and `guard/services` is rewritten by every service
//! change. A service change compares `guard/networks` (its networks still
//! exist), `guard/services` (its name and ports are still free) and the
//! allocation guard of every network it takes a VIP in; a network removal
//! compares `guard/services`, so it never races a service onto that network.

use tracing::info;

use netagent_api::types::{CreateService, UpdateService};

use super::{
    core::{in_network, Core, ID_LEN},
    keys,
    records::VipRecord,
    txn::{bump, compare, delete, put},
};
use crate::{
    control::{
        allocator,
        error::ControlError,
        service::{self, NetworkChange},
        store::{Compare, Op},
        token,
    },
    model::{EndpointMode, Network, Service, ServiceVip},
};

/// The writes of one service change, with what they depend on.
struct Change {
    compares: Vec<Compare>,
    ops: Vec<Op>,
}

impl Change {
    /// Starts from the guards every service change compares.
    fn new(core: &Core) -> Result<Self, ControlError> {
        Ok(Change {
            compares: vec![
                compare(
                    keys::GUARD_NETWORKS,
                    core.mod_revision(keys::GUARD_NETWORKS)?,
                ),
                compare(
                    keys::GUARD_SERVICES,
                    core.mod_revision(keys::GUARD_SERVICES)?,
                ),
            ],
            ops: Vec::new(),
        })
    }

    /// Allocates `service_id` a VIP in each of `networks`.
    fn add_vips(
        &mut self,
        core: &Core,
        service_id: &str,
        networks: &[Network],
    ) -> Result<Vec<ServiceVip>, ControlError> {
        let mut vips = Vec::new();
        for network in networks {
            let taken = core.allocations(&network.id)?;
            let blocks: Vec<_> = taken.blocks.iter().map(|b| b.block).collect();
            let reserved: Vec<_> = taken.reservations.iter().map(|r| r.ip).collect();
            let ip = allocator::next_vip(
                network.subnet,
                network.gateway,
                &blocks,
                &reserved,
                &taken.vips,
            )
            .map_err(in_network(network))?;
            let record = VipRecord {
                service_id: service_id.to_owned(),
                ip,
            };
            self.compares.push(taken.compare());
            self.ops.push(put(keys::vip(&network.id, ip), &record)?);
            self.ops.push(bump(taken.guard_key));
            vips.push(ServiceVip {
                network: network.name.clone(),
                network_id: network.id.clone(),
                addr: ip,
            });
        }
        Ok(vips)
    }

    /// Releases `vips`.
    fn remove_vips<'a>(&mut self, vips: impl IntoIterator<Item = &'a ServiceVip>) {
        for vip in vips {
            self.ops.push(delete(keys::vip(&vip.network_id, vip.addr)));
            self.ops.push(bump(keys::guard_alloc(&vip.network_id)));
        }
    }

    /// Commits with `service` written (or deleted with `remove`); `None`
    /// when a racing change won (read again).
    fn commit(
        mut self,
        core: &Core,
        service: &Service,
        remove: bool,
    ) -> Result<Option<()>, ControlError> {
        let key = keys::service(&service.id);
        self.ops.push(if remove {
            delete(key)
        } else {
            put(key, service)?
        });
        self.ops.push(bump(keys::GUARD_SERVICES));
        Ok(core.store.txn(&self.compares, &self.ops)?.map(|_| ()))
    }
}

impl Core {
    pub fn services(&self) -> Result<Vec<Service>, ControlError> {
        let mut services: Vec<Service> = self.values(keys::SERVICES)?;
        services.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(services)
    }

    fn service(&self, name_or_id: &str) -> Result<Service, ControlError> {
        self.services()?
            .into_iter()
            .find(|s| service::matches(s, name_or_id))
            .ok_or_else(|| {
                ControlError::NotFound(format!("no service {name_or_id}: see `netctl service ls`"))
            })
    }

    /// The networks called `names`, in that order.
    fn networks_named(&self, names: &[String]) -> Result<Vec<Network>, ControlError> {
        let networks = self.networks()?;
        names
            .iter()
            .map(|name| {
                networks
                    .iter()
                    .find(|n| n.name == *name)
                    .cloned()
                    .ok_or_else(|| {
                        ControlError::NotFound(format!(
                            "no network {name}: create it first (`netctl overlay create {name}`) or see `netctl overlay ls`"
                        ))
                    })
            })
            .collect()
    }

    pub fn create_service(&self, request: CreateService) -> Result<Service, ControlError> {
        service::check_request(&request)?;
        self.optimistic("services", || {
            let mut change = Change::new(self)?;
            service::check_against(&request, &self.services()?)?;
            let networks = self.networks_named(&request.networks)?;
            service::check_publishing_network(&request.name, &request.ports, networks.first())?;
            let id = token::random_string(ID_LEN);
            let vips = match request.endpoint_mode {
                EndpointMode::Vip => change.add_vips(self, &id, &networks)?,
                EndpointMode::Dnsrr => Vec::new(),
            };
            let service = Service {
                name: request.name.clone(),
                id,
                endpoint_mode: request.endpoint_mode,
                vips,
                networks: networks.iter().map(|n| n.name.clone()).collect(),
                ports: request.ports.clone(),
            };
            let committed = change.commit(self, &service, false)?;
            if committed.is_some() {
                info!(name = %service.name, id = %service.id, mode = %service.endpoint_mode, networks = ?service.networks, "service created");
            }
            Ok(committed.map(|_| service))
        })
    }

    pub fn remove_service(&self, name_or_id: &str) -> Result<Service, ControlError> {
        self.optimistic("services", || {
            let mut change = Change::new(self)?;
            let service = self.service(name_or_id)?;
            change.remove_vips(&service.vips);
            let committed = change.commit(self, &service, true)?;
            if committed.is_some() {
                info!(name = %service.name, id = %service.id, "service removed");
            }
            Ok(committed.map(|_| service))
        })
    }

    pub fn update_service(
        &self,
        name_or_id: &str,
        request: UpdateService,
    ) -> Result<Service, ControlError> {
        self.optimistic("services", || {
            let mut change = Change::new(self)?;
            let mut service = self.service(name_or_id)?;
            let NetworkChange { add, remove } = service::plan_update(&service, &request)?;
            service.ports = service::plan_ports(&service, &request, &self.services()?)?;
            let added = self.networks_named(&add)?;
            change.remove_vips(service.vips.iter().filter(|v| remove.contains(&v.network)));
            service.vips.retain(|v| !remove.contains(&v.network));
            service.networks.retain(|n| !remove.contains(n));
            if service.endpoint_mode == EndpointMode::Vip {
                let vips = change.add_vips(self, &service.id, &added)?;
                service.vips.extend(vips);
            }
            service.networks.extend(added.into_iter().map(|n| n.name));
            let first = match service.networks.first() {
                Some(name) => self.networks_named(std::slice::from_ref(name))?,
                None => Vec::new(),
            };
            service::check_publishing_network(&service.name, &service.ports, first.first())?;
            let committed = change.commit(self, &service, false)?;
            if committed.is_some() {
                info!(name = %service.name, added = ?add, removed = ?remove, ports = ?service.ports, "service updated");
            }
            Ok(committed.map(|_| service))
        })
    }
}
