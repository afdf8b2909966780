//! Per-interface packet and byte counters, attached with tc to the interfaces
//! the agent manages. They never change a packet: every verdict is
//! "continue", so a failing map update costs a count, never traffic.

use aya_ebpf::{
    macros::{classifier, map},
    maps::PerCpuHashMap,
    programs::TcContext,
};
use netagent_common::{IfCounters, IF_COUNTERS_CAPACITY};

/// Pinned by name so that counts survive an agent restart.
#[map]
static IF_COUNTERS: PerCpuHashMap<u32, IfCounters> = PerCpuHashMap::pinned(IF_COUNTERS_CAPACITY, 0);

/// Hands the packet on to the next tc filter (or the default "pass" when
/// there is none), so that programs attached after the counters still run.
const TC_ACT_UNSPEC: i32 = -1;

#[derive(Clone, Copy)]
enum Direction {
    Received,
    Sent,
}

#[classifier]
pub fn count_ingress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Received);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn count_egress(ctx: TcContext) -> i32 {
    count(&ctx, Direction::Sent);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count(ctx: &TcContext, direction: Direction) {
    // SAFETY: the kernel hands every tc program a valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let bytes = u64::from(ctx.len());
    if let Some(counters) = IF_COUNTERS.get_ptr_mut(ifindex) {
        // SAFETY: per-CPU value, so no other CPU writes it concurrently.
        let counters = unsafe { &mut *counters };
        match direction {
            Direction::Received => {
                counters.rx_packets += 1;
                counters.rx_bytes += bytes;
            }
            Direction::Sent => {
                counters.tx_packets += 1;
                counters.tx_bytes += bytes;
            }
        }
        return;
    }
    let mut first = IfCounters::default();
    match direction {
        Direction::Received => {
            first.rx_packets = 1;
            first.rx_bytes = bytes;
        }
        Direction::Sent => {
            first.tx_packets = 1;
            first.tx_bytes = bytes;
        }
    }
    // A full map only loses this count; the packet goes on either way.
    let _ = IF_COUNTERS.insert(ifindex, first, 0);
}
