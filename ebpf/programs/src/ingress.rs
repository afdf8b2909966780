//! Published ports on the node's underlay interface (in the node namespace).
//!
//! `ingress_in` sees what the node receives: TCP/UDP to
//! <node address>:<published port> found in INGRESS_PORTS is DNATed to a
//! task (<overlay address>:<target port>) picked with the Maglev table and
//! backend states of the LB_SERVICES entry the port names, and pinned in
//! LB_CT, with the same code as the VIP load balancer's
//! (`conntrack::flow_pin`, `conntrack::pin_new_flow`: new flows count per
//! backend alike).
//!
//! A task on this node: the kernel routes the packet to the network's
//! uplink (`nagw<vni>`) and through the sandbox to the task, which sees the
//! client address. A task on another node: its network's entry in
//! INGRESS_UPLINKS gives this node's ingress address there and `nagw<vni>`;
//! the source becomes the ingress address (port: `claim_port`, recorded in
//! INGRESS_SNAT and INGRESS_REV_CT) so that the task's replies come back
//! through this node. When INGRESS_REMOTE knows the task (its node, VNI,
//! MAC) and the packet fits the MTUs, it is wrapped in VXLAN here
//! (`vxlan::encapsulate`) and sent straight out of the underlay to the
//! task's node (`bpf_redirect_neigh`); else it goes into the network's
//! sandbox (`bpf_redirect_peer`), whose vxlan device sends it.
//!
//! The replies come back as VXLAN: `ingress_in` also sees those, and for
//! one whose inner packet has an INGRESS_SNAT entry strips the outer
//! headers (`vxlan::decapsulate`), gives it the client back as
//! destination and sends it out of the underlay (`to_client`). Replies the
//! node's vxlan device takes after all (a GSO aggregate, IP options) come
//! up `nagw<vni>` from the sandbox, where `ingress_uplink` does the same.
//! The node namespace's IP stack never sees the inner packets (on the
//! sandbox path their VXLAN form passes its UDP socket).
//!
//! `ingress_out` sees what the node sends: replies found in INGRESS_REV_CT
//! get the node address and published port back as their source.
//!
//! Ports nobody published, and ports without an active task, are left alone:
//! the node answers them as it would without us (RST, port unreachable).
//!
//! `ingress_in`/`ingress_out` report to `netctl trace` (`trace::forwarded`,
//! `published_reversed`, `published_closed`), for nothing but the TRACE_ON
//! check while nobody traces.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_redirect_neigh, bpf_redirect_peer},
    macros::{classifier, map},
    maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap},
    programs::TcContext,
};
use netagent_common::{
    lb_flow_hash, trace_seen, IngressPort, IngressPortKey, IngressRemote, IngressRev, IngressSnat,
    IngressUplink, LbCtKey, LbRevKey, LbServiceKey, INGRESS_LOCAL_CAPACITY, INGRESS_PORTS_CAPACITY,
    INGRESS_REMOTE_CAPACITY, INGRESS_UPLINKS_CAPACITY, LB_CT_CAPACITY, TRACE_MODE_OFF, VXLAN_PORT,
};

use crate::{
    conntrack::{self, FlowPin, LB_CT},
    eth::{self, ETH_HLEN},
    ipv4::{
        self, Flow, IPPROTO_TCP, IPPROTO_UDP, IP_DST_OFF, IP_SRC_OFF, TCP_FLAG_ACK, TCP_FLAG_SYN,
    },
    maglev::LB_SERVICES,
    trace::{self, tuple},
    vxlan::{self, Encap},
};

#[map]
static INGRESS_PORTS: HashMap<IngressPortKey, IngressPort> =
    HashMap::pinned(INGRESS_PORTS_CAPACITY, 0);
#[map]
static INGRESS_LOCAL: HashMap<u32, u32> = HashMap::pinned(INGRESS_LOCAL_CAPACITY, 0);
#[map]
static INGRESS_REV_CT: LruHashMap<LbRevKey, IngressRev> = LruHashMap::pinned(LB_CT_CAPACITY, 0);
#[map]
static INGRESS_UPLINKS: LpmTrie<u32, IngressUplink> = LpmTrie::pinned(INGRESS_UPLINKS_CAPACITY, 0);
#[map]
static INGRESS_SNAT: LruHashMap<LbRevKey, IngressSnat> = LruHashMap::pinned(LB_CT_CAPACITY, 0);
#[map]
static INGRESS_REMOTE: HashMap<u32, IngressRemote> = HashMap::pinned(INGRESS_REMOTE_CAPACITY, 0);

#[classifier]
pub fn ingress_in(ctx: TcContext) -> i32 {
    // A packet we cannot parse is none of our business.
    from_outside(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

#[classifier]
pub fn ingress_out(ctx: TcContext) -> i32 {
    to_outside(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

#[inline(always)]
fn from_outside(ctx: &TcContext) -> Result<i32, ()> {
    // Every packet the node receives comes here (the overlay's VXLAN too):
    // one direct read of the 5-tuple (`reply_key` reads any packet's) and
    // one lookup before any parsing.
    let Some(seen) = conntrack::reply_key(ctx)? else {
        return Ok(TC_ACT_UNSPEC);
    };
    let port_key = IngressPortKey {
        addr: seen.client,
        port: seen.client_port,
        proto: seen.proto,
        pad: 0,
    };
    // SAFETY (every map lookup here): the value is copied out at once; the
    // agent only replaces whole entries.
    let Some(port) = (unsafe { INGRESS_PORTS.get(&port_key) }).copied() else {
        if seen.proto == IPPROTO_UDP && seen.client_port == VXLAN_PORT_BE {
            return from_task_node(ctx);
        }
        forget_stale(ctx, &seen);
        return Ok(TC_ACT_UNSPEC);
    };
    let Some(flow) = ipv4::parse_flow(ctx)? else {
        return Ok(TC_ACT_UNSPEC);
    };
    // As for VIPs (same conntrack, same pick).
    let FlowPin {
        key,
        pinned,
        new_connection,
    } = conntrack::flow_pin(&flow);
    let (backend, new_flow_service) = match pinned {
        Some(ct) => (ct.backend, None),
        None => {
            let Some(service) =
                (unsafe { LB_SERVICES.get(&LbServiceKey { vip: port.service }) }).copied()
            else {
                // The port's table is being (re)written: as good as no task.
                let sent = tuple(flow.saddr, flow.daddr, flow.sport, flow.dport);
                trace::published_closed(ctx, flow.proto, sent, 0);
                return Ok(TC_ACT_UNSPEC);
            };
            // No active task: leave the packet to the node (it answers as
            // for any closed port).
            let Some(backend) = conntrack::pin_new_flow(&service, &key) else {
                let sent = tuple(flow.saddr, flow.daddr, flow.sport, flow.dport);
                trace::published_closed(ctx, flow.proto, sent, service.id);
                return Ok(TC_ACT_UNSPEC);
            };
            (backend, Some(service.id))
        }
    };
    let remote = unsafe { INGRESS_LOCAL.get(&backend) }.is_none();
    let rev = conntrack::rev_key(&flow, backend, port.target);
    // A pinned flow's reverse entry, read once: its SNAT port and what
    // `netctl trace` was told. None for a new flow, or when the LRU evicted
    // it (then it is written afresh, or the replies would not be restored).
    let entry = match pinned {
        Some(_) => INGRESS_REV_CT.get_ptr_mut(&rev),
        None => None,
    };
    // SAFETY: a map value, valid for the program's run.
    let mut snat_port = entry.map_or(0, |e| unsafe { (*e).snat_port });
    // A task on another node: through this node's uplink into the
    // network's sandbox, from this node's ingress address there.
    let uplink = if remote {
        INGRESS_UPLINKS.get(&Key::new(32, backend)).copied()
    } else {
        None
    };
    if let Some(uplink) = uplink {
        if snat_port == 0 {
            let Some(claimed) = claim_port(ctx, &flow, backend, port.target, uplink.addr) else {
                // Every port tried is another client's: the client retries.
                return Ok(TC_ACT_SHOT);
            };
            snat_port = claimed;
        }
    }
    if entry.is_none() {
        let _ = INGRESS_REV_CT.insert(
            &rev,
            &IngressRev {
                addr: flow.daddr,
                port: flow.dport,
                snat_port,
                // This packet is reported below, as news.
                reported: trace_seen(flow.tcp_flags, false),
            },
            0,
        );
    }
    ipv4::rewrite_addr(ctx, &flow, IP_DST_OFF, flow.daddr, backend)?;
    rewrite_port(ctx, &flow, flow.l4 + 2, flow.dport, port.target)?;
    if let Some(uplink) = &uplink {
        ipv4::rewrite_addr(ctx, &flow, IP_SRC_OFF, flow.saddr, uplink.addr)?;
        rewrite_port(ctx, &flow, flow.l4, flow.sport, snat_port)?;
    }
    let mode = trace::mode();
    // SAFETY: a field of the map value above.
    let reported = entry.map(|e| unsafe { core::ptr::addr_of_mut!((*e).reported) });
    if mode != TRACE_MODE_OFF && trace::news(mode, reported, flow.tcp_flags, false) {
        let rebalanced = pinned.is_none() && flow.proto == IPPROTO_TCP && !new_connection;
        let sent = tuple(flow.saddr, flow.daddr, flow.sport, flow.dport);
        let now = tuple(flow.saddr, backend, flow.sport, port.target);
        // An established flow's service only while tracing (the pin is
        // all its packets need).
        let service_id = new_flow_service.unwrap_or_else(|| {
            unsafe { LB_SERVICES.get(&LbServiceKey { vip: port.service }) }.map_or(0, |s| s.id)
        });
        trace::forwarded(
            ctx,
            pinned.is_some(),
            rebalanced,
            remote,
            flow.proto,
            sent,
            now,
            service_id,
        );
    }
    // Reported before: `netctl trace` captures the packet as the task
    // gets it, whichever way it goes.
    Ok(match uplink {
        Some(uplink) => to_task_node(ctx, &key, backend, &uplink),
        None => TC_ACT_OK as i32,
    })
}

/// Sends a packet translated for `backend`, a task on another node, on
/// its way: wrapped in VXLAN here and straight out of the underlay to the
/// task's node when INGRESS_REMOTE knows it and the packet fits; else
/// into the network's sandbox (gw0's ingress), whose vxlan device sends
/// it. Either way no routing and no netfilter in the node namespace for
/// the packet itself.
#[inline(always)]
fn to_task_node(ctx: &TcContext, key: &LbCtKey, backend: u32, uplink: &IngressUplink) -> i32 {
    // SAFETY: copied out at once.
    if let Some(remote) = unsafe { INGRESS_REMOTE.get(&backend) }.copied() {
        // The task's node sends the replies to the ingress address's MAC,
        // which is its own 02:42:<address> (see `dataplane::ingress_path`).
        let ingress_mac = eth::mac_of(uplink.addr);
        // The published port's address: this node's on the underlay.
        let outer_src = key.vip;
        match vxlan::encapsulate(ctx, outer_src, &remote, ingress_mac, lb_flow_hash(key)) {
            Encap::Done => {
                // SAFETY: the kernel hands every tc program a valid
                // __sk_buff; a plain helper call (the kernel finds the next
                // hop from the outer destination).
                return unsafe {
                    bpf_redirect_neigh((*ctx.skb.skb).ifindex, core::ptr::null_mut(), 0, 0)
                } as i32;
            }
            Encap::Broken => return TC_ACT_SHOT,
            Encap::Declined => {}
        }
    }
    // SAFETY: a plain helper call.
    unsafe { bpf_redirect_peer(uplink.ifindex, 0) as i32 }
}

/// How many source ports `claim_port` tries.
const SNAT_ATTEMPTS: u32 = 8;

/// A source port on the ingress address `snat_addr` for the new flow
/// `flow` to `backend:target`, recorded in INGRESS_SNAT for its replies:
/// the client's own port if no other client holds it there, else one of a
/// few others derived from the client's address and port. An entry is
/// never removed (LRU), so a client coming back with the same port finds
/// its own.
#[inline(always)]
fn claim_port(
    ctx: &TcContext,
    flow: &Flow,
    backend: u32,
    target: u16,
    snat_addr: u32,
) -> Option<u16> {
    let held_by_us = IngressSnat {
        client: flow.saddr,
        client_port: flow.sport,
        pad: 0,
        // SAFETY: the kernel hands every tc program a valid __sk_buff.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
    };
    let mut candidate = flow.sport;
    for attempt in 0..SNAT_ATTEMPTS {
        if candidate != 0 {
            let key = LbRevKey {
                backend,
                client: snat_addr,
                backend_port: target,
                client_port: candidate,
                proto: flow.proto,
                pad: [0; 3],
            };
            // SAFETY: copied out at once.
            match unsafe { INGRESS_SNAT.get(&key) }.copied() {
                Some(held)
                    if held.client == held_by_us.client
                        && held.client_port == held_by_us.client_port =>
                {
                    if held.ifindex != held_by_us.ifindex {
                        let _ = INGRESS_SNAT.insert(&key, &held_by_us, 0);
                    }
                    return Some(candidate);
                }
                Some(_) => {}
                None => {
                    if INGRESS_SNAT
                        .insert(&key, &held_by_us, u64::from(BPF_NOEXIST))
                        .is_ok()
                    {
                        return Some(candidate);
                    }
                }
            }
        }
        // Ports 1024-65535, spread by a multiplicative hash.
        let h = (flow.saddr ^ (u32::from(flow.sport) << 16) ^ attempt)
            .wrapping_mul(0x9e37_79b1)
            .rotate_left(13)
            .wrapping_mul(0x85eb_ca6b);
        candidate = (1024 + (h >> 16) % (65536 - 1024)) as u16;
        candidate = candidate.to_be();
    }
    None
}

#[classifier]
pub fn ingress_uplink(ctx: TcContext) -> i32 {
    from_uplink(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

/// A reply from a task on another node to this node's ingress address
/// (it came over the overlay into the sandbox, which routed it up
/// `nagw<vni>`): back to the client's address and port, and out of the
/// interface the client's packets came in on, without the node
/// namespace's routing and netfilter (`ingress_out` still runs there and
/// restores the published source). Anything else goes on as before.
#[inline(always)]
fn from_uplink(ctx: &TcContext) -> Result<i32, ()> {
    let Some(key) = conntrack::reply_key(ctx)? else {
        return Ok(TC_ACT_UNSPEC);
    };
    // SAFETY: copied out at once.
    let Some(snat) = (unsafe { INGRESS_SNAT.get(&key) }).copied() else {
        return Ok(TC_ACT_UNSPEC);
    };
    to_client(ctx, &snat)
}

/// A VXLAN packet from another node: when it carries a task's reply to
/// this node's ingress address (an INGRESS_SNAT entry), the outer headers
/// go and it is sent on to the client as `from_uplink` would, without the
/// node's UDP socket, vxlan device and sandbox. Anything else (the
/// overlay's own traffic) goes on to the vxlan device. The cost for the
/// overlay's traffic: reading the inner headers and one lookup.
#[inline(always)]
fn from_task_node(ctx: &TcContext) -> Result<i32, ()> {
    let Some(key) = vxlan::inner_reply(ctx) else {
        return Ok(TC_ACT_UNSPEC);
    };
    // SAFETY: copied out at once.
    let Some(snat) = (unsafe { INGRESS_SNAT.get(&key) }).copied() else {
        return Ok(TC_ACT_UNSPEC);
    };
    if vxlan::decapsulate(ctx).is_err() {
        return Ok(TC_ACT_UNSPEC);
    }
    // Not the VXLAN packet any more: it must not reach the node as is.
    Ok(match to_client(ctx, &snat) {
        Ok(verdict) if verdict != TC_ACT_UNSPEC => verdict,
        _ => TC_ACT_SHOT,
    })
}

/// A task's reply to the ingress address, back to the client `snat`
/// names (`ingress_out`, on the way out, gives it the published source).
#[inline(always)]
fn to_client(ctx: &TcContext, snat: &IngressSnat) -> Result<i32, ()> {
    let Some(flow) = ipv4::parse_flow(ctx)? else {
        return Ok(TC_ACT_UNSPEC);
    };
    ipv4::rewrite_addr(ctx, &flow, IP_DST_OFF, flow.daddr, snat.client)?;
    rewrite_port(ctx, &flow, flow.l4 + 2, flow.dport, snat.client_port)?;
    // SAFETY: a plain helper call; no parameters: the kernel looks the
    // next hop up from the (new) destination.
    Ok(unsafe { bpf_redirect_neigh(snat.ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}

/// The overlay's UDP port (see the agent's `dataplane::sandbox`), as it
/// sits in the packet.
const VXLAN_PORT_BE: u16 = VXLAN_PORT.to_be();

/// A packet straight to a task (not through a published port) whose reply
/// tuple is still in INGRESS_REV_CT: that entry belongs to an earlier
/// published-port flow with the same client port, which the task cannot
/// tell from this one (nor can the node's conntrack: it saw both as
/// client -> task), so it is stale and would rewrite this flow's replies.
/// It goes, with the LB_CT entry of that published flow (a later packet
/// to the published port then picks again and writes both afresh). TCP
/// only on a SYN (a new connection); UDP has no start: any packet. A mesh
/// packet never matches: its destination is the node, not the task. The
/// cost is one lookup per received UDP packet or TCP SYN that is not for
/// a published port (VXLAN never comes here: `from_task_node` takes it).
#[inline(always)]
fn forget_stale(ctx: &TcContext, seen: &LbRevKey) {
    if seen.proto == IPPROTO_TCP {
        // The flags byte of a TCP header after an option-less IPv4 header;
        // with IP options this reads another byte, which at worst skips the
        // cleanup or clears an entry of a direct flow.
        let Ok(flags) = ctx.load::<u8>(ETH_HLEN + 20 + 13) else {
            return;
        };
        if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN {
            return;
        }
    } else if seen.proto != IPPROTO_UDP {
        return;
    }
    let stale = LbRevKey {
        backend: seen.client,
        client: seen.backend,
        backend_port: seen.client_port,
        client_port: seen.backend_port,
        proto: seen.proto,
        pad: [0; 3],
    };
    // SAFETY: copied out at once.
    let Some(published) = (unsafe { INGRESS_REV_CT.get(&stale) }).copied() else {
        return;
    };
    let _ = INGRESS_REV_CT.remove(&stale);
    let _ = LB_CT.remove(&LbCtKey {
        client: seen.backend,
        vip: published.addr,
        client_port: seen.backend_port,
        vip_port: published.port,
        proto: seen.proto,
        pad: [0; 3],
    });
}

#[inline(always)]
fn to_outside(ctx: &TcContext) -> Result<i32, ()> {
    let Some(key) = conntrack::reply_key(ctx)? else {
        return Ok(TC_ACT_UNSPEC);
    };
    let Some(entry) = INGRESS_REV_CT.get_ptr_mut(&key) else {
        return Ok(TC_ACT_UNSPEC);
    };
    // SAFETY: a map value, valid for the program's run, copied out at once.
    let rev = unsafe { *entry };
    let Some(flow) = ipv4::parse_flow(ctx)? else {
        return Ok(TC_ACT_UNSPEC);
    };
    ipv4::rewrite_addr(ctx, &flow, IP_SRC_OFF, flow.saddr, rev.addr)?;
    rewrite_port(ctx, &flow, flow.l4, flow.sport, rev.port)?;
    let mode = trace::mode();
    // SAFETY: a field of the map value above.
    let reported = unsafe { core::ptr::addr_of_mut!((*entry).reported) };
    if mode != TRACE_MODE_OFF && trace::news(mode, Some(reported), flow.tcp_flags, true) {
        let sent = tuple(flow.saddr, flow.daddr, flow.sport, flow.dport);
        let now = tuple(rev.addr, flow.daddr, rev.port, flow.dport);
        trace::published_reversed(ctx, flow.proto, sent, now);
    }
    Ok(TC_ACT_OK as i32)
}

/// Replaces the TCP/UDP port at `offset` and fixes the L4 checksum.
#[inline(always)]
fn rewrite_port(ctx: &TcContext, flow: &Flow, offset: usize, from: u16, to: u16) -> Result<(), ()> {
    if from == to {
        return Ok(());
    }
    let mut flags = 2;
    if flow.proto == IPPROTO_UDP {
        // A UDP checksum of 0 means "none": keep it so.
        flags |= u64::from(BPF_F_MARK_MANGLED_0);
    }
    ctx.l4_csum_replace(flow.csum_off, u64::from(from), u64::from(to), flags)
        .map_err(|_| ())?;
    ctx.store(offset, &to, 0).map_err(|_| ())
}
