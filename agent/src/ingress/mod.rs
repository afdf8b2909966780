//! Published ports: the agent side of `ebpf/programs/src/ingress.rs`.
//!
//! `Ingress` owns its own instance of the datapath object (the maps are
//! pinned by name, so they are the very maps the programs and the VIP load
//! balancer use) and puts `ingress_in`/`ingress_out` on the node's underlay
//! interface. Each reconcile pass:
//!
//! 1. `plan::plan` says which ports this node opens and which table serves
//!    each (ingress mode: the service VIP's; host mode: a table of the
//!    node's own tasks, programmed by the load balancer with the VIPs);
//! 2. the return path of every network with an ingress-mode port: this
//!    node's ingress address there (`ipam::ingress_address`), published in
//!    gossip as a node-owned pseudo-endpoint so that other nodes route it
//!    back here (`dataplane::ingress_path`; kept by `node::return_paths`), `ingress_uplink` on the
//!    network's `nagw<vni>` and its INGRESS_UPLINKS entry (which lets
//!    `ingress_in` send flows to remote tasks from that address);
//! 3. `sync_maps`: INGRESS_LOCAL (this node's endpoint addresses), then
//!    INGRESS_PORTS (ports that went first, then new and changed ones);
//! 4. `sync_remote_tasks`: INGRESS_REMOTE (`remote::plan`: the node, VNI and
//!    MAC of each task on another node), with which `ingress_in` sends
//!    their flows over VXLAN itself. A task missing there (not yet known,
//!    or the map full) takes the sandbox path: nothing waits on this map.

pub mod plan;
pub mod remote;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    sync::{Mutex, MutexGuard},
};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    HashMap, MapError,
};
use ipnet::Ipv4Net;
use netagent_common::{
    IngressPort, IngressPortKey, IngressRemote, IngressUplink, INGRESS_IN_PROG, INGRESS_LOCAL_MAP,
    INGRESS_OUT_PROG, INGRESS_PORTS_MAP, INGRESS_REMOTE_MAP, INGRESS_UPLINKS_MAP,
    INGRESS_UPLINK_PROG,
};
use tracing::{debug, info, warn};

use crate::{
    dataplane::lb_maps::MapSizes,
    dataplane::{
        bpf::{map_failure, removed, Direction, MapFailure, TcSlot},
        Datapath, DatapathError,
    },
    model::{Endpoint, Network},
};

/// After the counters (priority 1) on the underlay interface.
const INGRESS_SLOT: TcSlot = TcSlot {
    priority: 20,
    handle: 20,
};

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error(transparent)]
    Datapath(Box<DatapathError>),
    #[error("published-port map {0}: report it with the agent's log (`journalctl -u netagent`)")]
    Map(MapFailure),
}

impl From<MapFailure> for IngressError {
    fn from(cause: MapFailure) -> Self {
        Self::Map(cause)
    }
}

impl From<DatapathError> for IngressError {
    fn from(error: DatapathError) -> Self {
        IngressError::Datapath(Box::new(error))
    }
}

fn be(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn ip(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

fn subnet_key(net: &Ipv4Net) -> Key<u32> {
    Key::new(u32::from(net.prefix_len()), be(net.network()))
}

/// Brings a map whose content `have` mirrors to `wanted`, touching only
/// what differs: `remove` each key no longer wanted, then `insert` each new
/// or changed entry. `insert` answers whether the entry is in the map now
/// (false: it was left out, and any older entry for its key removed).
/// `have` follows every step that succeeded; the first error stops.
fn sync_by_difference<M, K: Ord + Copy, V: PartialEq + Copy, E>(
    map: &mut M,
    have: &mut BTreeMap<K, V>,
    wanted: &BTreeMap<K, V>,
    mut remove: impl FnMut(&mut M, &K) -> Result<(), E>,
    mut insert: impl FnMut(&mut M, &K, &V) -> Result<bool, E>,
) -> Result<(), E> {
    let gone: Vec<K> = have
        .keys()
        .filter(|key| !wanted.contains_key(key))
        .copied()
        .collect();
    for key in gone {
        remove(map, &key)?;
        have.remove(&key);
    }
    for (key, value) in wanted {
        if have.get(key) == Some(value) {
            continue;
        }
        if insert(map, key, value)? {
            have.insert(*key, *value);
        } else {
            have.remove(key);
        }
    }
    Ok(())
}

struct State {
    datapath: Datapath,
    /// The programs are on the underlay (once per run: a restart replaces
    /// the older ones in place).
    attached: bool,
    /// What INGRESS_PORTS holds.
    ports: BTreeMap<IngressPortKey, IngressPort>,
    /// What INGRESS_LOCAL holds.
    local: BTreeSet<u32>,
    /// What INGRESS_UPLINKS holds, by network subnet.
    uplinks: BTreeMap<Ipv4Net, IngressUplink>,
    /// What INGRESS_REMOTE holds (keys as in the map).
    remote: BTreeMap<u32, IngressRemote>,
    /// The `nagw<vni>` interfaces (by index) this run put `ingress_uplink` on.
    uplink_programs: BTreeSet<u32>,
}

pub struct Ingress {
    node_addr: Ipv4Addr,
    underlay: String,
    state: Mutex<State>,
    /// The pseudo-endpoints this run published, by network id (kept by
    /// `node::return_paths`).
    published: tokio::sync::Mutex<BTreeMap<String, Endpoint>>,
}

/// Ids of the nodes' ingress pseudo-endpoints start with this (a real
/// endpoint id is 64 hex digits).
const PSEUDO_ENDPOINT_PREFIX: &str = "ingress-";

/// The gossip id of node `node`'s ingress address on network `vni`.
pub fn pseudo_endpoint_id(node: &str, vni: u32) -> String {
    format!("{PSEUDO_ENDPOINT_PREFIX}{vni}-{node}")
}

/// Whether `endpoint` is a node's ingress address rather than a container
/// (`netctl endpoint ls` leaves those out).
pub fn is_pseudo_endpoint(endpoint: &Endpoint) -> bool {
    endpoint.id.starts_with(PSEUDO_ENDPOINT_PREFIX)
}

/// What an earlier run left in INGRESS_REMOTE. An entry that cannot be
/// read is deleted: `sync_remote_tasks` only fixes entries it knows, and a
/// stale VTEP or MAC must not stay (its task takes the sandbox path until
/// the next pass writes it again).
fn read_remote_tasks(
    datapath: &mut Datapath,
) -> Result<BTreeMap<u32, IngressRemote>, IngressError> {
    let mut map: HashMap<_, u32, IngressRemote> =
        HashMap::try_from(datapath.map_mut(INGRESS_REMOTE_MAP)?)
            .map_err(map_failure(INGRESS_REMOTE_MAP))?;
    let keys: Vec<u32> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_failure(INGRESS_REMOTE_MAP))?;
    let mut remote = BTreeMap::new();
    for addr in keys {
        match map.get(&addr, 0) {
            Ok(entry) => {
                remote.insert(addr, entry);
            }
            Err(MapError::KeyNotFound) => {}
            Err(error) => {
                warn!(task = %ip(addr), %error, "unreadable INGRESS_REMOTE entry deleted");
                removed(map.remove(&addr)).map_err(map_failure(INGRESS_REMOTE_MAP))?;
            }
        }
    }
    Ok(remote)
}

impl Ingress {
    /// Opens the maps under `bpffs` and reads back what an earlier run
    /// programmed.
    pub fn load(
        bpffs: &Path,
        sizes: &MapSizes,
        node_addr: Ipv4Addr,
        underlay: &str,
    ) -> Result<Self, IngressError> {
        let mut datapath = Datapath::load(bpffs, sizes)?;
        let ports: HashMap<_, IngressPortKey, IngressPort> =
            HashMap::try_from(datapath.map_mut(INGRESS_PORTS_MAP)?)
                .map_err(map_failure(INGRESS_PORTS_MAP))?;
        let ports = ports.iter().filter_map(Result::ok).collect();
        let local: HashMap<_, u32, u32> = HashMap::try_from(datapath.map_mut(INGRESS_LOCAL_MAP)?)
            .map_err(map_failure(INGRESS_LOCAL_MAP))?;
        let local = local.keys().filter_map(Result::ok).collect();
        let uplinks: LpmTrie<_, u32, IngressUplink> =
            LpmTrie::try_from(datapath.map_mut(INGRESS_UPLINKS_MAP)?)
                .map_err(map_failure(INGRESS_UPLINKS_MAP))?;
        let uplinks = uplinks
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(key, uplink)| {
                let net = Ipv4Net::new(ip(key.data()), key.prefix_len() as u8).ok()?;
                Some((net, uplink))
            })
            .collect();
        let remote = read_remote_tasks(&mut datapath)?;
        Ok(Self {
            node_addr,
            underlay: underlay.to_owned(),
            state: Mutex::new(State {
                datapath,
                attached: false,
                ports,
                local,
                uplinks,
                remote,
                uplink_programs: BTreeSet::new(),
            }),
            published: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// The interface the programs are on.
    pub fn underlay(&self) -> &str {
        &self.underlay
    }

    /// This node's ingress addresses, as the pseudo-endpoints this run
    /// published (for `netctl trace`'s names).
    pub async fn pseudo_endpoints(&self) -> Vec<Endpoint> {
        self.published.lock().await.values().cloned().collect()
    }

    /// The pseudo-endpoints this run published, by network id, locked.
    pub async fn published(&self) -> tokio::sync::MutexGuard<'_, BTreeMap<String, Endpoint>> {
        self.published.lock().await
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic mid-update leaves maps the datapath can still use.
        crate::sync::lock(&self.state)
    }

    /// Puts the programs on the underlay interface unless this run did.
    pub fn ensure_attached(&self) -> Result<(), IngressError> {
        let mut state = self.lock();
        if state.attached {
            return Ok(());
        }
        let ifname = self.underlay.as_str();
        state
            .datapath
            .attach_tc(INGRESS_IN_PROG, ifname, Direction::Ingress, INGRESS_SLOT)?;
        state
            .datapath
            .attach_tc(INGRESS_OUT_PROG, ifname, Direction::Egress, INGRESS_SLOT)?;
        state.attached = true;
        Ok(())
    }

    /// Writes INGRESS_LOCAL from `local` (this node's endpoints) and
    /// INGRESS_PORTS from `plan`. The tables the ports name must have been
    /// programmed first.
    pub fn sync_maps(&self, plan: &plan::Plan, local: &[Endpoint]) -> Result<(), IngressError> {
        let mut state = self.lock();
        let state = &mut *state;
        // Local addresses first: a port never sends a local task's flow
        // through the SNAT meant for remote ones.
        let wanted_local: BTreeSet<u32> = local.iter().map(|e| be(e.ip)).collect();
        let mut map: HashMap<_, u32, u32> =
            HashMap::try_from(state.datapath.map_mut(INGRESS_LOCAL_MAP)?)
                .map_err(map_failure(INGRESS_LOCAL_MAP))?;
        for ip in wanted_local.difference(&state.local) {
            map.insert(ip, 1, 0)
                .map_err(map_failure(INGRESS_LOCAL_MAP))?;
        }
        for ip in state.local.difference(&wanted_local) {
            removed(map.remove(ip)).map_err(map_failure(INGRESS_LOCAL_MAP))?;
        }
        state.local = wanted_local;

        let wanted: BTreeMap<IngressPortKey, IngressPort> = plan
            .ports
            .iter()
            .map(|p| {
                (
                    IngressPortKey {
                        addr: be(self.node_addr),
                        port: p.published.to_be(),
                        proto: plan::proto_number(p.protocol),
                        pad: 0,
                    },
                    IngressPort {
                        service: be(p.table),
                        target: p.target.to_be(),
                        pad: 0,
                    },
                )
            })
            .collect();
        let mut map: HashMap<_, IngressPortKey, IngressPort> =
            HashMap::try_from(state.datapath.map_mut(INGRESS_PORTS_MAP)?)
                .map_err(map_failure(INGRESS_PORTS_MAP))?;
        sync_by_difference(
            &mut map,
            &mut state.ports,
            &wanted,
            |map, key| {
                removed(map.remove(key)).map_err(map_failure(INGRESS_PORTS_MAP))?;
                info!(
                    port = u16::from_be(key.port),
                    proto = key.proto,
                    "published port closed"
                );
                Ok(())
            },
            |map, key, value| {
                map.insert(key, value, 0)
                    .map_err(map_failure(INGRESS_PORTS_MAP))?;
                info!(
                    port = u16::from_be(key.port),
                    proto = key.proto,
                    target = u16::from_be(value.target),
                    table = %Ipv4Addr::from(value.service.to_ne_bytes()),
                    "published port opened"
                );
                Ok(true)
            },
        )
    }

    /// Writes INGRESS_REMOTE from `wanted` (`remote::plan`): entries that
    /// went or changed first, then new ones. An entry that cannot be
    /// written (most likely the map is full) is deleted, so that no stale
    /// VTEP or MAC stays, and counted in one warning per pass: its task's
    /// flows take the sandbox path and the next pass retries.
    pub fn sync_remote_tasks(
        &self,
        wanted: &BTreeMap<Ipv4Addr, IngressRemote>,
    ) -> Result<(), IngressError> {
        let mut state = self.lock();
        let state = &mut *state;
        let wanted: BTreeMap<u32, IngressRemote> =
            wanted.iter().map(|(ip, entry)| (be(*ip), *entry)).collect();
        let mut map: HashMap<_, u32, IngressRemote> =
            HashMap::try_from(state.datapath.map_mut(INGRESS_REMOTE_MAP)?)
                .map_err(map_failure(INGRESS_REMOTE_MAP))?;
        let mut failed = 0usize;
        let mut last_error = None;
        sync_by_difference(
            &mut map,
            &mut state.remote,
            &wanted,
            |map, addr| removed(map.remove(addr)).map_err(map_failure(INGRESS_REMOTE_MAP)),
            |map, addr, entry| {
                let Err(error) = map.insert(addr, entry, 0) else {
                    return Ok(true);
                };
                debug!(task = %ip(*addr), %error, "remote task not in INGRESS_REMOTE");
                failed += 1;
                last_error = Some(error);
                // An older entry for it (another VTEP or MAC) must go.
                removed(map.remove(addr)).map_err(map_failure(INGRESS_REMOTE_MAP))?;
                Ok(false)
            },
        )?;
        if let Some(error) = last_error {
            warn!(
                failed,
                %error,
                "remote tasks left out of INGRESS_REMOTE (their flows take the sandbox path; retried next pass)"
            );
        }
        Ok(())
    }

    /// Puts `ingress_uplink` on `network`'s `nagw<vni>` (once per run and
    /// interface), then points the network's INGRESS_UPLINKS entry at it
    /// with the ingress address `addr`: the program is there before any
    /// flow can use the entry.
    pub fn ensure_uplink(&self, network: &Network, addr: Ipv4Addr) -> Result<(), IngressError> {
        let mut state = self.lock();
        let state = &mut *state;
        let name = crate::dataplane::uplink::node_link_name(network.vni);
        let ifindex = crate::dataplane::interfaces::ifindex(&name)
            .ok_or_else(|| IngressError::from(DatapathError::NoInterface(name.clone())))?;
        if !state.uplink_programs.contains(&ifindex) {
            state.datapath.attach_tc(
                INGRESS_UPLINK_PROG,
                &name,
                Direction::Ingress,
                INGRESS_SLOT,
            )?;
            state.uplink_programs.insert(ifindex);
        }
        let wanted = IngressUplink {
            addr: be(addr),
            ifindex,
        };
        if state.uplinks.get(&network.subnet) == Some(&wanted) {
            return Ok(());
        }
        let mut map: LpmTrie<_, u32, IngressUplink> =
            LpmTrie::try_from(state.datapath.map_mut(INGRESS_UPLINKS_MAP)?)
                .map_err(map_failure(INGRESS_UPLINKS_MAP))?;
        map.insert(&subnet_key(&network.subnet), wanted, 0)
            .map_err(map_failure(INGRESS_UPLINKS_MAP))?;
        state.uplinks.insert(network.subnet, wanted);
        info!(network = %network.name, %addr, uplink = %name, "published-port uplink programmed");
        Ok(())
    }

    /// Removes the INGRESS_UPLINKS entries of subnets not in `keep`.
    pub fn forget_uplinks(&self, keep: &BTreeSet<Ipv4Net>) -> Result<(), IngressError> {
        let mut state = self.lock();
        let state = &mut *state;
        let gone: Vec<Ipv4Net> = state
            .uplinks
            .keys()
            .filter(|net| !keep.contains(*net))
            .copied()
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        let mut map: LpmTrie<_, u32, IngressUplink> =
            LpmTrie::try_from(state.datapath.map_mut(INGRESS_UPLINKS_MAP)?)
                .map_err(map_failure(INGRESS_UPLINKS_MAP))?;
        for net in gone {
            removed(map.remove(&subnet_key(&net))).map_err(map_failure(INGRESS_UPLINKS_MAP))?;
            state.uplinks.remove(&net);
            info!(subnet = %net, "published-port uplink removed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map as a plain collection: what it holds and the writes it took.
    #[derive(Default)]
    struct FakeMap {
        entries: BTreeMap<u32, u32>,
        writes: Vec<String>,
    }

    fn remove(map: &mut FakeMap, key: &u32) -> Result<(), String> {
        map.writes.push(format!("remove {key}"));
        map.entries.remove(key);
        Ok(())
    }

    fn insert(map: &mut FakeMap, key: &u32, value: &u32) -> Result<bool, String> {
        map.writes.push(format!("insert {key}"));
        map.entries.insert(*key, *value);
        Ok(true)
    }

    fn filled(entries: &[(u32, u32)]) -> (FakeMap, BTreeMap<u32, u32>) {
        let have: BTreeMap<u32, u32> = entries.iter().copied().collect();
        let map = FakeMap {
            entries: have.clone(),
            writes: Vec::new(),
        };
        (map, have)
    }

    #[test]
    fn only_what_differs_is_written_removals_first() {
        let (mut map, mut have) = filled(&[(1, 10), (2, 20), (4, 40)]);
        let wanted: BTreeMap<u32, u32> = [(2, 20), (3, 30), (4, 41)].into();
        sync_by_difference(&mut map, &mut have, &wanted, remove, insert).unwrap();
        assert_eq!(map.writes, ["remove 1", "insert 3", "insert 4"]);
        assert_eq!(map.entries, wanted);
        assert_eq!(have, wanted);
        // A second pass writes nothing.
        map.writes.clear();
        sync_by_difference(&mut map, &mut have, &wanted, remove, insert).unwrap();
        assert!(map.writes.is_empty());
    }

    #[test]
    fn an_entry_left_out_is_not_remembered() {
        let (mut map, mut have) = filled(&[(3, 30)]);
        let wanted: BTreeMap<u32, u32> = [(3, 31)].into();
        let leave_out = |map: &mut FakeMap, key: &u32, _: &u32| -> Result<bool, String> {
            map.entries.remove(key);
            Ok(false)
        };
        sync_by_difference(&mut map, &mut have, &wanted, remove, leave_out).unwrap();
        assert!(have.is_empty(), "the older entry went with it");
        assert!(map.entries.is_empty());
    }

    #[test]
    fn the_first_failure_stops_and_what_succeeded_is_remembered() {
        let (mut map, mut have) = filled(&[(1, 10)]);
        let wanted: BTreeMap<u32, u32> = [(2, 20), (3, 30)].into();
        let fail_on_3 = |map: &mut FakeMap, key: &u32, value: &u32| {
            if *key == 3 {
                return Err("full".to_owned());
            }
            insert(map, key, value)
        };
        let result = sync_by_difference(&mut map, &mut have, &wanted, remove, fail_on_3);
        assert_eq!(result, Err("full".to_owned()));
        assert_eq!(have, BTreeMap::from([(2, 20)]));
        assert_eq!(map.entries, have, "have mirrors the map");
    }
}
