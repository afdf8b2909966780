//! Per-interface packet and byte counters: the first datapath program, and
//! the proof that the eBPF pipeline works end to end.

use aya::maps::PerCpuHashMap;
use netagent_api::types::InterfaceCounters;
use netagent_common::{IfCounters, COUNT_EGRESS_PROG, COUNT_INGRESS_PROG, IF_COUNTERS_MAP};

use super::{
    bpf::{Direction, TcSlot},
    interfaces, Datapath, DatapathError,
};

/// The counters run first on every interface they watch, so they see each
/// packet before any other program of ours can redirect or drop it.
const COUNTER_SLOT: TcSlot = TcSlot {
    priority: 1,
    handle: 1,
};

/// Starts counting on `ifname`, both directions.
pub fn watch(datapath: &mut Datapath, ifname: &str) -> Result<(), DatapathError> {
    datapath.attach_tc(COUNT_INGRESS_PROG, ifname, Direction::Ingress, COUNTER_SLOT)?;
    datapath.attach_tc(COUNT_EGRESS_PROG, ifname, Direction::Egress, COUNTER_SLOT)
}

/// The counts of every watched interface, in watch order. An interface that
/// has seen no packet yet reads as zero.
pub fn read(datapath: &Datapath) -> Result<Vec<InterfaceCounters>, DatapathError> {
    let map_error = |source| DatapathError::Map {
        name: IF_COUNTERS_MAP,
        cause: source,
    };
    let map: PerCpuHashMap<_, u32, IfCounters> =
        PerCpuHashMap::try_from(datapath.map(IF_COUNTERS_MAP)?).map_err(map_error)?;
    let mut watched: Vec<u32> = Vec::new();
    for attachment in datapath.attachments() {
        if !watched.contains(&attachment.ifindex) {
            watched.push(attachment.ifindex);
        }
    }
    watched
        .into_iter()
        .map(|ifindex| {
            let total = match map.get(&ifindex, 0) {
                Ok(per_cpu) => per_cpu.iter().fold(IfCounters::default(), |mut sum, cpu| {
                    sum.accumulate(cpu);
                    sum
                }),
                Err(aya::maps::MapError::KeyNotFound) => IfCounters::default(),
                Err(error) => return Err(map_error(error)),
            };
            Ok(InterfaceCounters {
                ifname: interfaces::ifname(ifindex).unwrap_or_else(|| format!("if{ifindex}")),
                ifindex,
                rx_packets: total.rx_packets,
                rx_bytes: total.rx_bytes,
                tx_packets: total.tx_packets,
                tx_bytes: total.tx_bytes,
            })
        })
        .collect()
}
