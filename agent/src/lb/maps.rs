//! The load balancer's maps as `State` writes them: one trait, `LbMaps`,
//! for the few writes a plan needs, implemented over the pinned maps
//! (`PinnedMaps`) in the agent and over plain collections in the unit
//! tests, so the update order is tested without root.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::Ipv4Addr,
};

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
    /// The possible CPUs, read once: LB_BACKEND_FLOWS holds one counter
    /// per CPU.
    cpus: usize,
}

impl PinnedMaps {
    pub(super) fn new(datapath: Datapath) -> Result<Self, LbError> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, error)| map_failure(LB_BACKEND_FLOWS_MAP)(MapError::IoError(error)))?;
        Ok(Self { datapath, cpus })
    }

    /// What an earlier run left in LB_SERVICES (by VIP) and LB_BACKENDS
    /// (backend address -> id and flags).
    #[allow(clippy::type_complexity)]
    pub(super) fn adopted(
        &mut self,
    ) -> Result<
        (
            BTreeMap<Ipv4Addr, LbService>,
            StdHashMap<Ipv4Addr, (u32, u32)>,
        ),
        LbError,
    > {
        let services = self
            .services()?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (Ipv4Addr::from(k.vip.to_ne_bytes()), v))
            .collect();
        let backends = self
            .backends()?
            .iter()
            .filter_map(Result::ok)
            .map(|(id, b)| (Ipv4Addr::from(b.ip.to_ne_bytes()), (id, b.flags)))
            .collect();
        Ok((services, backends))
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
        Ok(HashMap::try_from(self.datapath.map_mut(LB_SERVICES_MAP)?)
            .map_err(map_failure(LB_SERVICES_MAP))?)
    }

    fn backends(&mut self) -> Result<HashMap<&mut aya::maps::MapData, u32, LbBackend>, LbError> {
        Ok(HashMap::try_from(self.datapath.map_mut(LB_BACKENDS_MAP)?)
            .map_err(map_failure(LB_BACKENDS_MAP))?)
    }
}

impl LbMaps for PinnedMaps {
    fn set_service(&mut self, vip: Ipv4Addr, service: LbService) -> Result<(), LbError> {
        let mut services = self.services()?;
        Ok(services
            .insert(key(vip), service, 0)
            .map_err(map_failure(LB_SERVICES_MAP))?)
    }

    fn remove_service(&mut self, vip: Ipv4Addr) -> Result<(), LbError> {
        let mut services = self.services()?;
        Ok(removed(services.remove(&key(vip))).map_err(map_failure(LB_SERVICES_MAP))?)
    }

    fn set_backend(&mut self, id: u32, backend: LbBackend) -> Result<(), LbError> {
        let mut backends = self.backends()?;
        Ok(backends
            .insert(id, backend, 0)
            .map_err(map_failure(LB_BACKENDS_MAP))?)
    }

    fn remove_backend(&mut self, id: u32) -> Result<(), LbError> {
        let mut backends = self.backends()?;
        Ok(removed(backends.remove(&id)).map_err(map_failure(LB_BACKENDS_MAP))?)
    }

    fn set_table(&mut self, slot: u32, table: &LbMaglevTable) -> Result<(), LbError> {
        let mut array: Array<_, LbMaglevTable> =
            Array::try_from(self.datapath.map_mut(LB_MAGLEV_MAP)?)
                .map_err(map_failure(LB_MAGLEV_MAP))?;
        Ok(array
            .set(slot, table, 0)
            .map_err(map_failure(LB_MAGLEV_MAP))?)
    }

    fn reset_flows(&mut self, id: u32) -> Result<(), LbError> {
        let mut flows: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.datapath.map_mut(LB_BACKEND_FLOWS_MAP)?)
                .map_err(map_failure(LB_BACKEND_FLOWS_MAP))?;
        let zeros = PerCpuValues::try_from(vec![0u64; self.cpus])
            .map_err(|error| map_failure(LB_BACKEND_FLOWS_MAP)(MapError::IoError(error)))?;
        Ok(flows
            .set(id, zeros, 0)
            .map_err(map_failure(LB_BACKEND_FLOWS_MAP))?)
    }
}

/// A VIP as LB_SERVICES keys it.
pub(super) fn key(vip: Ipv4Addr) -> LbServiceKey {
    LbServiceKey {
        vip: u32::from_ne_bytes(vip.octets()),
    }
}
