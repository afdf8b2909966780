//! VIP load balancing at a local endpoint's host-side veth (in the sandbox).
//!
//! `lb_ingress` sees what the container sends: ARP requests for a VIP are
//! answered on the spot, and TCP/UDP to VIP:any-port is DNATed to a backend
//! picked by Maglev (or pinned earlier in LB_CT), with the destination MAC
//! set to the backend's 02:42:<ip> so that the bridge forwards it. The client
//! address is kept: backends see the real client.
//!
//! `lb_egress` sees what goes to the container: replies from a backend found
//! in LB_REV_CT get the VIP back as their source.
//!
//! A VIP with no backend refuses new flows at once: TCP with a RST, UDP with
//! an ICMP port unreachable (from the VIP).
//!
//! Limits: IPv4 only; fragments (the first one too) pass untouched (the
//! kernel handles them as it would without the LB); ICMP errors about a
//! flow are not translated; a task reaching its own service never gets
//! itself (see `pick`).

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK,
        TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    helpers::generated::{bpf_redirect, bpf_skb_change_tail},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use netagent_common::{
    lb_flow_hash, trace_seen, LbBackend, LbCtKey, LbCtValue, LbMaglevTable, LbRevKey, LbRevValue,
    LbService, LbServiceKey, LB_BACKENDS_CAPACITY, LB_CT_CAPACITY, LB_SERVICES_CAPACITY,
    LB_SERVICE_NO_BACKENDS, LB_TABLE_SLOTS, TRACE_MODE_OFF,
};

use crate::trace::{self, tuple};

#[map]
pub(crate) static LB_SERVICES: HashMap<LbServiceKey, LbService> =
    HashMap::pinned(LB_SERVICES_CAPACITY, 0);
#[map]
static LB_BACKENDS: HashMap<u32, LbBackend> = HashMap::pinned(LB_BACKENDS_CAPACITY, 0);
/// One whole Maglev table per entry: the agent writes a table with one
/// update, and a lookup is one bounds-checked array access.
#[map]
static LB_MAGLEV: Array<LbMaglevTable> = Array::pinned(LB_TABLE_SLOTS, 0);
/// New flows per backend id (ids start at 1), per CPU: no atomic add on
/// the new-flow path (the BPF target has no atomic read-modify-write in
/// Rust's core), no cache line shared between CPUs.
#[map]
static LB_BACKEND_FLOWS: PerCpuArray<u64> = PerCpuArray::pinned(LB_BACKENDS_CAPACITY + 1, 0);
#[map]
pub(crate) static LB_CT: LruHashMap<LbCtKey, LbCtValue> = LruHashMap::pinned(LB_CT_CAPACITY, 0);
#[map]
static LB_REV_CT: LruHashMap<LbRevKey, LbRevValue> = LruHashMap::pinned(LB_CT_CAPACITY, 0);

pub(crate) const TC_ACT_UNSPEC: i32 = -1;

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
/// IPv4 `frag_off`'s MF flag and fragment offset: any bit set, a fragment.
pub(crate) const IP_FRAG_MASK: u16 = 0x3fff;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub(crate) const IP_SRC_OFF: usize = ETH_HLEN + 12;
pub(crate) const IP_DST_OFF: usize = ETH_HLEN + 16;
const TCP_FLAG_FIN: u8 = 0x01;
pub(crate) const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
pub(crate) const TCP_FLAG_ACK: u8 = 0x10;

#[classifier]
pub fn lb_ingress(ctx: TcContext) -> i32 {
    match from_container(&ctx) {
        Ok(verdict) => verdict,
        // A packet we cannot parse is none of our business.
        Err(()) => {
            trace::malformed(&ctx);
            TC_ACT_UNSPEC
        }
    }
}

#[classifier]
pub fn lb_egress(ctx: TcContext) -> i32 {
    to_container(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

/// The IPv4 TCP/UDP headers we need, as they sit in the packet.
pub(crate) struct Flow {
    pub(crate) saddr: u32,
    pub(crate) daddr: u32,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) proto: u8,
    /// Offset of the L4 checksum.
    pub(crate) csum_off: usize,
    /// TCP flags (0 for UDP).
    pub(crate) tcp_flags: u8,
    /// Offset of the L4 header.
    pub(crate) l4: usize,
    /// IPv4 header length.
    ihl: usize,
}

/// The first `N` bytes at `offset` of the packet's linear part, read
/// directly (no helper call): the common case on a veth, where the headers
/// are always linear. `None` when they are not there.
#[inline(always)]
pub(crate) fn bytes_at<const N: usize>(ctx: &TcContext, offset: usize) -> Option<[u8; N]> {
    let start = ctx.data() + offset;
    if start + N > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked against data_end just above (the verifier
    // checks the same); [u8; N] has no alignment requirement.
    Some(unsafe { *(start as *const [u8; N]) })
}

/// The Ethernet type and, for IPv4, the destination address, read in one
/// direct access: all the miss path (not a VIP, not a reply) needs.
#[inline(always)]
fn eth_proto_and_daddr(ctx: &TcContext) -> Result<(u16, u32), ()> {
    match bytes_at::<{ ETH_HLEN + 20 }>(ctx, 0) {
        Some(head) => Ok((
            u16::from_be_bytes([head[12], head[13]]),
            u32::from_ne_bytes([head[30], head[31], head[32], head[33]]),
        )),
        None => {
            let proto = u16::from_be(ctx.load::<u16>(12).map_err(|_| ())?);
            let daddr = if proto == ETH_P_IP {
                ctx.load(IP_DST_OFF).map_err(|_| ())?
            } else {
                0
            };
            Ok((proto, daddr))
        }
    }
}

#[inline(always)]
pub(crate) fn parse_flow(ctx: &TcContext) -> Result<Option<Flow>, ()> {
    let ver_ihl: u8 = ctx.load(ETH_HLEN).map_err(|_| ())?;
    if ver_ihl >> 4 != 4 {
        return Ok(None);
    }
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ihl < 20 {
        return Ok(None);
    }
    // Any fragment (MF or an offset) is left to the kernel: only the first
    // has the ports, and translating it alone splits the datagram.
    let frag: u16 = ctx.load(ETH_HLEN + 6).map_err(|_| ())?;
    if u16::from_be(frag) & IP_FRAG_MASK != 0 {
        return Ok(None);
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| ())?;
    let l4 = ETH_HLEN + ihl;
    let (csum_off, tcp_flags) = match proto {
        IPPROTO_TCP => (l4 + 16, ctx.load::<u8>(l4 + 13).map_err(|_| ())?),
        IPPROTO_UDP => (l4 + 6, 0),
        _ => return Ok(None),
    };
    Ok(Some(Flow {
        saddr: ctx.load(IP_SRC_OFF).map_err(|_| ())?,
        daddr: ctx.load(IP_DST_OFF).map_err(|_| ())?,
        sport: ctx.load(l4).map_err(|_| ())?,
        dport: ctx.load(l4 + 2).map_err(|_| ())?,
        proto,
        csum_off,
        tcp_flags,
        l4,
        ihl,
    }))
}

#[inline(always)]
fn from_container(ctx: &TcContext) -> Result<i32, ()> {
    let (eth_proto, daddr) = eth_proto_and_daddr(ctx)?;
    if eth_proto == ETH_P_ARP {
        return answer_arp(ctx);
    }
    if eth_proto != ETH_P_IP {
        return Ok(TC_ACT_UNSPEC);
    }
    // Most packets are not for a VIP: one lookup, before any parsing.
    // SAFETY: only tested for presence.
    if unsafe { LB_SERVICES.get(&LbServiceKey { vip: daddr }) }.is_none() {
        return Ok(TC_ACT_UNSPEC);
    }
    let Some(flow) = parse_flow(ctx)? else {
        trace::unsupported(ctx, daddr);
        return Ok(TC_ACT_UNSPEC);
    };
    // SAFETY: the value is copied out at once; the agent only replaces whole
    // entries.
    let Some(service) = (unsafe { LB_SERVICES.get(&LbServiceKey { vip: flow.daddr }) }).copied()
    else {
        return Ok(TC_ACT_UNSPEC);
    };
    let FlowPin {
        key,
        pinned,
        new_connection,
    } = flow_pin(&flow);
    let backend = match pinned {
        Some(ct) => ct.backend,
        None => {
            let Some(backend) = pin_new_flow(&service, &key) else {
                // No backend: refuse at once rather than leave the client
                // waiting. TCP gets a RST, UDP an ICMP port unreachable.
                let sent = tuple(flow.saddr, flow.daddr, flow.sport, flow.dport);
                trace::refused(ctx, flow.proto, sent, service.id);
                if flow.proto == IPPROTO_TCP {
                    return reset(ctx, &flow);
                }
                return unreachable(ctx, &flow);
            };
            let _ = LB_REV_CT.insert(
                &rev_key(&flow, backend, flow.dport),
                &LbRevValue {
                    vip: flow.daddr,
                    // This packet is reported below, as a new flow.
                    reported: trace_seen(flow.tcp_flags, false),
                },
                0,
            );
            backend
        }
    };
    rewrite_addr(ctx, &flow, IP_DST_OFF, flow.daddr, backend)?;
    ctx.store(0, &mac_of(backend), 0).map_err(|_| ())?;
    let mode = trace::mode();
    if mode != TRACE_MODE_OFF
        && (pinned.is_none() || trace::news(mode, reported(&flow, backend), flow.tcp_flags, false))
    {
        let rebalanced = pinned.is_none() && flow.proto == IPPROTO_TCP && !new_connection;
        let sent = tuple(flow.saddr, flow.daddr, flow.sport, flow.dport);
        let now = tuple(flow.saddr, backend, flow.sport, flow.dport);
        trace::translated(
            ctx,
            pinned.is_some(),
            rebalanced,
            flow.proto,
            sent,
            now,
            service.id,
        );
    }
    Ok(TC_ACT_OK as i32)
}

/// The reverse-conntrack key (LB_REV_CT, INGRESS_REV_CT) of the replies of
/// `flow`, translated to `backend`:`backend_port`.
#[inline(always)]
pub(crate) fn rev_key(flow: &Flow, backend: u32, backend_port: u16) -> LbRevKey {
    LbRevKey {
        backend,
        client: flow.saddr,
        backend_port,
        client_port: flow.sport,
        proto: flow.proto,
        pad: [0; 3],
    }
}

/// What `netctl trace` was told about `flow` (its reverse entry's
/// TRACE_SEEN_* bits), to update in place.
#[inline(always)]
fn reported(flow: &Flow, backend: u32) -> Option<*mut u32> {
    let rev = LB_REV_CT.get_ptr_mut(&rev_key(flow, backend, flow.dport))?;
    // SAFETY: a field of a map value, valid for the program's run.
    Some(unsafe { core::ptr::addr_of_mut!((*rev).reported) })
}

/// A flow's conntrack key, and the backend it is pinned to if that pin
/// still holds.
pub(crate) struct FlowPin {
    pub key: LbCtKey,
    pub pinned: Option<LbCtValue>,
    /// A TCP SYN without ACK.
    pub new_connection: bool,
}

/// Looks `flow` up in LB_CT (VIP and published-port flows alike). A fresh
/// TCP SYN always picks again, so that a reused port never follows a stale
/// entry; a flow whose backend has gone picks again; a draining backend
/// keeps its flows.
#[inline(always)]
pub(crate) fn flow_pin(flow: &Flow) -> FlowPin {
    let key = LbCtKey {
        client: flow.saddr,
        vip: flow.daddr,
        client_port: flow.sport,
        vip_port: flow.dport,
        proto: flow.proto,
        pad: [0; 3],
    };
    let new_connection =
        flow.proto == IPPROTO_TCP && flow.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    let pinned = if new_connection {
        None
    } else {
        // SAFETY (both lookups): copied out at once.
        unsafe { LB_CT.get(&key) }.copied().filter(|ct| {
            unsafe { LB_BACKENDS.get(&ct.backend_id) }.is_some_and(|b| b.ip == ct.backend)
        })
    };
    FlowPin {
        key,
        pinned,
        new_connection,
    }
}

/// Picks a backend for a flow without a pin, pins the flow to it in LB_CT
/// and counts the new flow; `None` when the service has no active backend.
#[inline(always)]
pub(crate) fn pin_new_flow(service: &LbService, key: &LbCtKey) -> Option<u32> {
    let (backend_id, backend) = pick(service, key)?;
    let _ = LB_CT.insert(
        key,
        &LbCtValue {
            backend,
            backend_id,
        },
        0,
    );
    count_new_flow(backend_id);
    Some(backend)
}

/// Adds one to backend `id`'s new-flow counter.
#[inline(always)]
fn count_new_flow(id: u32) {
    if let Some(count) = LB_BACKEND_FLOWS.get_ptr_mut(id) {
        // SAFETY: this CPU's own slot, valid for the program's run.
        unsafe { *count += 1 };
    }
}

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
fn pick(service: &LbService, key: &LbCtKey) -> Option<(u32, u32)> {
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

/// The reverse-conntrack key of a packet towards the container, from one
/// direct read of the Ethernet, IPv4 (no options) and port fields; `None`
/// for anything that is not unfragmented IPv4 TCP/UDP. Packets the fast read
/// cannot cover go through `parse_flow`.
#[inline(always)]
pub(crate) fn reply_key(ctx: &TcContext) -> Result<Option<LbRevKey>, ()> {
    if let Some(h) = bytes_at::<{ ETH_HLEN + 24 }>(ctx, 0) {
        if h[12..14] != ETH_P_IP.to_be_bytes() {
            return Ok(None);
        }
        if let Some(key) = plain_reply_key(&h, ETH_HLEN) {
            return Ok(Some(key));
        }
        // Without options, only another protocol or a fragment is left:
        // no flow of ours (`parse_flow` would say the same, slower).
        if h[ETH_HLEN] == 0x45 {
            return Ok(None);
        }
    }
    let eth_proto = u16::from_be(ctx.load::<u16>(12).map_err(|_| ())?);
    if eth_proto != ETH_P_IP {
        return Ok(None);
    }
    Ok(parse_flow(ctx)?.map(|f| LbRevKey {
        backend: f.saddr,
        client: f.daddr,
        backend_port: f.sport,
        client_port: f.dport,
        proto: f.proto,
        pad: [0; 3],
    }))
}

/// The reverse-conntrack key of the IPv4 header at `ip` in `h` and the
/// ports after it, when that header has no options, is not a fragment and
/// carries TCP or UDP; `None` otherwise.
#[inline(always)]
pub(crate) fn plain_reply_key<const N: usize>(h: &[u8; N], ip: usize) -> Option<LbRevKey> {
    let proto = h[ip + 9];
    let fragment = u16::from_be_bytes([h[ip + 6], h[ip + 7]]) & IP_FRAG_MASK != 0;
    if h[ip] != 0x45 || fragment || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return None;
    }
    let word = |at: usize| u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let port = |at: usize| u16::from_ne_bytes([h[at], h[at + 1]]);
    Some(LbRevKey {
        backend: word(ip + 12),
        client: word(ip + 16),
        backend_port: port(ip + 20),
        client_port: port(ip + 22),
        proto,
        pad: [0; 3],
    })
}

#[inline(always)]
fn to_container(ctx: &TcContext) -> Result<i32, ()> {
    let Some(key) = reply_key(ctx)? else {
        return Ok(TC_ACT_UNSPEC);
    };
    let Some(rev) = LB_REV_CT.get_ptr_mut(&key) else {
        return Ok(TC_ACT_UNSPEC);
    };
    // SAFETY: a map value, valid for the program's run; the VIP is copied
    // out at once.
    let vip = unsafe { (*rev).vip };
    // A reply of a balanced flow (rare next to all other traffic): now the
    // full parse, for the checksum offsets.
    let Some(flow) = parse_flow(ctx)? else {
        return Ok(TC_ACT_UNSPEC);
    };
    rewrite_addr(ctx, &flow, IP_SRC_OFF, flow.saddr, vip)?;
    let mode = trace::mode();
    // SAFETY: a field of the map value above.
    let reported = unsafe { core::ptr::addr_of_mut!((*rev).reported) };
    if mode != TRACE_MODE_OFF && trace::news(mode, Some(reported), flow.tcp_flags, true) {
        let sent = tuple(flow.saddr, flow.daddr, flow.sport, flow.dport);
        let now = tuple(vip, flow.daddr, flow.sport, flow.dport);
        trace::reversed(ctx, flow.proto, sent, now);
    }
    Ok(TC_ACT_OK as i32)
}

/// Turns a TCP segment to a VIP without backends into the RST that refuses
/// it (RFC 9293 3.10.7.1) and sends it straight back to the container.
/// Swapping addresses and ports leaves both checksums as they are; options
/// stay (a RST may carry them) so the packet keeps its length.
#[inline(always)]
fn reset(ctx: &TcContext, flow: &Flow) -> Result<i32, ()> {
    if flow.tcp_flags & TCP_FLAG_RST != 0 {
        return Ok(TC_ACT_SHOT);
    }
    let l4 = flow.l4;
    let seq: u32 = ctx.load(l4 + 4).map_err(|_| ())?;
    let ack: u32 = ctx.load(l4 + 8).map_err(|_| ())?;
    let doff: u8 = ctx.load(l4 + 12).map_err(|_| ())?;
    let word: u16 = ctx.load(l4 + 12).map_err(|_| ())?;
    let tot_len = u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).map_err(|_| ())?);
    let header = flow.ihl + usize::from(doff >> 4) * 4;
    let payload = usize::from(tot_len).saturating_sub(header) as u32;
    let (new_seq, new_ack, flags) = if flow.tcp_flags & TCP_FLAG_ACK != 0 {
        (ack, ack, TCP_FLAG_RST)
    } else {
        let mut len = payload;
        if flow.tcp_flags & TCP_FLAG_SYN != 0 {
            len += 1;
        }
        if flow.tcp_flags & TCP_FLAG_FIN != 0 {
            len += 1;
        }
        (
            0,
            u32::from_be(seq).wrapping_add(len).to_be(),
            TCP_FLAG_RST | TCP_FLAG_ACK,
        )
    };
    let new_word = u16::from_ne_bytes([doff, flags]);
    ctx.l4_csum_replace(flow.csum_off, u64::from(seq), u64::from(new_seq), 4)
        .map_err(|_| ())?;
    ctx.l4_csum_replace(flow.csum_off, u64::from(ack), u64::from(new_ack), 4)
        .map_err(|_| ())?;
    ctx.l4_csum_replace(flow.csum_off, u64::from(word), u64::from(new_word), 2)
        .map_err(|_| ())?;
    ctx.store(l4 + 4, &new_seq, 0).map_err(|_| ())?;
    ctx.store(l4 + 8, &new_ack, 0).map_err(|_| ())?;
    ctx.store(l4 + 12, &new_word, 0).map_err(|_| ())?;
    ctx.store(l4, &flow.dport, 0).map_err(|_| ())?;
    ctx.store(l4 + 2, &flow.sport, 0).map_err(|_| ())?;
    ctx.store(IP_SRC_OFF, &flow.daddr, 0).map_err(|_| ())?;
    ctx.store(IP_DST_OFF, &flow.saddr, 0).map_err(|_| ())?;
    bounce(ctx)
}

/// The original IPv4 header (no options) and UDP header that an ICMP error
/// quotes.
const ICMP_QUOTE: usize = 20 + 8;
/// The new IPv4 header and ICMP header in front of the quote.
const ICMP_ROOM: usize = 20 + 8;

/// Turns a UDP datagram to a VIP without backends into the ICMP port
/// unreachable (from the VIP) that refuses it, and sends that back to the
/// container. A datagram with IP options is only dropped.
#[inline(always)]
fn unreachable(ctx: &TcContext, flow: &Flow) -> Result<i32, ()> {
    if flow.ihl != 20 {
        return Ok(TC_ACT_SHOT);
    }
    // Keep the headers the error quotes, then make room in front of them.
    // SAFETY: a plain helper call on the program's own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + ICMP_QUOTE) as u32, 0) } != 0 {
        return Ok(TC_ACT_SHOT);
    }
    ctx.adjust_room(ICMP_ROOM as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| ())?;
    let quote: [u8; ICMP_QUOTE] = ctx.load(ETH_HLEN + ICMP_ROOM).map_err(|_| ())?;
    let ip = ipv4_header(
        (ICMP_ROOM + ICMP_QUOTE) as u16,
        0,
        IPPROTO_ICMP,
        flow.daddr,
        flow.saddr,
    );
    // Type 3 (destination unreachable), code 3 (port unreachable).
    let mut icmp = [3u8, 3, 0, 0, 0, 0, 0, 0];
    let sum = fold(add_words(&quote, add_words(&icmp, 0)));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ctx.store(ETH_HLEN, &ip, 0).map_err(|_| ())?;
    ctx.store(ETH_HLEN + 20, &icmp, 0).map_err(|_| ())?;
    bounce(ctx)
}

/// The MAC the agent gives the interface with IPv4 address `addr`
/// (network byte order): 02:42 and the address, as Docker does.
#[inline(always)]
pub(crate) fn mac_of(addr: u32) -> [u8; 6] {
    let a = addr.to_ne_bytes();
    [0x02, 0x42, a[0], a[1], a[2], a[3]]
}

/// An IPv4 header without options, TTL 64 (the kernel's default hop
/// limit), no DF, checksum filled in; addresses in network byte order.
#[inline(always)]
pub(crate) fn ipv4_header(total_len: u16, id: u16, proto: u8, src: u32, dst: u32) -> [u8; 20] {
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.to_ne_bytes());
    ip[16..20].copy_from_slice(&dst.to_ne_bytes());
    let sum = fold(add_words(&ip, 0));
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

/// Adds `bytes` (an even number) to a ones' complement sum, as 16-bit
/// big-endian words.
#[inline(always)]
pub(crate) fn add_words<const N: usize>(bytes: &[u8; N], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// The Internet checksum of a ones' complement sum.
#[inline(always)]
pub(crate) fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Swaps the MAC addresses and sends the packet back out of the interface
/// it came in on, to the container.
#[inline(always)]
fn bounce(ctx: &TcContext) -> Result<i32, ()> {
    let dst: [u8; 6] = ctx.load(0).map_err(|_| ())?;
    let src: [u8; 6] = ctx.load(6).map_err(|_| ())?;
    ctx.store(0, &src, 0).map_err(|_| ())?;
    ctx.store(6, &dst, 0).map_err(|_| ())?;
    // SAFETY: the kernel hands every tc program a valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a plain helper call; egress of the interface the packet came in on.
    unsafe { bpf_redirect(ifindex, 0) };
    Ok(TC_ACT_REDIRECT as i32)
}

/// Replaces the IPv4 address at `offset` and fixes both checksums.
#[inline(always)]
pub(crate) fn rewrite_addr(
    ctx: &TcContext,
    flow: &Flow,
    offset: usize,
    from: u32,
    to: u32,
) -> Result<(), ()> {
    let mut flags = u64::from(BPF_F_PSEUDO_HDR) | 4;
    if flow.proto == IPPROTO_UDP {
        // A UDP checksum of 0 means "none": keep it so.
        flags |= u64::from(BPF_F_MARK_MANGLED_0);
    }
    ctx.l4_csum_replace(flow.csum_off, u64::from(from), u64::from(to), flags)
        .map_err(|_| ())?;
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(from), u64::from(to), 4)
        .map_err(|_| ())?;
    ctx.store(offset, &to, 0).map_err(|_| ())
}

/// Answers an ARP request for a VIP with the VIP's own 02:42:<vip> MAC and
/// sends it straight back to the container.
#[inline(always)]
fn answer_arp(ctx: &TcContext) -> Result<i32, ()> {
    const ARP: usize = ETH_HLEN;
    let ptype = u16::from_be(ctx.load::<u16>(ARP + 2).map_err(|_| ())?);
    let oper = u16::from_be(ctx.load::<u16>(ARP + 6).map_err(|_| ())?);
    if ptype != ETH_P_IP || oper != 1 {
        return Ok(TC_ACT_UNSPEC);
    }
    let tpa: u32 = ctx.load(ARP + 24).map_err(|_| ())?;
    // SAFETY: only tested for presence.
    if unsafe { LB_SERVICES.get(&LbServiceKey { vip: tpa }) }.is_none() {
        return Ok(TC_ACT_UNSPEC);
    }
    let sha: [u8; 6] = ctx.load(ARP + 8).map_err(|_| ())?;
    let spa: u32 = ctx.load(ARP + 14).map_err(|_| ())?;
    let vip_mac = mac_of(tpa);
    // Ethernet: from the VIP's MAC back to the asker (bounce swaps them).
    ctx.store(0, &vip_mac, 0).map_err(|_| ())?;
    ctx.store(ARP + 6, &2u16.to_be(), 0).map_err(|_| ())?;
    ctx.store(ARP + 8, &vip_mac, 0).map_err(|_| ())?;
    ctx.store(ARP + 14, &tpa, 0).map_err(|_| ())?;
    ctx.store(ARP + 18, &sha, 0).map_err(|_| ())?;
    ctx.store(ARP + 24, &spa, 0).map_err(|_| ())?;
    let verdict = bounce(ctx);
    trace::arp_reply(ctx, tuple(spa, tpa, 0, 0));
    verdict
}
