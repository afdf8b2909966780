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

mod error;
mod fingerprint;
mod inspect;
pub mod maglev;
mod maps;
pub mod plan;
mod state;

pub use error::LbError;
pub use state::Seen;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use netagent_api::types::VipState;
use netagent_common::{
    IngressRemote, IngressRev, LbMaglevTable, INGRESS_REMOTE_MAP, INGRESS_REV_CT_MAP,
    LB_EGRESS_PROG, LB_INGRESS_PROG, LB_MAGLEV_MAP,
};
use tracing::info;

use maps::PinnedMaps;
use state::State;

use crate::{
    dataplane::{
        bpf::{map_failure, Direction, TcSlot},
        lb_maps::MapSizes,
        netns::{self},
        Datapath, DatapathError,
    },
    model::{Endpoint, Service},
};

/// The load balancer runs after the counters (priority 1) on an endpoint's veth.
const LB_SLOT: TcSlot = TcSlot {
    priority: 10,
    handle: 10,
};

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
        let datapath = Datapath::load(bpffs, &sizes)?;
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
        let mut maps = PinnedMaps::new(datapath)?;
        let (services, backends) = maps.adopted()?;
        info!(
            vips = services.len(),
            backends = backends.len(),
            "load balancer maps opened"
        );
        Ok(Self {
            state: Arc::new(Mutex::new(State::adopt(maps, sizes, services, backends))),
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
            let mut state = crate::sync::lock(&state);
            let attach = |dp: &mut Datapath| -> Result<(), DatapathError> {
                dp.attach_tc(LB_INGRESS_PROG, &ifname, Direction::Ingress, LB_SLOT)?;
                dp.attach_tc(LB_EGRESS_PROG, &ifname, Direction::Egress, LB_SLOT)
            };
            Ok(attach(state.maps.datapath_mut()))
        })
        .await
        .map_err(|source| LbError::Netns {
            netns: sandbox.to_owned(),
            cause: Box::new(source),
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
