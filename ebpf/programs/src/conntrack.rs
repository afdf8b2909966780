//! Conntrack of balanced flows (Cilium's `lib/conntrack.h`), shared by VIPs
//! (`lb.rs`) and published ports (`ingress.rs`), which pin their flows in
//! the same LB_CT: a flow's pin and how it holds (`flow_pin`), a new flow
//! pinned to the backend `maglev::pick` chose and counted in
//! LB_BACKEND_FLOWS (`pin_new_flow`), and the reverse keys replies are
//! looked up by (`rev_key`; `reply_key` and `plain_reply_key` read one
//! from a packet, the VXLAN path's inner one too). The reverse maps
//! themselves are each program's own (LB_REV_CT, INGRESS_REV_CT,
//! INGRESS_SNAT).

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
    programs::TcContext,
};
use netagent_common::{
    LbCtKey, LbCtValue, LbRevKey, LbService, LB_BACKENDS_CAPACITY, LB_CT_CAPACITY,
};

use crate::{
    eth::{bytes_at, ETH_HLEN, ETH_P_IP},
    ipv4::{parse_flow, Flow, IPPROTO_TCP, IPPROTO_UDP, IP_FRAG_MASK, TCP_FLAG_ACK, TCP_FLAG_SYN},
    maglev::{pick, LB_BACKENDS},
};

/// New flows per backend id (ids start at 1), per CPU: no atomic add on
/// the new-flow path (the BPF target has no atomic read-modify-write in
/// Rust's core), no cache line shared between CPUs.
#[map]
static LB_BACKEND_FLOWS: PerCpuArray<u64> = PerCpuArray::pinned(LB_BACKENDS_CAPACITY + 1, 0);
#[map]
pub(crate) static LB_CT: LruHashMap<LbCtKey, LbCtValue> = LruHashMap::pinned(LB_CT_CAPACITY, 0);

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
