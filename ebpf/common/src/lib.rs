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
// VIP load balancing (`ebpf/programs/src/lb.rs`, `maglev.rs`, `conntrack.rs`;
// `agent/src/lb`).
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
    /// TRACE_SEEN_* bits: what `netctl trace` has already been told about
    /// the flow, both directions (see `trace_news`).
    pub reported: u32,
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

// ---------------------------------------------------------------------------
// Published ports (`ebpf/programs/src/ingress.rs`, `agent/src/ingress`).
//
// INGRESS_PORTS[node address, published port, protocol] names the
// LB_SERVICES entry whose Maglev table and backends serve the port (the
// service's VIP in ingress mode; a per-port key holding only the node's own
// tasks in host mode). New flows are pinned in LB_CT (keyed with the node
// address as `vip`), replies are translated back through INGRESS_REV_CT.

/// Name of the map (node address, published port, protocol) -> port.
pub const INGRESS_PORTS_MAP: &str = "INGRESS_PORTS";
/// Name of the map of this node's endpoint addresses (backends reached
/// without leaving the node).
pub const INGRESS_LOCAL_MAP: &str = "INGRESS_LOCAL";
/// Name of the reverse conntrack map of published-port flows.
pub const INGRESS_REV_CT_MAP: &str = "INGRESS_REV_CT";
/// Name of the tc program on the underlay interface, packets received.
pub const INGRESS_IN_PROG: &str = "ingress_in";
/// Name of the tc program on the underlay interface, packets sent.
pub const INGRESS_OUT_PROG: &str = "ingress_out";
/// How many published ports a node holds.
pub const INGRESS_PORTS_CAPACITY: u32 = 4096;
/// How many local endpoints INGRESS_LOCAL holds.
pub const INGRESS_LOCAL_CAPACITY: u32 = 65_536;
/// Name of the map (LPM: network subnet) -> this node's uplink into that
/// network's sandbox and its ingress address there.
pub const INGRESS_UPLINKS_MAP: &str = "INGRESS_UPLINKS";
/// Name of the map translating the replies of published-port flows to
/// tasks on other nodes back to the client (keyed by LbRevKey: the reply
/// as the task sends it, to the ingress address).
pub const INGRESS_SNAT_MAP: &str = "INGRESS_SNAT";
/// Name of the tc program on each `nagw<vni>`, packets received from the
/// sandbox.
pub const INGRESS_UPLINK_PROG: &str = "ingress_uplink";
/// How many networks INGRESS_UPLINKS holds.
pub const INGRESS_UPLINKS_CAPACITY: u32 = 4096;
/// Name of the map (task overlay address) -> where a task on another node
/// is: `ingress_in` encapsulates a published-port flow to it itself.
pub const INGRESS_REMOTE_MAP: &str = "INGRESS_REMOTE";
/// How many remote tasks INGRESS_REMOTE holds (beyond: the sandbox path).
pub const INGRESS_REMOTE_CAPACITY: u32 = 65_536;
/// The overlay's UDP port (the vxlan devices' `dstport`).
pub const VXLAN_PORT: u16 = 4789;
/// What VXLAN over IPv4 adds in front of a packet: outer IPv4 (20) + UDP
/// (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: usize = 50;

/// Key of INGRESS_PORTS (address and port in network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IngressPortKey {
    pub addr: u32,
    pub port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    pub pad: u8,
}

/// Value of INGRESS_PORTS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressPort {
    /// The LB_SERVICES key (`vip`) whose table serves this port.
    pub service: u32,
    /// The tasks' port (network byte order).
    pub target: u16,
    pub pad: u16,
}

/// Value of INGRESS_REV_CT (keyed by LbRevKey: the reply as the backend
/// sends it, to the client): what the client sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressRev {
    pub addr: u32,
    pub port: u16,
    /// For a task on another node: the source port the flow has there (from
    /// the ingress address; network byte order). 0: not translated.
    pub snat_port: u16,
    /// TRACE_SEEN_* bits, as LbRevValue::reported.
    pub reported: u32,
}

/// Value of INGRESS_UPLINKS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressUplink {
    /// This node's ingress address on the network (network byte order).
    pub addr: u32,
    /// `nagw<vni>`'s interface index.
    pub ifindex: u32,
}

/// Value of INGRESS_SNAT: the client a reply to the ingress address goes
/// back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressSnat {
    pub client: u32,
    pub client_port: u16,
    pub pad: u16,
    /// The interface the client's packets came in on (the underlay).
    pub ifindex: u32,
}

/// Value of INGRESS_REMOTE: what `ingress_in` needs to send a flow to a
/// task on another node over VXLAN itself, as that node's vxlan device
/// expects it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngressRemote {
    /// The task's node's VTEP (underlay) address (network byte order).
    pub vtep: u32,
    /// The network's VNI (host order).
    pub vni: u32,
    /// The task's MAC (the inner destination).
    pub mac: [u8; 6],
    pub pad: u16,
    /// The largest inner IPv4 packet the network carries (its `--mtu`), 0:
    /// only the underlay's MTU (less the 50 bytes of VXLAN) bounds it.
    pub mtu: u32,
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
    unsafe impl aya::Pod for IngressPortKey {}
    unsafe impl aya::Pod for IngressPort {}
    unsafe impl aya::Pod for IngressRev {}
    unsafe impl aya::Pod for IngressUplink {}
    unsafe impl aya::Pod for IngressSnat {}
    unsafe impl aya::Pod for IngressRemote {}
}

// ---------------------------------------------------------------------------
// Tracing (`ebpf/programs/src/trace.rs`, `agent/src/trace`).
//
// The programs report what they did with a packet into TRACE_EVENTS (a ring
// buffer), but only while TRACE_ON[0] is non-zero: the agent sets it while
// at least one `netctl trace` is connected, so the check is all it costs
// otherwise. TRACE_STATS counts, per CPU, the events written and those lost
// because the ring was full.
//
// By default (TRACE_MODE_CHANGES) a flow is reported only when something
// new happens to it, as Cilium's monitor aggregation does: its first packet
// (backend chosen), its first reply, and the first SYN, FIN and RST of each
// direction; drops and passes always. The reverse conntrack entry of the
// flow (LbRevValue, IngressRev) keeps TRACE_SEEN_* bits of what was already
// reported, so that an ACK or data packet of an established flow costs a
// lookup and a compare, and no ring write. TRACE_MODE_ALL_PACKETS (a pcap
// or `--all-packets` tracer connected) reports every packet.

/// Name of the flag array (one u32, TRACE_MODE_*).
pub const TRACE_ON_MAP: &str = "TRACE_ON";
/// TRACE_ON: nobody traces.
pub const TRACE_MODE_OFF: u32 = 0;
/// TRACE_ON: report what is new about a flow (see above).
pub const TRACE_MODE_CHANGES: u32 = 1;
/// TRACE_ON: report every packet.
pub const TRACE_MODE_ALL_PACKETS: u32 = 2;

/// TRACE_SEEN_*: the first SYN, FIN, RST sent by the client (the bits are
/// the TCP flags' own).
pub const TRACE_SEEN_FIN: u32 = 0x01;
pub const TRACE_SEEN_SYN: u32 = 0x02;
pub const TRACE_SEEN_RST: u32 = 0x04;
/// TRACE_SEEN_*: the flow's first reply.
pub const TRACE_SEEN_REPLY: u32 = 0x08;
/// TRACE_SEEN_*: the first SYN, FIN, RST of the replies (the client's bits
/// shifted by this).
pub const TRACE_SEEN_REPLY_SHIFT: u32 = 4;

/// The TRACE_SEEN_* bits a packet with `tcp_flags` (0 for UDP) sets, in
/// the client's direction or the replies' (`reply`).
#[inline(always)]
pub fn trace_seen(tcp_flags: u8, reply: bool) -> u32 {
    let flags = u32::from(tcp_flags) & (TRACE_SEEN_FIN | TRACE_SEEN_SYN | TRACE_SEEN_RST);
    if reply {
        (flags << TRACE_SEEN_REPLY_SHIFT) | TRACE_SEEN_REPLY
    } else {
        flags
    }
}

/// What a packet tells that `reported` (a flow's TRACE_SEEN_* bits) does
/// not hold yet: 0 when it is nothing new, so not reported in
/// TRACE_MODE_CHANGES.
#[inline(always)]
pub fn trace_news(reported: u32, tcp_flags: u8, reply: bool) -> u32 {
    trace_seen(tcp_flags, reply) & !reported
}
/// Name of the ring buffer the events go to.
pub const TRACE_EVENTS_MAP: &str = "TRACE_EVENTS";
/// Name of the per-CPU counters (index TRACE_STAT_*).
pub const TRACE_STATS_MAP: &str = "TRACE_STATS";
/// Size of the ring buffer in bytes (a power of two, a multiple of the page
/// size): about 22,000 events, close to a second of a busy node's
/// connections. The programs wake the agent once an eighth of it is
/// waiting; the agent also drains it every `trace::DRAIN_EVERY`.
pub const TRACE_RING_BYTES: u32 = 1 << 22;
/// TRACE_STATS index: events written to the ring.
pub const TRACE_STAT_EMITTED: u32 = 0;
/// TRACE_STATS index: events lost because the ring was full.
pub const TRACE_STAT_LOST: u32 = 1;
/// Entries of TRACE_STATS.
pub const TRACE_STATS_LEN: u32 = 2;
/// How many bytes of each packet an event carries (its headers, for pcap).
pub const TRACE_CAPTURE_BYTES: usize = 128;

/// A new flow to a VIP: a backend was chosen and the packet translated.
pub const TRACE_KIND_TRANSLATE: u8 = 1;
/// A packet of a flow already in conntrack, translated to its backend.
pub const TRACE_KIND_TRANSLATE_ESTABLISHED: u8 = 2;
/// A reply from a backend: its source turned back into the VIP.
pub const TRACE_KIND_REVERSE: u8 = 3;
/// The packet was dropped, or refused with a RST or ICMP error (see reason).
pub const TRACE_KIND_DROP: u8 = 4;
/// An ARP request for a VIP, answered by the datapath.
pub const TRACE_KIND_ARP_REPLY: u8 = 5;
/// The packet went on untouched although it concerned the datapath (see reason).
pub const TRACE_KIND_PASS: u8 = 6;
/// A new flow to a published port (ingress routing mesh): a task was
/// chosen and the packet translated to it, on this node or another one
/// (TRACE_FLAG_REMOTE_TASK).
pub const TRACE_KIND_FORWARD: u8 = 7;
/// A packet of a published-port flow already in conntrack, translated to
/// its task.
pub const TRACE_KIND_FORWARD_ESTABLISHED: u8 = 8;

/// TraceEvent::flags: reported by the published-port programs on the
/// underlay interface (`ingress.rs`), not by a VIP load balancer on a veth.
pub const TRACE_FLAG_PUBLISHED: u8 = 1;
/// TraceEvent::flags: the task is on another node (the flow is SNATed to
/// this node's ingress address on the task's network).
pub const TRACE_FLAG_REMOTE_TASK: u8 = 2;

/// No particular reason.
pub const TRACE_REASON_NONE: u8 = 0;
/// The service has no active backend (TCP answered with a RST, UDP with an
/// ICMP port unreachable).
pub const TRACE_REASON_NO_BACKEND: u8 = 1;
/// A packet in the middle of a flow had no conntrack entry: balanced again.
pub const TRACE_REASON_NO_CONNTRACK: u8 = 2;
/// The headers could not be read.
pub const TRACE_REASON_MALFORMED: u8 = 3;
/// Not TCP or UDP, or a fragment: the load balancer does not handle it.
pub const TRACE_REASON_UNSUPPORTED: u8 = 4;
/// Refused by a policy.
pub const TRACE_REASON_POLICY: u8 = 5;

/// An IPv4 5-tuple (addresses and ports in network byte order, as in
/// the packet; the protocol is in the event).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceTuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

/// One event of TRACE_EVENTS.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// The interface the program runs on (in its own namespace).
    pub ifindex: u32,
    /// TRACE_KIND_*.
    pub kind: u8,
    /// TRACE_REASON_*.
    pub reason: u8,
    /// IP protocol (6, 17), 0 for ARP.
    pub proto: u8,
    /// TRACE_FLAG_* bits.
    pub flags: u8,
    /// The packet as it arrived.
    pub before: TraceTuple,
    /// The packet as the program passed it on.
    pub after: TraceTuple,
    /// LB_SERVICES id of the VIP concerned, 0 if none.
    pub service_id: u32,
    /// The packet's length on the wire.
    pub packet_len: u32,
    /// How many bytes of `headers` are the packet's.
    pub captured_len: u32,
    pub pad2: u32,
    /// The packet's first bytes, from the Ethernet header on, as the program
    /// passed it on.
    pub headers: [u8; TRACE_CAPTURE_BYTES],
}

// ---------------------------------------------------------------------------
// Sizes of the shared types, checked at compile time.
//
// A pinned map's key and value sizes are fixed when the kernel creates it,
// and it outlives the agent: a new agent adopts the old pin, and the agent
// and the programs read each other's bytes with these layouts (the trace
// events too). A field added, removed or resized must therefore be a
// deliberate change (new map, migration or a refusal at load, as
// `LB_MAGLEV` has), never a side effect: these fail the build first.
const _: () = assert!(core::mem::size_of::<IfCounters>() == 32);
const _: () = assert!(core::mem::size_of::<LbServiceKey>() == 4);
const _: () = assert!(core::mem::size_of::<LbService>() == 20);
const _: () = assert!(core::mem::size_of::<LbMaglevTable>() == 4084);
const _: () = assert!(core::mem::size_of::<LbBackend>() == 8);
const _: () = assert!(core::mem::size_of::<LbCtKey>() == 16);
const _: () = assert!(core::mem::size_of::<LbCtValue>() == 8);
const _: () = assert!(core::mem::size_of::<LbRevKey>() == 16);
const _: () = assert!(core::mem::size_of::<LbRevValue>() == 8);
const _: () = assert!(core::mem::size_of::<IngressPortKey>() == 8);
const _: () = assert!(core::mem::size_of::<IngressPort>() == 8);
const _: () = assert!(core::mem::size_of::<IngressRev>() == 12);
const _: () = assert!(core::mem::size_of::<IngressUplink>() == 8);
const _: () = assert!(core::mem::size_of::<IngressSnat>() == 12);
const _: () = assert!(core::mem::size_of::<IngressRemote>() == 20);
const _: () = assert!(core::mem::size_of::<TraceTuple>() == 12);
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 184);

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;
    const PSH: u8 = 0x08;

    /// Replays a connection's packets as (flags, reply) and returns which
    /// ones are reported, starting from the bits a new flow's entry is
    /// written with.
    fn reported<const N: usize>(packets: [(u8, bool); N]) -> [bool; N] {
        let mut seen = trace_seen(packets[0].0, packets[0].1);
        let mut out = [true; N];
        for (i, &(flags, reply)) in packets.iter().enumerate().skip(1) {
            let news = trace_news(seen, flags, reply);
            seen |= news;
            out[i] = news != 0;
        }
        out
    }

    #[test]
    fn a_short_connection_reports_its_opening_and_closing_only() {
        let packets = [
            (SYN, false),
            (SYN | ACK, true),
            (ACK, false),
            (PSH | ACK, false),
            (ACK, true),
            (PSH | ACK, true),
            (ACK, false),
            (FIN | ACK, false),
            (FIN | ACK, true),
            (ACK, false),
        ];
        let expected = [
            true, true, false, false, false, false, false, true, true, false,
        ];
        assert_eq!(reported(packets), expected);
    }

    #[test]
    fn a_rst_and_a_repeated_fin_each_direction() {
        let packets = [
            (SYN, false),
            (SYN | ACK, true),
            (FIN | ACK, true),
            (FIN | ACK, true),
            (RST, false),
            (RST, false),
        ];
        assert_eq!(reported(packets), [true, true, true, false, true, false]);
    }

    #[test]
    fn udp_reports_the_first_packet_and_the_first_reply() {
        let packets = [(0, false), (0, false), (0, true), (0, true), (0, false)];
        assert_eq!(reported(packets), [true, false, true, false, false]);
    }
}

#[cfg(feature = "user")]
mod trace_pod {
    use super::*;
    // SAFETY: #[repr(C)] with explicit padding fields only; any bit pattern
    // is valid.
    unsafe impl aya::Pod for TraceTuple {}
    unsafe impl aya::Pod for TraceEvent {}
}
