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
//! itself (see `maglev::pick`).

use aya_ebpf::{
    bindings::{bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_skb_change_tail},
    macros::{classifier, map},
    maps::LruHashMap,
    programs::TcContext,
};
use netagent_common::{
    trace_seen, LbRevKey, LbRevValue, LbServiceKey, LB_CT_CAPACITY, TRACE_MODE_OFF,
};

use crate::{
    conntrack::{flow_pin, pin_new_flow, reply_key, rev_key, FlowPin},
    csum::{add_words, fold},
    eth::{mac_of, ETH_HLEN, ETH_P_ARP, ETH_P_IP},
    ipv4::{
        eth_proto_and_daddr, ipv4_header, parse_flow, rewrite_addr, Flow, IPPROTO_ICMP,
        IPPROTO_TCP, IP_DST_OFF, IP_SRC_OFF, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST,
        TCP_FLAG_SYN,
    },
    maglev::LB_SERVICES,
    trace::{self, tuple},
};

#[map]
static LB_REV_CT: LruHashMap<LbRevKey, LbRevValue> = LruHashMap::pinned(LB_CT_CAPACITY, 0);

const TC_ACT_UNSPEC: i32 = -1;

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

/// What `netctl trace` was told about `flow` (its reverse entry's
/// TRACE_SEEN_* bits), to update in place.
#[inline(always)]
fn reported(flow: &Flow, backend: u32) -> Option<*mut u32> {
    let rev = LB_REV_CT.get_ptr_mut(&rev_key(flow, backend, flow.dport))?;
    // SAFETY: a field of a map value, valid for the program's run.
    Some(unsafe { core::ptr::addr_of_mut!((*rev).reported) })
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
