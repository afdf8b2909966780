//! The load balancer's maps as `State` writes them: one trait, `LbMaps`,
//! for the few writes a plan needs, implemented over the pinned maps
//! (`PinnedMaps`) in the agent and over plain collections in the unit
//! tests, so the update order is tested without root.

use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapError, PerCpuArray, PerCpuValues};
use netagent_common::{
    LbBackend, LbMaglevTable, LbService, LbServiceKey, LB_BACKENDS_MAP, LB_BACKEND_FLOWS_MAP,
    LB_MAGLEV_MAP, LB_SERVICES_MAP,
};

use super::error::LbError;
use crate::dataplane::{
    bpf::{map_failure, removed},
    Datapath,
};

/// The writes that bring the maps to a plan.
pub(super) trait LbMaps {
    /// Points VIP `vip` at `service` (one map update).
    fn set_service(&mut self, vip: Ipv4Addr, service: LbService) -> Result<(), LbError>;
    fn remove_service(&mut self, vip: Ipv4Addr) -> Result<(), LbError>;
    fn set_backend(&mut self, id: u32, backend: LbBackend) -> Result<(), LbError>;
    fn remove_backend(&mut self, id: u32) -> Result<(), LbError>;
    /// Writes a whole Maglev table into `slot` (one map update).
    fn set_table(&mut self, slot: u32, table: &LbMaglevTable) -> Result<(), LbError>;
    /// Zeroes backend id `id`'s new-flow counter on every CPU.
    fn reset_flows(&mut self, id: u32) -> Result<(), LbError>;
}

/// The pinned maps, through the load balancer's own datapath object.
pub(super) struct PinnedMaps {
    datapath: Datapath,
}

impl PinnedMaps {
    pub(super) fn new(datapath: Datapath) -> Self {
        Self { datapath }
    }

    pub(super) fn datapath(&self) -> &Datapath {
        &self.datapath
    }

    /// For attaching the programs (they live in the same object).
    pub(super) fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    fn services(
        &mut self,
    ) -> Result<HashMap<&mut aya::maps::MapData, LbServiceKey, LbService>, LbError> {
        HashMap::try_from(self.datapath.map_mut(LB_SERVICES_MAP)?)
            .map_err(|error| map_failure(LB_SERVICES_MAP)(error).into())
    }

    fn backends(&mut self) -> Result<HashMap<&mut aya::maps::MapData, u32, LbBackend>, LbError> {
        HashMap::try_from(self.datapath.map_mut(LB_BACKENDS_MAP)?)
            .map_err(|error| map_failure(LB_BACKENDS_MAP)(error).into())
    }
}

impl LbMaps for PinnedMaps {
    fn set_service(&mut self, vip: Ipv4Addr, service: LbService) -> Result<(), LbError> {
        self.services()?
            .insert(key(vip), service, 0)
            .map_err(|error| map_failure(LB_SERVICES_MAP)(error).into())
    }

    fn remove_service(&mut self, vip: Ipv4Addr) -> Result<(), LbError> {
        removed(self.services()?.remove(&key(vip)))
            .map_err(|error| map_failure(LB_SERVICES_MAP)(error).into())
    }

    fn set_backend(&mut self, id: u32, backend: LbBackend) -> Result<(), LbError> {
        self.backends()?
            .insert(id, backend, 0)
            .map_err(|error| map_failure(LB_BACKENDS_MAP)(error).into())
    }

    fn remove_backend(&mut self, id: u32) -> Result<(), LbError> {
        removed(self.backends()?.remove(&id))
            .map_err(|error| map_failure(LB_BACKENDS_MAP)(error).into())
    }

    fn set_table(&mut self, slot: u32, table: &LbMaglevTable) -> Result<(), LbError> {
        let mut array: Array<_, LbMaglevTable> =
            Array::try_from(self.datapath.map_mut(LB_MAGLEV_MAP)?)
                .map_err(map_failure(LB_MAGLEV_MAP))?;
        array
            .set(slot, table, 0)
            .map_err(|error| map_failure(LB_MAGLEV_MAP)(error).into())
    }

    fn reset_flows(&mut self, id: u32) -> Result<(), LbError> {
        let mut flows: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.datapath.map_mut(LB_BACKEND_FLOWS_MAP)?)
                .map_err(map_failure(LB_BACKEND_FLOWS_MAP))?;
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, error)| map_failure(LB_BACKEND_FLOWS_MAP)(MapError::IoError(error)))?;
        let zeros = PerCpuValues::try_from(vec![0u64; cpus])
            .map_err(|error| map_failure(LB_BACKEND_FLOWS_MAP)(MapError::IoError(error)))?;
        flows
            .set(id, zeros, 0)
            .map_err(|error| map_failure(LB_BACKEND_FLOWS_MAP)(error).into())
    }
}

/// A VIP as LB_SERVICES keys it.
pub(super) fn key(vip: Ipv4Addr) -> LbServiceKey {
    LbServiceKey {
        vip: u32::from_ne_bytes(vip.octets()),
    }
}
