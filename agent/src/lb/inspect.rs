//! `netctl service inspect`'s datapath view: the VIPs read back from the
//! maps (table slot and size, each backend's share of the table, its state
//! and new-flow count), not from the agent's own bookkeeping.

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::{Array, HashMap, MapError, PerCpuArray};
use netagent_api::types::{BackendState, VipState};
use netagent_common::{
    LbBackend, LbMaglevTable, LbService, LbServiceKey, LB_BACKENDS_MAP, LB_BACKEND_ACTIVE,
    LB_BACKEND_FLOWS_MAP, LB_MAGLEV_MAP, LB_SERVICES_MAP,
};

use super::{
    error::LbError,
    maps::{key, PinnedMaps},
    state::{has_table, State},
};
use crate::dataplane::bpf::map_failure;

impl State<PinnedMaps> {
    pub(super) fn inspect(&self, vips: &[Ipv4Addr]) -> Result<Vec<VipState>, LbError> {
        let services: HashMap<_, LbServiceKey, LbService> =
            HashMap::try_from(self.maps.datapath().map(LB_SERVICES_MAP)?)
                .map_err(map_failure(LB_SERVICES_MAP))?;
        let backends: HashMap<_, u32, LbBackend> =
            HashMap::try_from(self.maps.datapath().map(LB_BACKENDS_MAP)?)
                .map_err(map_failure(LB_BACKENDS_MAP))?;
        let tables: Array<_, LbMaglevTable> =
            Array::try_from(self.maps.datapath().map(LB_MAGLEV_MAP)?)
                .map_err(map_failure(LB_MAGLEV_MAP))?;
        let flows: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.maps.datapath().map(LB_BACKEND_FLOWS_MAP)?)
                .map_err(map_failure(LB_BACKEND_FLOWS_MAP))?;
        let mut out = Vec::new();
        for &vip in vips {
            let service = match services.get(&key(vip), 0) {
                Ok(service) => service,
                Err(MapError::KeyNotFound) => continue,
                Err(error) => return Err(map_failure(LB_SERVICES_MAP)(error).into()),
            };
            let mut shares: BTreeMap<u32, u32> = BTreeMap::new();
            if has_table(&service) {
                let table = tables
                    .get(&service.table_slot, 0)
                    .map_err(map_failure(LB_MAGLEV_MAP))?;
                for &id in table.backends.iter().take(service.table_size as usize) {
                    *shares.entry(id).or_default() += 1;
                }
            }
            let ip_of = |id: u32| backends.get(&id, 0).ok();
            let table = shares
                .iter()
                .filter_map(|(&id, &n)| Some((Ipv4Addr::from(ip_of(id)?.ip.to_ne_bytes()), n)))
                .collect();
            let members = self.members.get(&vip).cloned().unwrap_or_default();
            let backends = members
                .iter()
                .filter_map(|m| {
                    let &(id, _) = self.backends.get(&m.ip)?;
                    let b = ip_of(id)?;
                    Some(BackendState {
                        id,
                        ip: Ipv4Addr::from(b.ip.to_ne_bytes()),
                        state: if b.flags & LB_BACKEND_ACTIVE != 0 {
                            "active".into()
                        } else {
                            "draining".into()
                        },
                        connections: flows.get(&id, 0).map_or(0, |per_cpu| per_cpu.iter().sum()),
                    })
                })
                .collect();
            out.push(VipState {
                vip,
                table_slot: service.table_slot,
                table_size: service.table_size,
                table,
                backends,
            });
        }
        Ok(out)
    }
}
