//! What the load balancer's maps hold, as the agent keeps it, and the
//! writes that bring them to a plan: backends first, a fresh Maglev table
//! in a spare slot, then the service entry flips to it (the order the
//! module `lb` explains).

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::Ipv4Addr,
};

use std::collections::HashMap as StdHashMap;

use aya::maps::{Array, HashMap, MapError, PerCpuArray, PerCpuValues};
use netagent_common::{
    LbBackend, LbMaglevTable, LbService, LbServiceKey, LB_BACKENDS_MAP, LB_BACKEND_ACTIVE,
    LB_BACKEND_DRAINING, LB_BACKEND_FLOWS_MAP, LB_MAGLEV_MAP, LB_SERVICES_MAP,
    LB_SERVICE_NO_BACKENDS,
};
use tracing::{debug, info};

use super::{error::LbError, maglev, plan};
use crate::dataplane::{
    bpf::{map_failure, removed},
    lb_maps::MapSizes,
    Datapath,
};

/// How much of the cluster the caller has seen.
pub struct Seen<'a> {
    /// The gossip view has settled: what it does not mention is gone.
    pub settled: bool,
    /// The nodes in the view: their tasks the view does not mention are gone.
    pub live_nodes: &'a BTreeSet<String>,
}

pub(super) struct State {
    pub(super) datapath: Datapath,
    pub(super) sizes: MapSizes,
    /// What LB_SERVICES holds, by VIP.
    pub(super) services: BTreeMap<Ipv4Addr, LbService>,
    /// Active backends each table was computed from (unknown after a restart).
    pub(super) tables: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
    /// Backends of each VIP, active or draining.
    pub(super) members: BTreeMap<Ipv4Addr, Vec<plan::Backend>>,
    /// What LB_BACKENDS holds: ip -> (id, flags).
    pub(super) backends: StdHashMap<Ipv4Addr, (u32, u32)>,
    /// How many members name each backend (kept with `members`).
    pub(super) refs: StdHashMap<Ipv4Addr, BackendRefs>,
    /// The node of each backend, as last seen (unknown after a restart).
    pub(super) nodes: BTreeMap<Ipv4Addr, String>,
    /// The maps hold exactly the last plan (a settled pass went through):
    /// the next pass may write only what changed.
    pub(super) exact: bool,
    /// Maglev slots no service uses, least recently freed first.
    pub(super) free_slots: VecDeque<u32>,
    /// Backend ids nothing uses, least recently freed first.
    pub(super) free_ids: VecDeque<u32>,
    pub(super) next_service_id: u32,
}

/// How many VIPs name a backend, and as active.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct BackendRefs {
    active: u32,
    all: u32,
}

impl BackendRefs {
    pub(super) fn add(&mut self, active: bool) {
        self.all += 1;
        self.active += u32::from(active);
    }

    pub(super) fn remove(&mut self, active: bool) {
        self.all = self.all.saturating_sub(1);
        self.active = self.active.saturating_sub(u32::from(active));
    }

    /// Active if any VIP takes new flows to it, else draining.
    pub(super) fn flags(&self) -> u32 {
        if self.active > 0 {
            LB_BACKEND_ACTIVE
        } else {
            LB_BACKEND_DRAINING
        }
    }
}

impl State {
    /// Whether backend `ip`, which the view does not mention, is gone.
    pub(super) fn gone(&self, ip: Ipv4Addr, seen: &Seen<'_>) -> bool {
        seen.settled
            || self
                .nodes
                .get(&ip)
                .is_some_and(|node| seen.live_nodes.contains(node))
    }

    /// Brings the maps to `desired`: every VIP when `changes` says
    /// anything may have changed or the maps may hold more than the plan
    /// (adopted, unseen or a failed pass), else only the changed VIPs and
    /// their backends.
    pub(super) fn sync(
        &mut self,
        desired: &BTreeMap<Ipv4Addr, plan::Vip>,
        changes: &plan::Changes,
        seen: &Seen<'_>,
    ) -> Result<(), LbError> {
        let exact = std::mem::take(&mut self.exact);
        match changes {
            plan::Changes::Only(changed) if exact && seen.settled => {
                self.sync_changed(desired, changed, seen)?
            }
            _ => self.sync_all(desired, seen)?,
        }
        // Settled, a pass that went through leaves exactly the plan.
        self.exact = seen.settled;
        Ok(())
    }

    /// Every VIP: compares each with what it holds.
    pub(super) fn sync_all(
        &mut self,
        desired: &BTreeMap<Ipv4Addr, plan::Vip>,
        seen: &Seen<'_>,
    ) -> Result<(), LbError> {
        // 1. Backends: every one any VIP needs, with its current state.
        let mut wanted: StdHashMap<Ipv4Addr, u32> = StdHashMap::with_capacity(self.backends.len());
        for vip in desired.values() {
            for b in &vip.backends {
                let entry = wanted.entry(b.ip).or_insert(LB_BACKEND_DRAINING);
                if b.active {
                    *entry = LB_BACKEND_ACTIVE;
                }
            }
        }
        // (Settled, every backend the view does not mention is gone.)
        if !seen.settled {
            for (&ip, &(_, flags)) in &self.backends {
                if !wanted.contains_key(&ip) && !self.gone(ip, seen) {
                    wanted.insert(ip, flags);
                }
            }
        }
        for (&ip, &flags) in &wanted {
            self.ensure_backend(ip, flags)?;
        }
        // 2 and 3. Tables, then the service entries.
        for (&addr, vip) in desired {
            self.set_members(addr, Some(&vip.backends));
            self.ensure_vip(addr, vip, seen)?;
        }
        // 4. VIPs that went (the services come from the managers, whole;
        // still, none goes before the view settles), then backends nothing
        // uses any more.
        if seen.settled {
            for vip in missing_from(&self.services, desired) {
                self.remove_vip(vip)?;
            }
        }
        let unused: Vec<Ipv4Addr> = self
            .backends
            .keys()
            .filter(|ip| !wanted.contains_key(ip))
            .copied()
            .collect();
        for ip in unused {
            self.remove_backend(ip)?;
        }
        Ok(())
    }

    /// Only the VIPs in `changed` (settled, the maps holding exactly the
    /// last plan): O(changed), whatever the number of services.
    pub(super) fn sync_changed(
        &mut self,
        desired: &BTreeMap<Ipv4Addr, plan::Vip>,
        changed: &BTreeSet<Ipv4Addr>,
        seen: &Seen<'_>,
    ) -> Result<(), LbError> {
        // The backends these VIPs had or have: only theirs can change.
        let mut touched: BTreeSet<Ipv4Addr> = BTreeSet::new();
        for &addr in changed {
            let old = self.members.get(&addr).into_iter().flatten();
            let new = desired.get(&addr).map(|vip| &vip.backends);
            touched.extend(old.chain(new.into_iter().flatten()).map(|b| b.ip));
            self.set_members(addr, new);
        }
        // Then in the order `sync_all` writes them.
        for &ip in &touched {
            if let Some(flags) = self.refs.get(&ip).map(BackendRefs::flags) {
                self.ensure_backend(ip, flags)?;
            }
        }
        for &addr in changed {
            if let Some(vip) = desired.get(&addr) {
                self.ensure_vip(addr, vip, seen)?;
            }
        }
        for &addr in changed {
            if !desired.contains_key(&addr) {
                self.remove_vip(addr)?;
            }
        }
        for ip in touched {
            if !self.refs.contains_key(&ip) && self.backends.contains_key(&ip) {
                self.remove_backend(ip)?;
            }
        }
        Ok(())
    }

    /// Records `backends` as VIP `addr`'s members (none: it went), keeping
    /// the backends' reference counts and nodes.
    pub(super) fn set_members(&mut self, addr: Ipv4Addr, backends: Option<&Vec<plan::Backend>>) {
        if self.members.get(&addr) == backends {
            return;
        }
        for b in self.members.remove(&addr).into_iter().flatten() {
            if let std::collections::hash_map::Entry::Occupied(mut refs) = self.refs.entry(b.ip) {
                refs.get_mut().remove(b.active);
                if refs.get().all == 0 {
                    refs.remove();
                }
            }
        }
        let Some(backends) = backends else {
            return;
        };
        for b in backends {
            self.refs.entry(b.ip).or_default().add(b.active);
            if self.nodes.get(&b.ip) != Some(&b.node) {
                self.nodes.insert(b.ip, b.node.clone());
            }
        }
        self.members.insert(addr, backends.clone());
    }

    /// Writes backend `ip` with `flags` unless it holds them already.
    pub(super) fn ensure_backend(&mut self, ip: Ipv4Addr, flags: u32) -> Result<(), LbError> {
        match self.backends.get(&ip) {
            Some(&(_, old)) if old == flags => Ok(()),
            Some(&(id, _)) => self.put_backend(id, ip, flags),
            None => self.add_backend(ip, flags),
        }
    }

    /// Programs VIP `addr`'s table and entry unless they hold `vip` already.
    pub(super) fn ensure_vip(
        &mut self,
        addr: Ipv4Addr,
        vip: &plan::Vip,
        seen: &Seen<'_>,
    ) -> Result<(), LbError> {
        // Settled, the table is exactly the active backends: most VIPs
        // are unchanged, found so without allocating. (A VIP has a
        // table only once its service entry is written.)
        if seen.settled {
            let active = vip.backends.iter().filter(|b| b.active).map(|b| b.ip);
            if self
                .tables
                .get(&addr)
                .is_some_and(|current| current.iter().copied().eq(active))
            {
                return Ok(());
            }
        }
        let mut active = vip.active();
        // Keep the backends the view does not mention but that may just
        // not have been heard from yet.
        if let Some(current) = self.tables.get(&addr) {
            let unseen: Vec<Ipv4Addr> = current
                .iter()
                .filter(|&&ip| !vip.backends.iter().any(|b| b.ip == ip) && !self.gone(ip, seen))
                .copied()
                .collect();
            active.extend(unseen);
            active.sort();
        }
        if self.services.contains_key(&addr) {
            let unchanged = match self.tables.get(&addr) {
                Some(current) => current == &active,
                // Adopted from an earlier run: kept until settled.
                None => !seen.settled,
            };
            if unchanged {
                return Ok(());
            }
        }
        self.program_vip(addr, &active)?;
        self.tables.insert(addr, active);
        Ok(())
    }

    /// Removes VIP `vip`'s entry, then frees its table.
    pub(super) fn remove_vip(&mut self, vip: Ipv4Addr) -> Result<(), LbError> {
        let mut services = self.services_map()?;
        removed(services.remove(&key(vip))).map_err(map_failure(LB_SERVICES_MAP))?;
        if let Some(service) = self.services.remove(&vip) {
            self.free_slot(&service);
            info!(%vip, "VIP removed from the load balancer");
        }
        self.tables.remove(&vip);
        self.set_members(vip, None);
        Ok(())
    }

    /// Removes backend `ip`, which no table names any more.
    pub(super) fn remove_backend(&mut self, ip: Ipv4Addr) -> Result<(), LbError> {
        let Some(&(id, _)) = self.backends.get(&ip) else {
            return Ok(());
        };
        let mut backends = self.backends_map()?;
        removed(backends.remove(&id)).map_err(map_failure(LB_BACKENDS_MAP))?;
        self.backends.remove(&ip);
        self.nodes.remove(&ip);
        self.free_ids.push_back(id);
        debug!(%ip, id, "backend removed");
        Ok(())
    }

    /// Writes a fresh table for `vip` into a spare slot (one map update),
    /// then flips the service entry to it and frees the old slot.
    pub(super) fn program_vip(
        &mut self,
        vip: Ipv4Addr,
        active: &[Ipv4Addr],
    ) -> Result<(), LbError> {
        let size = self.sizes.table_size;
        let old = self.services.get(&vip).copied();
        let id = match old {
            Some(old) => old.id,
            None => {
                self.next_service_id += 1;
                self.next_service_id - 1
            }
        };
        let value = if active.is_empty() {
            LbService {
                id,
                table_slot: old.map_or(0, |o| o.table_slot),
                table_size: size,
                backends: 0,
                flags: LB_SERVICE_NO_BACKENDS,
            }
        } else {
            let table = self.table_of(active)?;
            let slot = match self.free_slots.pop_front() {
                Some(slot) => {
                    if let Err(error) = self.write_table(slot, &table) {
                        self.free_slots.push_front(slot);
                        return Err(error);
                    }
                    slot
                }
                // No spare: rewrite in place. Every entry stays a valid
                // backend throughout, old or new.
                None => {
                    let slot = old
                        .filter(has_table)
                        .map(|o| o.table_slot)
                        .ok_or(LbError::NoTable)?;
                    self.write_table(slot, &table)?;
                    slot
                }
            };
            LbService {
                id,
                table_slot: slot,
                table_size: size,
                backends: active.len() as u32,
                flags: 0,
            }
        };
        let mut services = self.services_map()?;
        if let Err(error) = services.insert(key(vip), value, 0) {
            if has_table(&value) && old.is_none_or(|o| o.table_slot != value.table_slot) {
                self.free_slots.push_front(value.table_slot);
            }
            return Err(map_failure(LB_SERVICES_MAP)(error).into());
        }
        self.services.insert(vip, value);
        if let Some(old) = old.filter(|o| !has_table(&value) || o.table_slot != value.table_slot) {
            self.free_slot(&old);
        }
        debug!(%vip, backends = active.len(), slot = value.table_slot, "VIP programmed");
        Ok(())
    }

    /// The Maglev table of backends `active` (which all have ids), as
    /// stored: the first `table_size` entries hold backend ids.
    pub(super) fn table_of(&self, active: &[Ipv4Addr]) -> Result<LbMaglevTable, LbError> {
        let keys: Vec<[u8; 4]> = active.iter().map(|ip| ip.octets()).collect();
        let mut table = LbMaglevTable::default();
        for (entry, &i) in table
            .backends
            .iter_mut()
            .zip(maglev::table(&keys, self.sizes.table_size)?.iter())
        {
            let ip = Ipv4Addr::from(keys[i as usize]);
            *entry = self.backends.get(&ip).map_or(0, |&(id, _)| id);
        }
        Ok(table)
    }

    pub(super) fn write_table(&mut self, slot: u32, table: &LbMaglevTable) -> Result<(), LbError> {
        let mut array: Array<_, LbMaglevTable> =
            Array::try_from(self.datapath.map_mut(LB_MAGLEV_MAP)?)
                .map_err(map_failure(LB_MAGLEV_MAP))?;
        array
            .set(slot, table, 0)
            .map_err(|error| map_failure(LB_MAGLEV_MAP)(error).into())
    }

    /// Gives `service`'s table slot back, to be reused last.
    pub(super) fn free_slot(&mut self, service: &LbService) {
        if has_table(service) {
            self.free_slots.push_back(service.table_slot);
        }
    }

    /// Gives backend `ip` a free id: its flow counter starts at zero, then
    /// the backend entry is written.
    pub(super) fn add_backend(&mut self, ip: Ipv4Addr, flags: u32) -> Result<(), LbError> {
        let id = self.free_ids.pop_front().ok_or(LbError::NoBackendId)?;
        let written = self
            .reset_flows(id)
            .and_then(|()| self.put_backend(id, ip, flags));
        if let Err(error) = written {
            self.free_ids.push_front(id);
            return Err(error);
        }
        Ok(())
    }

    pub(super) fn put_backend(&mut self, id: u32, ip: Ipv4Addr, flags: u32) -> Result<(), LbError> {
        let mut backends = self.backends_map()?;
        let value = LbBackend {
            ip: u32::from_ne_bytes(ip.octets()),
            flags,
        };
        backends
            .insert(id, value, 0)
            .map_err(map_failure(LB_BACKENDS_MAP))?;
        self.backends.insert(ip, (id, flags));
        debug!(%ip, id, flags, "backend written");
        Ok(())
    }

    /// Zeroes backend id `id`'s new-flow counter on every CPU.
    pub(super) fn reset_flows(&mut self, id: u32) -> Result<(), LbError> {
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

    pub(super) fn services_map(
        &mut self,
    ) -> Result<HashMap<&mut aya::maps::MapData, LbServiceKey, LbService>, LbError> {
        HashMap::try_from(self.datapath.map_mut(LB_SERVICES_MAP)?)
            .map_err(|error| map_failure(LB_SERVICES_MAP)(error).into())
    }

    pub(super) fn backends_map(
        &mut self,
    ) -> Result<HashMap<&mut aya::maps::MapData, u32, LbBackend>, LbError> {
        HashMap::try_from(self.datapath.map_mut(LB_BACKENDS_MAP)?)
            .map_err(|error| map_failure(LB_BACKENDS_MAP)(error).into())
    }
}

/// The keys of `have` that `want` lacks, in one pass over both (sorted).
pub(super) fn missing_from<V, W>(
    have: &BTreeMap<Ipv4Addr, V>,
    want: &BTreeMap<Ipv4Addr, W>,
) -> Vec<Ipv4Addr> {
    let mut want = want.keys().peekable();
    have.keys()
        .filter(|&key| {
            while want.next_if(|w| *w < key).is_some() {}
            want.peek() != Some(&key)
        })
        .copied()
        .collect()
}

/// Whether the service entry points at a table of its own (it has active
/// backends).
pub(super) fn has_table(service: &LbService) -> bool {
    service.flags & LB_SERVICE_NO_BACKENDS == 0
}

pub(super) fn key(vip: Ipv4Addr) -> LbServiceKey {
    LbServiceKey {
        vip: u32::from_ne_bytes(vip.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_is_active_while_any_vip_takes_new_flows_to_it() {
        let mut refs = BackendRefs::default();
        refs.add(false);
        assert_eq!(refs.flags(), LB_BACKEND_DRAINING);
        refs.add(true);
        assert_eq!(refs.flags(), LB_BACKEND_ACTIVE);
        refs.remove(true);
        assert_eq!(refs.flags(), LB_BACKEND_DRAINING);
        refs.remove(false);
        assert_eq!(refs, BackendRefs::default());
    }

    #[test]
    fn missing_from_finds_the_keys_the_other_map_lacks() {
        let ip = |n: u8| Ipv4Addr::new(10, 0, 0, n);
        let have: BTreeMap<Ipv4Addr, ()> = [1, 2, 4, 7, 9].map(|n| (ip(n), ())).into();
        let want: BTreeMap<Ipv4Addr, ()> = [0, 2, 3, 7, 8].map(|n| (ip(n), ())).into();
        assert_eq!(missing_from(&have, &want), vec![ip(1), ip(4), ip(9)]);
        assert_eq!(
            missing_from(&have, &BTreeMap::<Ipv4Addr, ()>::new()).len(),
            5
        );
        assert!(missing_from(&BTreeMap::<Ipv4Addr, ()>::new(), &want).is_empty());
    }
}
