//! Trace events: what a datapath program did with a packet, for `netctl
//! trace`.
//!
//! A program calls `emit` where it acts on a packet. `emit` first reads the
//! TRACE_ON flag (an array lookup the verifier inlines): while nobody traces
//! that is all it costs. A packet of a tracked flow is reported only when
//! `news` says so: in TRACE_MODE_CHANGES, when it shows the flow something
//! it has not reported yet (its first reply, a first SYN, FIN or RST).
//! To report, it reserves an event in the ring buffer, fills it in place (no
//! 184-byte copy on the 512-byte stack), with the packet's first bytes for
//! pcap while a tracer wants every packet, and submits it. A full ring
//! counts the event as lost in TRACE_STATS, so a loss is never silent.
//!
//! Submitting does not wake the agent until an eighth of the ring is
//! waiting: the agent drains it on a short timer while someone traces, so
//! a busy flow costs one wake-up per batch, not one per packet.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::TcContext,
};
use netagent_common::{
    TraceEvent, TraceTuple, TRACE_CAPTURE_BYTES, TRACE_FLAG_PUBLISHED, TRACE_FLAG_REMOTE_TASK,
    TRACE_KIND_ARP_REPLY, TRACE_KIND_DROP, TRACE_KIND_FORWARD, TRACE_KIND_FORWARD_ESTABLISHED,
    TRACE_KIND_PASS, TRACE_KIND_REVERSE, TRACE_KIND_TRANSLATE, TRACE_KIND_TRANSLATE_ESTABLISHED,
    TRACE_MODE_ALL_PACKETS, TRACE_MODE_OFF, TRACE_REASON_MALFORMED, TRACE_REASON_NONE,
    TRACE_REASON_NO_BACKEND, TRACE_REASON_NO_CONNTRACK, TRACE_REASON_UNSUPPORTED, TRACE_RING_BYTES,
    TRACE_STATS_LEN, TRACE_STAT_EMITTED, TRACE_STAT_LOST,
};

/// Index 0: TRACE_MODE_* (set by the agent while tracers are connected).
#[map]
static TRACE_ON: Array<u32> = Array::pinned(1, 0);
#[map]
static TRACE_EVENTS: RingBuf = RingBuf::pinned(TRACE_RING_BYTES, 0);
#[map]
static TRACE_STATS: PerCpuArray<u64> = PerCpuArray::pinned(TRACE_STATS_LEN, 0);

/// Waiting bytes that make a submit wake the agent at once.
const WAKEUP_BYTES: u64 = TRACE_RING_BYTES as u64 / 8;

/// Whether anyone is tracing: the one check every call site pays. Without
/// the `trace` feature (the benchmark's no-trace build) it is a constant
/// `false`, so every call site compiles to nothing; the maps stay in the
/// object, so the agent loads it unchanged.
#[inline(always)]
pub fn on() -> bool {
    mode() != TRACE_MODE_OFF
}

/// TRACE_MODE_*: off, what is new about a flow, or every packet.
#[inline(always)]
pub fn mode() -> u32 {
    if !cfg!(feature = "trace") {
        return TRACE_MODE_OFF;
    }
    TRACE_ON.get(0).copied().unwrap_or(TRACE_MODE_OFF)
}

/// Whether a packet of a tracked flow is to be reported in `mode` (not
/// off), `reported` being the flow's TRACE_SEEN_* bits, which it updates:
/// every packet in TRACE_MODE_ALL_PACKETS, else only news
/// (`netagent_common::trace_news`). No `reported` (the reverse entry has
/// gone): reported, as news.
#[inline(always)]
pub fn news(mode: u32, reported: Option<*mut u32>, tcp_flags: u8, reply: bool) -> bool {
    let Some(reported) = reported else {
        return true;
    };
    // SAFETY: a pointer into a map value, valid for the program's run; a
    // racing writer on another CPU at worst reports a packet twice.
    let seen = unsafe { *reported };
    let news = netagent_common::trace_news(seen, tcp_flags, reply);
    if news != 0 {
        // SAFETY: as above.
        unsafe { *reported = seen | news };
    }
    mode == TRACE_MODE_ALL_PACKETS || news != 0
}

/// Reports one event when someone is tracing. `before` is the packet as it
/// arrived, `after` as the program passes it on (the headers are captured
/// now, so call it after rewriting).
#[inline(always)]
pub fn emit(
    ctx: &TcContext,
    kind: u8,
    reason: u8,
    proto: u8,
    before: TraceTuple,
    after: TraceTuple,
    service_id: u32,
) {
    let what = What {
        kind,
        reason,
        flags: 0,
    };
    emit_flagged(ctx, what, proto, before, after, service_id);
}

/// An event's kind, reason and TRACE_FLAG_* bits.
#[derive(Clone, Copy)]
pub struct What {
    pub kind: u8,
    pub reason: u8,
    pub flags: u8,
}

/// `emit` with flags.
#[inline(always)]
pub fn emit_flagged(
    ctx: &TcContext,
    what: What,
    proto: u8,
    before: TraceTuple,
    after: TraceTuple,
    service_id: u32,
) {
    if !on() {
        return;
    }
    record(ctx, what, proto, before, after, service_id);
}

#[inline(always)]
fn record(
    ctx: &TcContext,
    what: What,
    proto: u8,
    before: TraceTuple,
    after: TraceTuple,
    service_id: u32,
) {
    let Some(mut entry) = TRACE_EVENTS.reserve::<TraceEvent>(0) else {
        count(TRACE_STAT_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    let packet_len = ctx.len();
    // SAFETY: `event` points at a reserved, exclusively ours, 8-aligned
    // TraceEvent in the ring; every field is written before submit (the
    // header bytes past `captured_len` are never read).
    unsafe {
        (*event).timestamp_ns = bpf_ktime_get_ns();
        (*event).ifindex = (*ctx.skb.skb).ifindex;
        (*event).kind = what.kind;
        (*event).reason = what.reason;
        (*event).proto = proto;
        (*event).flags = what.flags;
        (*event).before = before;
        (*event).after = after;
        (*event).service_id = service_id;
        (*event).packet_len = packet_len;
        (*event).pad2 = 0;
        // A bounded, non-zero length the verifier can follow; nothing
        // unless a tracer wants every packet (a pcap): the copy, and the
        // agent's base64 and JSON of it, are a large share of an event's cost.
        let mut captured = packet_len;
        if captured > TRACE_CAPTURE_BYTES as u32 {
            captured = TRACE_CAPTURE_BYTES as u32;
        }
        if mode() != TRACE_MODE_ALL_PACKETS {
            captured = 0;
        }
        if captured == 0
            || bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                0,
                (*event).headers.as_mut_ptr().cast(),
                captured,
            ) != 0
        {
            captured = 0;
        }
        (*event).captured_len = captured;
    }
    let wakeup = if TRACE_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(wakeup));
    count(TRACE_STAT_EMITTED);
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = TRACE_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU value: no other CPU writes it.
        unsafe { *counter += 1 };
    }
}

/// The kind and reason of a translated packet: `new` for a flow's first
/// (with `no-conntrack` when `rebalanced`: a mid-flow TCP packet had no
/// usable entry), `established` for the others.
#[inline(always)]
fn flow_kind(established: bool, rebalanced: bool, new: u8, continued: u8) -> (u8, u8) {
    match (established, rebalanced) {
        (true, _) => (continued, TRACE_REASON_NONE),
        (false, true) => (new, TRACE_REASON_NO_CONNTRACK),
        (false, false) => (new, TRACE_REASON_NONE),
    }
}

// What the load balancer reports (`lb.rs`), one call each.

/// A packet to a VIP translated to its backend: a new flow (`rebalanced`
/// when a mid-flow TCP packet had no usable conntrack entry), or one of an
/// `established` flow.
#[inline(always)]
pub fn translated(
    ctx: &TcContext,
    established: bool,
    rebalanced: bool,
    proto: u8,
    sent: TraceTuple,
    now: TraceTuple,
    service_id: u32,
) {
    let (kind, reason) = flow_kind(
        established,
        rebalanced,
        TRACE_KIND_TRANSLATE,
        TRACE_KIND_TRANSLATE_ESTABLISHED,
    );
    emit(ctx, kind, reason, proto, sent, now, service_id);
}

/// A backend's reply given the VIP back as its source.
#[inline(always)]
pub fn reversed(ctx: &TcContext, proto: u8, sent: TraceTuple, now: TraceTuple) {
    emit(
        ctx,
        TRACE_KIND_REVERSE,
        TRACE_REASON_NONE,
        proto,
        sent,
        now,
        0,
    );
}

/// A new flow to a VIP without backend, refused (RST or ICMP unreachable).
#[inline(always)]
pub fn refused(ctx: &TcContext, proto: u8, sent: TraceTuple, service_id: u32) {
    let (kind, reason) = (TRACE_KIND_DROP, TRACE_REASON_NO_BACKEND);
    emit(ctx, kind, reason, proto, sent, sent, service_id);
}

/// An ARP request for a VIP (`asked`: asker -> VIP), answered.
#[inline(always)]
pub fn arp_reply(ctx: &TcContext, asked: TraceTuple) {
    emit(
        ctx,
        TRACE_KIND_ARP_REPLY,
        TRACE_REASON_NONE,
        0,
        asked,
        asked,
        0,
    );
}

/// A packet to VIP `daddr` that is not TCP/UDP, or a fragment: passed on.
#[inline(always)]
pub fn unsupported(ctx: &TcContext, daddr: u32) {
    let to_vip = tuple(0, daddr, 0, 0);
    emit(
        ctx,
        TRACE_KIND_PASS,
        TRACE_REASON_UNSUPPORTED,
        0,
        to_vip,
        to_vip,
        0,
    );
}

/// A packet whose headers could not be read: passed on.
#[inline(always)]
pub fn malformed(ctx: &TcContext) {
    let none = TraceTuple::default();
    emit(
        ctx,
        TRACE_KIND_PASS,
        TRACE_REASON_MALFORMED,
        0,
        none,
        none,
        0,
    );
}

// What the published-port programs report (`ingress.rs`), one call each;
// every event carries TRACE_FLAG_PUBLISHED.

/// A packet to a published port translated to its task (`remote`: on
/// another node): a new flow (`rebalanced` when a mid-flow TCP packet had
/// no usable conntrack entry), or one of an `established` flow.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn forwarded(
    ctx: &TcContext,
    established: bool,
    rebalanced: bool,
    remote: bool,
    proto: u8,
    sent: TraceTuple,
    now: TraceTuple,
    service_id: u32,
) {
    let (kind, reason) = flow_kind(
        established,
        rebalanced,
        TRACE_KIND_FORWARD,
        TRACE_KIND_FORWARD_ESTABLISHED,
    );
    let flags = if remote {
        TRACE_FLAG_PUBLISHED | TRACE_FLAG_REMOTE_TASK
    } else {
        TRACE_FLAG_PUBLISHED
    };
    let what = What {
        kind,
        reason,
        flags,
    };
    emit_flagged(ctx, what, proto, sent, now, service_id);
}

/// A task's reply given the node address and published port back as its
/// source.
#[inline(always)]
pub fn published_reversed(ctx: &TcContext, proto: u8, sent: TraceTuple, now: TraceTuple) {
    let what = What {
        kind: TRACE_KIND_REVERSE,
        reason: TRACE_REASON_NONE,
        flags: TRACE_FLAG_PUBLISHED,
    };
    emit_flagged(ctx, what, proto, sent, now, 0);
}

/// A new flow to a published port without an active task: passed on
/// untouched, so the node answers it as a closed port.
#[inline(always)]
pub fn published_closed(ctx: &TcContext, proto: u8, sent: TraceTuple, service_id: u32) {
    let what = What {
        kind: TRACE_KIND_PASS,
        reason: TRACE_REASON_NO_BACKEND,
        flags: TRACE_FLAG_PUBLISHED,
    };
    emit_flagged(ctx, what, proto, sent, sent, service_id);
}

/// The tuple of a packet, from fields already read.
#[inline(always)]
pub fn tuple(saddr: u32, daddr: u32, sport: u16, dport: u16) -> TraceTuple {
    TraceTuple {
        saddr,
        daddr,
        sport,
        dport,
    }
}
