//! VIP load balancing: the agent side of `ebpf/programs/src/lb.rs`.
//!
//! `LoadBalancer` owns its own instance of the datapath object (maps pinned
//! by name under the agent's bpffs directory, so they are the very maps the
//! programs use and survive a restart). `sync` programs the VIPs and their
//! backends; `attach_endpoint` puts the programs on a local endpoint's
//! host-side veth inside its sandbox.
//!
//! Update order, so that the datapath never sees a half-written service:
//! backends first, then a fresh Maglev table in a spare slot (one map
//! update: an LB_MAGLEV entry is a whole table), then the service entry
//! flips to it (one map update), then the old slot and removed backends are
//! freed. Freed slots and ids are reused last (first in, first out), so a
//! packet that read the old service entry just before the flip still finds
//! that entry's table. Flows already open keep their backend through the
//! conntrack map, whatever the table says.
//!
//! Cost: programming N services is N table writes plus the service and
//! backend entries; a change to one service rewrites its table, its entry
//! and the changed backends only. A pass re-plans and compares only the
//! services whose inputs changed (`plan::Planner`); the fingerprinting
//! of the inputs that finds them is the one linear part.

mod fingerprint;
pub mod maglev;

pub mod plan;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::Ipv4Addr,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use std::collections::HashMap as StdHashMap;

use aya::maps::{Array, HashMap, MapError, PerCpuArray, PerCpuValues};
use netagent_api::types::{BackendState, VipState};
use netagent_common::{
    IngressRemote, IngressRev, LbBackend, LbMaglevTable, LbService, LbServiceKey,
    INGRESS_REMOTE_MAP, INGRESS_REV_CT_MAP, LB_BACKENDS_MAP, LB_BACKEND_ACTIVE,
    LB_BACKEND_DRAINING, LB_BACKEND_FLOWS_MAP, LB_EGRESS_PROG, LB_INGRESS_PROG, LB_MAGLEV_MAP,
    LB_SERVICES_MAP, LB_SERVICE_NO_BACKENDS,
};
use tracing::{debug, info, warn};

use crate::{
    dataplane::{
        bpf::{map_failure, removed, Direction, MapFailure, TcSlot},
        lb_maps::MapSizes,
        netns::{self, NetnsError},
        Datapath, DatapathError,
    },
    model::{Endpoint, Service},
};

/// The load balancer runs after the counters (priority 1) on an endpoint's veth.
const LB_SLOT: TcSlot = TcSlot {
    priority: 10,
    handle: 10,
};

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error(transparent)]
    Datapath(Box<DatapathError>),
    #[error("load balancer map {0} (if the map is full, raise the [lb] sizes in the config file; else report it with the agent's log, `journalctl -u netagent`)")]
    Map(#[from] MapFailure),
    #[error(transparent)]
    Maglev(#[from] maglev::MaglevError),
    #[error("no free backend id: raise lb.backends in the config file")]
    NoBackendId,
    #[error("no free Maglev table: raise lb.services in the config file")]
    NoTable,
    #[error(
        "the pinned Maglev map has {pinned} entries, the configuration asks for {configured}: \
         restore the [lb] sizes in the config file, or remove <bpffs>/maps/LB_* and restart netagent \
         (drops open flows through VIPs)"
    )]
    PinnedSize { pinned: u32, configured: u32 },
    #[error(
        "the pinned map {map} holds {pinned}-byte values, this agent writes {expected} bytes \
         (an older agent's layout): remove the pinned LB_* and INGRESS_* maps under \
         <bpffs>/maps and restart (drops open flows through VIPs and published ports)"
    )]
    PinnedLayout {
        map: &'static str,
        pinned: u32,
        expected: u32,
    },
    #[error("cannot attach the load balancer in {}: {source}: check that the namespace exists (`ip netns list`) and netagent runs as root", netns.display())]
    Netns {
        netns: std::path::PathBuf,
        source: Box<NetnsError>,
    },
}

impl From<DatapathError> for LbError {
    fn from(error: DatapathError) -> Self {
        LbError::Datapath(Box::new(error))
    }
}

/// The pinned map `name`'s info if it exists, after checking that its
/// values are `T`s: aya adopts a pin without comparing layouts, and the
/// programs would otherwise read an older agent's values with this one's.
fn check_value_size<T>(
    datapath: &Datapath,
    name: &'static str,
) -> Result<Option<aya::maps::MapInfo>, LbError> {
    use aya::maps::Map;
    let data = match datapath.map(name)? {
        Map::Array(data) | Map::HashMap(data) | Map::LruHashMap(data) => data,
        _ => return Ok(None),
    };
    let info = data.info().map_err(map_failure(name))?;
    let expected = std::mem::size_of::<T>() as u32;
    if info.value_size() != expected {
        return Err(LbError::PinnedLayout {
            map: name,
            pinned: info.value_size(),
            expected,
        });
    }
    Ok(Some(info))
}

/// How much of the cluster the caller has seen.
pub struct Seen<'a> {
    /// The gossip view has settled: what it does not mention is gone.
    pub settled: bool,
    /// The nodes in the view: their tasks the view does not mention are gone.
    pub live_nodes: &'a BTreeSet<String>,
}

struct State {
    datapath: Datapath,
    sizes: MapSizes,
    /// What LB_SERVICES holds, by VIP.
    services: BTreeMap<Ipv4Addr, LbService>,
    /// Active backends each table was computed from (unknown after a restart).
    tables: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
    /// Backends of each VIP, active or draining.
    members: BTreeMap<Ipv4Addr, Vec<plan::Backend>>,
    /// What LB_BACKENDS holds: ip -> (id, flags).
    backends: StdHashMap<Ipv4Addr, (u32, u32)>,
    /// How many members name each backend (kept with `members`).
    refs: StdHashMap<Ipv4Addr, BackendRefs>,
    /// The node of each backend, as last seen (unknown after a restart).
    nodes: BTreeMap<Ipv4Addr, String>,
    /// The maps hold exactly the last plan (a settled pass went through):
    /// the next pass may write only what changed.
    exact: bool,
    /// Maglev slots no service uses, least recently freed first.
    free_slots: VecDeque<u32>,
    /// Backend ids nothing uses, least recently freed first.
    free_ids: VecDeque<u32>,
    next_service_id: u32,
}

/// How many VIPs name a backend, and as active.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct BackendRefs {
    active: u32,
    all: u32,
}

impl BackendRefs {
    fn add(&mut self, active: bool) {
        self.all += 1;
        self.active += u32::from(active);
    }

    fn remove(&mut self, active: bool) {
        self.all = self.all.saturating_sub(1);
        self.active = self.active.saturating_sub(u32::from(active));
    }

    /// Active if any VIP takes new flows to it, else draining.
    fn flags(&self) -> u32 {
        if self.active > 0 {
            LB_BACKEND_ACTIVE
        } else {
            LB_BACKEND_DRAINING
        }
    }
}

pub struct LoadBalancer {
    /// The last plan, diffed against each pass's inputs (locked before
    /// `state`).
    planner: Mutex<plan::Planner>,
    state: Arc<Mutex<State>>,
    /// Endpoints this run has attached the programs to (a restarted agent
    /// re-attaches once, replacing an older program in place).
    attached: Mutex<BTreeSet<String>>,
}

impl LoadBalancer {
    /// Opens the load balancer's maps under `bpffs` (creating them on the
    /// first run) and adopts what an earlier run programmed.
    pub fn load(bpffs: &Path, sizes: MapSizes) -> Result<Self, LbError> {
        let mut datapath = Datapath::load(bpffs, &sizes)?;
        // Pinned maps keep the layout and sizes they were created with (aya
        // adopts a pin without comparing them): check before anything is
        // written or attached.
        check_value_size::<IngressRev>(&datapath, INGRESS_REV_CT_MAP)?;
        check_value_size::<IngressRemote>(&datapath, INGRESS_REMOTE_MAP)?;
        let maglev = check_value_size::<LbMaglevTable>(&datapath, LB_MAGLEV_MAP)?;
        if let Some(info) = maglev {
            if info.max_entries() != sizes.table_slots {
                return Err(LbError::PinnedSize {
                    pinned: info.max_entries(),
                    configured: sizes.table_slots,
                });
            }
        }
        let services: HashMap<_, LbServiceKey, LbService> =
            HashMap::try_from(datapath.map_mut(LB_SERVICES_MAP)?)
                .map_err(map_failure(LB_SERVICES_MAP))?;
        let services: BTreeMap<Ipv4Addr, LbService> = services
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (Ipv4Addr::from(k.vip.to_ne_bytes()), v))
            .collect();
        let backends: HashMap<_, u32, LbBackend> =
            HashMap::try_from(datapath.map_mut(LB_BACKENDS_MAP)?)
                .map_err(map_failure(LB_BACKENDS_MAP))?;
        let backends: StdHashMap<Ipv4Addr, (u32, u32)> = backends
            .iter()
            .filter_map(Result::ok)
            .map(|(id, b)| (Ipv4Addr::from(b.ip.to_ne_bytes()), (id, b.flags)))
            .collect();
        info!(
            vips = services.len(),
            backends = backends.len(),
            "load balancer maps opened"
        );
        let used_slots: BTreeSet<u32> = services
            .values()
            .filter(|s| has_table(s))
            .map(|s| s.table_slot)
            .collect();
        let used_ids: BTreeSet<u32> = backends.values().map(|&(id, _)| id).collect();
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                datapath,
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
            })),
            planner: Mutex::new(plan::Planner::default()),
            attached: Mutex::new(BTreeSet::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic mid-update leaves maps the datapath can still use.
        crate::sync::lock(&self.state)
    }

    /// Programs every VIP of `services` with its tasks among `endpoints`.
    ///
    /// Until the gossip view has settled (a freshly started agent has not
    /// heard from every node yet), a backend the view does not mention is
    /// kept, in its tables too, unless its node is in the view (then the
    /// task was withdrawn); no VIP goes, and tables a restart adopted stay
    /// as they are. So a restart never cuts the flows of tasks on nodes it
    /// has not heard from yet. An unhealthy task drains at once.
    pub fn sync(
        &self,
        services: &[Service],
        endpoints: &[Endpoint],
        seen: &Seen<'_>,
    ) -> Result<(), LbError> {
        self.sync_with(services, endpoints, BTreeMap::new(), seen)
    }

    /// `sync`, with `extra` entries programmed alongside the VIPs (the
    /// published ports' own tables, see `ingress`).
    pub fn sync_with(
        &self,
        services: &[Service],
        endpoints: &[Endpoint],
        extra: BTreeMap<Ipv4Addr, plan::Vip>,
        seen: &Seen<'_>,
    ) -> Result<(), LbError> {
        let mut planner = self.planner.lock().unwrap_or_else(|poisoned| {
            // A panic mid-update: plan from scratch.
            let mut planner = poisoned.into_inner();
            *planner = plan::Planner::default();
            planner
        });
        self.planner.clear_poison();
        let changes = planner.update(services, endpoints, extra);
        self.lock().sync(planner.desired(), &changes, seen)
    }

    /// Puts the load balancer on `ifname` (an endpoint's host veth) inside
    /// namespace `sandbox`, replacing in place what an earlier run attached.
    pub async fn attach_endpoint(&self, sandbox: &Path, ifname: &str) -> Result<(), LbError> {
        let state = self.state.clone();
        let ifname = ifname.to_owned();
        let result = netns::run_in(Some(sandbox), move || {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            let attach = |dp: &mut Datapath| -> Result<(), DatapathError> {
                dp.attach_tc(LB_INGRESS_PROG, &ifname, Direction::Ingress, LB_SLOT)?;
                dp.attach_tc(LB_EGRESS_PROG, &ifname, Direction::Egress, LB_SLOT)
            };
            Ok(attach(&mut state.datapath))
        })
        .await
        .map_err(|source| LbError::Netns {
            netns: sandbox.to_owned(),
            source: Box::new(source),
        })?;
        result.map_err(LbError::from)
    }

    /// Attaches the programs to endpoint `endpoint_id`'s veth unless this
    /// run already did.
    pub async fn ensure_attached(
        &self,
        endpoint_id: &str,
        sandbox: &Path,
        ifname: &str,
    ) -> Result<(), LbError> {
        if self.attached_ids().contains(endpoint_id) {
            return Ok(());
        }
        self.attach_endpoint(sandbox, ifname).await?;
        self.attached_ids().insert(endpoint_id.to_owned());
        Ok(())
    }

    fn attached_ids(&self) -> MutexGuard<'_, BTreeSet<String>> {
        crate::sync::lock(&self.attached)
    }

    /// The VIPs as the datapath sees them, read back from the maps.
    pub fn inspect(&self, vips: &[Ipv4Addr]) -> Result<Vec<VipState>, LbError> {
        self.lock().inspect(vips)
    }
}

impl State {
    /// Whether backend `ip`, which the view does not mention, is gone.
    fn gone(&self, ip: Ipv4Addr, seen: &Seen<'_>) -> bool {
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
    fn sync(
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
    fn sync_all(
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
    fn sync_changed(
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
    fn set_members(&mut self, addr: Ipv4Addr, backends: Option<&Vec<plan::Backend>>) {
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
    fn ensure_backend(&mut self, ip: Ipv4Addr, flags: u32) -> Result<(), LbError> {
        match self.backends.get(&ip) {
            Some(&(_, old)) if old == flags => Ok(()),
            Some(&(id, _)) => self.put_backend(id, ip, flags),
            None => self.add_backend(ip, flags),
        }
    }

    /// Programs VIP `addr`'s table and entry unless they hold `vip` already.
    fn ensure_vip(
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
    fn remove_vip(&mut self, vip: Ipv4Addr) -> Result<(), LbError> {
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
    fn remove_backend(&mut self, ip: Ipv4Addr) -> Result<(), LbError> {
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
    fn program_vip(&mut self, vip: Ipv4Addr, active: &[Ipv4Addr]) -> Result<(), LbError> {
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
    fn table_of(&self, active: &[Ipv4Addr]) -> Result<LbMaglevTable, LbError> {
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

    fn write_table(&mut self, slot: u32, table: &LbMaglevTable) -> Result<(), LbError> {
        let mut array: Array<_, LbMaglevTable> =
            Array::try_from(self.datapath.map_mut(LB_MAGLEV_MAP)?)
                .map_err(map_failure(LB_MAGLEV_MAP))?;
        array
            .set(slot, table, 0)
            .map_err(|error| map_failure(LB_MAGLEV_MAP)(error).into())
    }

    /// Gives `service`'s table slot back, to be reused last.
    fn free_slot(&mut self, service: &LbService) {
        if has_table(service) {
            self.free_slots.push_back(service.table_slot);
        }
    }

    /// Gives backend `ip` a free id: its flow counter starts at zero, then
    /// the backend entry is written.
    fn add_backend(&mut self, ip: Ipv4Addr, flags: u32) -> Result<(), LbError> {
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

    fn put_backend(&mut self, id: u32, ip: Ipv4Addr, flags: u32) -> Result<(), LbError> {
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

    fn services_map(
        &mut self,
    ) -> Result<HashMap<&mut aya::maps::MapData, LbServiceKey, LbService>, LbError> {
        HashMap::try_from(self.datapath.map_mut(LB_SERVICES_MAP)?)
            .map_err(|error| map_failure(LB_SERVICES_MAP)(error).into())
    }

    fn backends_map(
        &mut self,
    ) -> Result<HashMap<&mut aya::maps::MapData, u32, LbBackend>, LbError> {
        HashMap::try_from(self.datapath.map_mut(LB_BACKENDS_MAP)?)
            .map_err(|error| map_failure(LB_BACKENDS_MAP)(error).into())
    }

    fn inspect(&self, vips: &[Ipv4Addr]) -> Result<Vec<VipState>, LbError> {
        let services: HashMap<_, LbServiceKey, LbService> =
            HashMap::try_from(self.datapath.map(LB_SERVICES_MAP)?)
                .map_err(map_failure(LB_SERVICES_MAP))?;
        let backends: HashMap<_, u32, LbBackend> =
            HashMap::try_from(self.datapath.map(LB_BACKENDS_MAP)?)
                .map_err(map_failure(LB_BACKENDS_MAP))?;
        let tables: Array<_, LbMaglevTable> = Array::try_from(self.datapath.map(LB_MAGLEV_MAP)?)
            .map_err(map_failure(LB_MAGLEV_MAP))?;
        let flows: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.datapath.map(LB_BACKEND_FLOWS_MAP)?)
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

/// The keys of `have` that `want` lacks, in one pass over both (sorted).
fn missing_from<V, W>(have: &BTreeMap<Ipv4Addr, V>, want: &BTreeMap<Ipv4Addr, W>) -> Vec<Ipv4Addr> {
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
fn has_table(service: &LbService) -> bool {
    service.flags & LB_SERVICE_NO_BACKENDS == 0
}

fn key(vip: Ipv4Addr) -> LbServiceKey {
    LbServiceKey {
        vip: u32::from_ne_bytes(vip.octets()),
    }
}

/// Logs a failed sync; the next reconcile pass tries again.
pub fn log_sync_error(error: &LbError) {
    warn!(%error, "cannot program the load balancer; retrying on the next pass");
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
