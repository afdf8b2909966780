//! Types shared between the eBPF programs (`ebpf/programs`) and the agent.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side writes it into
//! maps, the agent reads it back byte for byte.
#![no_std]

/// Packet and byte counts of one interface, one direction pair.
///
/// Stored per CPU in the `IF_COUNTERS` map, keyed by interface index; the
/// agent sums the CPUs when it reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    /// Packets the interface received (tc ingress).
    pub rx_packets: u64,
    /// Bytes the interface received, link-layer headers included.
    pub rx_bytes: u64,
    /// Packets the interface sent (tc egress).
    pub tx_packets: u64,
    /// Bytes the interface sent, link-layer headers included.
    pub tx_bytes: u64,
}

impl IfCounters {
    /// Adds another CPU's share to this one.
    pub fn accumulate(&mut self, other: &IfCounters) {
        self.rx_packets = self.rx_packets.wrapping_add(other.rx_packets);
        self.rx_bytes = self.rx_bytes.wrapping_add(other.rx_bytes);
        self.tx_packets = self.tx_packets.wrapping_add(other.tx_packets);
        self.tx_bytes = self.tx_bytes.wrapping_add(other.tx_bytes);
    }
}

#[cfg(feature = "user")]
// SAFETY: IfCounters is #[repr(C)], has no padding and every bit pattern is valid.
unsafe impl aya::Pod for IfCounters {}

/// Name of the per-interface counter map, as pinned under the agent's bpffs dir.
pub const IF_COUNTERS_MAP: &str = "IF_COUNTERS";
/// Name of the tc program that counts received packets.
pub const COUNT_INGRESS_PROG: &str = "count_ingress";
/// Name of the tc program that counts sent packets.
pub const COUNT_EGRESS_PROG: &str = "count_egress";
/// How many interfaces the counter map holds.
pub const IF_COUNTERS_CAPACITY: u32 = 4096;

// ---------------------------------------------------------------------------
// VIP load balancing (`ebpf/programs/src/lb.rs`, `agent/src/lb`).
//
// Addresses and ports are stored exactly as they sit in the packet (network
// byte order), read into a u32/u16 with native-endian loads: the datapath
// never swaps bytes, and the agent converts with `from_ne_bytes`.
//
// Lookup chain: LB_SERVICES[vip] -> {table_slot, table_size} ->
// LB_MAGLEV[table_slot].backends[hash % table_size] -> backend id ->
// LB_BACKENDS[id] -> backend ip. New flows are then pinned in LB_CT (and
// counted in LB_BACKEND_FLOWS[id]), and replies are translated back through
// LB_REV_CT.

/// Name of the map VIP -> service.
pub const LB_SERVICES_MAP: &str = "LB_SERVICES";
/// Name of the map backend id -> backend.
pub const LB_BACKENDS_MAP: &str = "LB_BACKENDS";
/// Name of the array of Maglev tables: one whole table per entry, so that
/// the agent writes a service's table with one map update.
pub const LB_MAGLEV_MAP: &str = "LB_MAGLEV";
/// Name of the array of new-flow counters, indexed by backend id.
pub const LB_BACKEND_FLOWS_MAP: &str = "LB_BACKEND_FLOWS";
/// Name of the conntrack map (client flow -> backend).
pub const LB_CT_MAP: &str = "LB_CT";
/// Name of the reverse conntrack map (backend flow -> VIP).
pub const LB_REV_CT_MAP: &str = "LB_REV_CT";
/// Name of the tc program on a local endpoint's veth, packets from the container.
pub const LB_INGRESS_PROG: &str = "lb_ingress";
/// Name of the tc program on a local endpoint's veth, packets to the container.
pub const LB_EGRESS_PROG: &str = "lb_egress";

/// Default number of VIPs.
pub const LB_SERVICES_CAPACITY: u32 = 10_000;
/// Default number of Maglev tables: one per VIP plus spares, so that an
/// update writes a fresh table and flips the service to it.
pub const LB_TABLE_SLOTS: u32 = 10_250;
/// Entries of one Maglev table as stored (a prime): the largest table size
/// a service can use, fixed at build time because it is the size of
/// LB_MAGLEV's value.
pub const LB_TABLE_SIZE: u32 = 1021;
/// Default number of backends.
pub const LB_BACKENDS_CAPACITY: u32 = 100_000;
/// Default number of tracked flows (each direction).
pub const LB_CT_CAPACITY: u32 = 262_144;

/// Key of LB_SERVICES: a VIP (any port, TCP and UDP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbServiceKey {
    pub vip: u32,
}

/// The service has no active backend: new flows are rejected.
pub const LB_SERVICE_NO_BACKENDS: u32 = 1;

/// Value of LB_SERVICES.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbService {
    /// The agent's id of the service VIP (for tracing and inspect).
    pub id: u32,
    /// Which Maglev table of LB_MAGLEV is this service's.
    pub table_slot: u32,
    /// Entries of the table in use (a prime, at most LB_TABLE_SIZE).
    pub table_size: u32,
    /// Active backends in the table.
    pub backends: u32,
    /// LB_SERVICE_* bits.
    pub flags: u32,
}

/// Value of LB_MAGLEV: one service's Maglev table, the backend id of each
/// slot. A service uses its first `LbService::table_size` entries; id 0 is
/// no backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbMaglevTable {
    pub backends: [u32; LB_TABLE_SIZE as usize],
}

impl Default for LbMaglevTable {
    fn default() -> Self {
        Self {
            backends: [0; LB_TABLE_SIZE as usize],
        }
    }
}

/// The backend takes new flows.
pub const LB_BACKEND_ACTIVE: u32 = 1;
/// The backend takes no new flows; its open flows finish.
pub const LB_BACKEND_DRAINING: u32 = 2;

/// Value of LB_BACKENDS, keyed by backend id (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbBackend {
    pub ip: u32,
    /// LB_BACKEND_* bits.
    pub flags: u32,
}

/// Key of LB_CT: a flow as the client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbCtKey {
    pub client: u32,
    pub vip: u32,
    pub client_port: u16,
    pub vip_port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub pad: [u8; 3],
}

/// Value of LB_CT.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbCtValue {
    /// The backend's address.
    pub backend: u32,
    /// Its id in LB_BACKENDS: a flow whose backend has left LB_BACKENDS
    /// (its task is gone) is balanced again. A draining backend stays there.
    pub backend_id: u32,
}

/// Key of LB_REV_CT: a reply as the backend sends it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbRevKey {
    pub backend: u32,
    pub client: u32,
    pub backend_port: u16,
    pub client_port: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// Value of LB_REV_CT.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbRevValue {
    pub vip: u32,
    pub pad: u32,
}

/// The hash that picks a flow's Maglev slot: the same 5-tuple always lands
/// on the same slot. A murmur3-style mix, cheap for the verifier.
#[inline(always)]
pub fn lb_flow_hash(key: &LbCtKey) -> u32 {
    #[inline(always)]
    fn mix(h: u32, k: u32) -> u32 {
        let k = k
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
        (h ^ k)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64)
    }
    let mut h = 0x9747_b28c;
    h = mix(h, key.client);
    h = mix(h, key.vip);
    h = mix(
        h,
        (u32::from(key.client_port) << 16) | u32::from(key.vip_port),
    );
    h = mix(h, u32::from(key.proto));
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each is #[repr(C)] with explicit padding fields only, so no
    // implicit padding, and every bit pattern is valid.
    unsafe impl aya::Pod for LbServiceKey {}
    unsafe impl aya::Pod for LbService {}
    unsafe impl aya::Pod for LbBackend {}
    unsafe impl aya::Pod for LbMaglevTable {}
    unsafe impl aya::Pod for LbCtKey {}
    unsafe impl aya::Pod for LbCtValue {}
    unsafe impl aya::Pod for LbRevKey {}
    unsafe impl aya::Pod for LbRevValue {}
}
