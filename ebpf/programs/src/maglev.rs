//! The services' backends and the Maglev pick of one for a new flow (the
//! backend selection of Cilium's `lib/lb.h`): LB_SERVICES (VIP -> table
//! slot, size, backend count), LB_MAGLEV (the tables) and LB_BACKENDS
//! (id -> address, state), and `pick`. Shared by VIPs (`lb.rs`) and
//! published ports (`ingress.rs`, whose ports name an LB_SERVICES entry),
//! which choose a backend the same way; the pin that keeps a flow on it is
//! `conntrack.rs`'s.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use netagent_common::{
    lb_flow_hash, LbBackend, LbCtKey, LbMaglevTable, LbService, LbServiceKey, LB_BACKENDS_CAPACITY,
    LB_SERVICES_CAPACITY, LB_SERVICE_NO_BACKENDS, LB_TABLE_SLOTS,
};

#[map]
pub(crate) static LB_SERVICES: HashMap<LbServiceKey, LbService> =
    HashMap::pinned(LB_SERVICES_CAPACITY, 0);
#[map]
pub(crate) static LB_BACKENDS: HashMap<u32, LbBackend> = HashMap::pinned(LB_BACKENDS_CAPACITY, 0);
/// One whole Maglev table per entry: the agent writes a table with one
/// update, and a lookup is one bounds-checked array access.
#[map]
static LB_MAGLEV: Array<LbMaglevTable> = Array::pinned(LB_TABLE_SLOTS, 0);

/// How many table slots a client that is itself a backend of the VIP
/// probes for another backend (hairpin: a task reaching its own service).
const HAIRPIN_PROBES: u32 = 16;

/// murmur3's 32-bit finaliser.
#[inline(always)]
fn remix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The backend (id, ip) for a new flow, or None when the service has none.
///
/// A client never gets itself: the bridge cannot send a frame back out of
/// the port it came in on, and the container would see its own address as
/// the source. It probes other slots instead, rehashing (neighbouring Maglev
/// slots are not independent draws), and is refused when it is the only
/// backend.
#[inline(always)]
pub(crate) fn pick(service: &LbService, key: &LbCtKey) -> Option<(u32, u32)> {
    if service.backends == 0 || service.flags & LB_SERVICE_NO_BACKENDS != 0 {
        return None;
    }
    let size = service.table_size;
    if size == 0 {
        return None;
    }
    let table = LB_MAGLEV.get(service.table_slot)?;
    let hash = lb_flow_hash(key);
    for probe in 0..HAIRPIN_PROBES {
        // Probe 0 is the flow's own slot; later probes jump to unrelated
        // slots (neighbouring Maglev slots often share a backend).
        let slot = if probe == 0 {
            hash % size
        } else {
            remix(hash.wrapping_add(probe.wrapping_mul(0x9e37_79b9))) % size
        };
        // The bounds check stays (size comes from a map): the verifier
        // needs it.
        let id = *table.backends.get(slot as usize)?;
        // SAFETY: copied out at once.
        let ip = unsafe { LB_BACKENDS.get(&id) }?.ip;
        if ip != key.client {
            return Some((id, ip));
        }
        if service.backends == 1 {
            return None;
        }
    }
    None
}
