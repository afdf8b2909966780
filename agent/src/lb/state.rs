//! What the load balancer's maps hold, as the agent keeps it, and the
//! writes that bring them to a plan: backends first, a fresh Maglev table
//! in a spare slot, then the service entry flips to it (the order the
//! module `lb` explains).

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::Ipv4Addr,
};

use std::collections::HashMap as StdHashMap;

use netagent_common::{
    LbBackend, LbMaglevTable, LbService, LB_BACKEND_ACTIVE, LB_BACKEND_DRAINING,
    LB_SERVICE_NO_BACKENDS,
};
use tracing::{debug, info};

use super::{
    error::LbError,
    maglev,
    maps::{LbMaps, PinnedMaps},
    plan,
};
use crate::dataplane::lb_maps::MapSizes;

/// How much of the cluster the caller has seen.
pub struct Seen<'a> {
    /// The gossip view has settled: what it does not mention is gone.
    pub settled: bool,
    /// The nodes in the view: their tasks the view does not mention are gone.
    pub live_nodes: &'a BTreeSet<String>,
}

pub(super) struct State<M = PinnedMaps> {
    /// The maps themselves.
    pub(super) maps: M,
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

impl<M: LbMaps> State<M> {
    /// The state of maps that already hold `services` and `backends` (an
    /// earlier run's, or nothing): every other slot and id is free.
    pub(super) fn adopt(
        maps: M,
        sizes: MapSizes,
        services: BTreeMap<Ipv4Addr, LbService>,
        backends: StdHashMap<Ipv4Addr, (u32, u32)>,
    ) -> Self {
        let used_slots: BTreeSet<u32> = services
            .values()
            .filter(|s| has_table(s))
            .map(|s| s.table_slot)
            .collect();
        let used_ids: BTreeSet<u32> = backends.values().map(|&(id, _)| id).collect();
        State {
            maps,
            // Id 0 stays unused: a zeroed table entry means "no backend".
            free_ids: (1..=sizes.backends)
                .filter(|id| !used_ids.contains(id))
                .collect(),
            free_slots: (0..sizes.table_slots)
                .filter(|slot| !used_slots.contains(slot))
                .collect(),
            next_service_id: services.values().map(|s| s.id).max().unwrap_or(0) + 1,
            sizes,
            services,
            tables: BTreeMap::new(),
            members: BTreeMap::new(),
            refs: StdHashMap::new(),
            backends,
            nodes: BTreeMap::new(),
            exact: false,
        }
    }

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
        self.maps.remove_service(vip)?;
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
        self.maps.remove_backend(id)?;
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
                    if let Err(error) = self.maps.set_table(slot, &table) {
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
                    self.maps.set_table(slot, &table)?;
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
        if let Err(error) = self.maps.set_service(vip, value) {
            if has_table(&value) && old.is_none_or(|o| o.table_slot != value.table_slot) {
                self.free_slots.push_front(value.table_slot);
            }
            return Err(error);
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
            .maps
            .reset_flows(id)
            .and_then(|()| self.put_backend(id, ip, flags));
        if let Err(error) = written {
            self.free_ids.push_front(id);
            return Err(error);
        }
        Ok(())
    }

    pub(super) fn put_backend(&mut self, id: u32, ip: Ipv4Addr, flags: u32) -> Result<(), LbError> {
        let value = LbBackend {
            ip: u32::from_ne_bytes(ip.octets()),
            flags,
        };
        self.maps.set_backend(id, value)?;
        self.backends.insert(ip, (id, flags));
        debug!(%ip, id, flags, "backend written");
        Ok(())
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

#[cfg(test)]
mod tests {
    use aya::maps::MapError;
    use netagent_common::LB_SERVICES_MAP;

    use super::*;
    use crate::dataplane::bpf::map_failure;

    /// The maps as plain collections, with the order of the writes.
    #[derive(Default)]
    struct FakeMaps {
        services: BTreeMap<Ipv4Addr, LbService>,
        backends: BTreeMap<u32, LbBackend>,
        tables: BTreeMap<u32, LbMaglevTable>,
        writes: Vec<String>,
        /// `set_service` fails, as for a full map.
        refuse_services: bool,
    }

    impl LbMaps for FakeMaps {
        fn set_service(&mut self, vip: Ipv4Addr, service: LbService) -> Result<(), LbError> {
            if self.refuse_services {
                return Err(map_failure(LB_SERVICES_MAP)(MapError::KeyNotFound).into());
            }
            self.writes.push(format!("service {vip}"));
            self.services.insert(vip, service);
            Ok(())
        }
        fn remove_service(&mut self, vip: Ipv4Addr) -> Result<(), LbError> {
            self.writes.push(format!("remove service {vip}"));
            self.services.remove(&vip);
            Ok(())
        }
        fn set_backend(&mut self, id: u32, backend: LbBackend) -> Result<(), LbError> {
            self.writes.push(format!("backend {id}"));
            self.backends.insert(id, backend);
            Ok(())
        }
        fn remove_backend(&mut self, id: u32) -> Result<(), LbError> {
            self.writes.push(format!("remove backend {id}"));
            self.backends.remove(&id);
            Ok(())
        }
        fn set_table(&mut self, slot: u32, table: &LbMaglevTable) -> Result<(), LbError> {
            self.writes.push(format!("table {slot}"));
            self.tables.insert(slot, *table);
            Ok(())
        }
        fn reset_flows(&mut self, id: u32) -> Result<(), LbError> {
            self.writes.push(format!("flows {id}"));
            Ok(())
        }
    }

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 250);

    fn ip(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, n)
    }

    fn fresh() -> State<FakeMaps> {
        let sizes = MapSizes {
            services: 4,
            table_slots: 6,
            table_size: 13,
            backends: 8,
            conntrack: 64,
        };
        State::adopt(
            FakeMaps::default(),
            sizes,
            BTreeMap::new(),
            StdHashMap::new(),
        )
    }

    /// The plan of one VIP with backends `(last octet, active)`.
    fn plan(backends: &[(u8, bool)]) -> BTreeMap<Ipv4Addr, plan::Vip> {
        let vip = plan::Vip {
            service: "web".into(),
            network_id: "net".into(),
            addr: VIP,
            backends: backends
                .iter()
                .map(|&(n, active)| plan::Backend {
                    ip: ip(n),
                    node: "n1".into(),
                    active,
                })
                .collect(),
        };
        [(VIP, vip)].into()
    }

    fn sync(
        state: &mut State<FakeMaps>,
        desired: &BTreeMap<Ipv4Addr, plan::Vip>,
    ) -> Result<(), LbError> {
        let nodes = BTreeSet::from(["n1".to_owned()]);
        let seen = Seen {
            settled: true,
            live_nodes: &nodes,
        };
        state.sync(desired, &plan::Changes::All, &seen)
    }

    /// The backend ids the VIP's table sends new flows to.
    fn table_ids(state: &State<FakeMaps>) -> BTreeSet<u32> {
        let service = state.maps.services[&VIP];
        let table = state.maps.tables[&service.table_slot];
        table.backends[..service.table_size as usize]
            .iter()
            .copied()
            .collect()
    }

    fn id_of(state: &State<FakeMaps>, n: u8) -> u32 {
        state.backends[&ip(n)].0
    }

    #[test]
    fn a_vip_is_written_backends_first_then_its_table_then_its_entry() {
        let mut state = fresh();
        sync(&mut state, &plan(&[(5, true), (6, true)])).unwrap();
        let (a, b) = (id_of(&state, 5), id_of(&state, 6));
        assert_eq!(table_ids(&state), BTreeSet::from([a, b]));
        let service = state.maps.services[&VIP];
        assert_eq!((service.backends, service.flags), (2, 0));
        let writes = &state.maps.writes;
        let at = |w: &str| writes.iter().position(|x| x == w).unwrap();
        let table = at(&format!("table {}", service.table_slot));
        // Each backend's flow counter is zeroed before it is written, and
        // both are in place before the table that names them; the entry
        // flips last.
        for id in [a, b] {
            assert!(at(&format!("flows {id}")) < at(&format!("backend {id}")));
            assert!(at(&format!("backend {id}")) < table);
        }
        assert!(table < at(&format!("service {VIP}")), "{writes:?}");
        for backend in state.maps.backends.values() {
            assert_eq!(backend.flags, LB_BACKEND_ACTIVE);
        }
    }

    #[test]
    fn a_draining_backend_leaves_the_table_but_keeps_its_entry() {
        let mut state = fresh();
        sync(&mut state, &plan(&[(5, true), (6, true)])).unwrap();
        let first_slot = state.maps.services[&VIP].table_slot;
        sync(&mut state, &plan(&[(5, true), (6, false)])).unwrap();
        let (a, b) = (id_of(&state, 5), id_of(&state, 6));
        assert_eq!(table_ids(&state), BTreeSet::from([a]));
        assert_eq!(state.maps.backends[&b].flags, LB_BACKEND_DRAINING);
        // The new table went into a fresh slot; the old one is free again,
        // reused last.
        let service = state.maps.services[&VIP];
        assert_ne!(service.table_slot, first_slot);
        assert_eq!(state.free_slots.back(), Some(&first_slot));
    }

    #[test]
    fn a_vip_without_backends_refuses_at_once_and_a_removed_one_frees_everything() {
        let mut state = fresh();
        sync(&mut state, &plan(&[(5, true)])).unwrap();
        let slot = state.maps.services[&VIP].table_slot;
        sync(&mut state, &plan(&[])).unwrap();
        assert_eq!(state.maps.services[&VIP].flags, LB_SERVICE_NO_BACKENDS);
        assert!(state.maps.backends.is_empty(), "an unused backend goes");
        assert!(state.free_slots.contains(&slot));
        sync(&mut state, &BTreeMap::new()).unwrap();
        assert!(state.maps.services.is_empty());
        assert_eq!(state.free_ids.len(), 8, "every backend id is free again");
    }

    #[test]
    fn a_refused_entry_gives_its_fresh_table_slot_back() {
        let mut state = fresh();
        state.maps.refuse_services = true;
        let free = state.free_slots.len();
        assert!(sync(&mut state, &plan(&[(5, true)])).is_err());
        assert_eq!(state.free_slots.len(), free);
        assert!(state.maps.services.is_empty());
        // The next pass, once the map takes it, programs the VIP.
        state.maps.refuse_services = false;
        sync(&mut state, &plan(&[(5, true)])).unwrap();
        assert_eq!(table_ids(&state), BTreeSet::from([id_of(&state, 5)]));
    }

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
