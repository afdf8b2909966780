//! 127.0.0.11:53 in one container namespace, without NAT or conntrack.
//!
//! `dns_steer` (sk_lookup, attached to the namespace) hands UDP and TCP
//! packets for 127.0.0.11:53 to the resolver's sockets, which are bound to
//! 127.0.0.11:P (P free, so a process of the container can still bind port
//! 53 itself): the agent puts them in DNS_SOCKETS (UDP at 0, TCP at 1). An
//! empty slot (the agent is gone) leaves the lookup to the kernel.
//!
//! TCP needs nothing more: the accepted connection's local address is the
//! one the client asked for, 127.0.0.11:53. A UDP socket sends from its
//! own port, so `dns_reply_port` (tc egress on the namespace's `lo`) gives
//! the resolver's UDP replies, from 127.0.0.11:P, the source port 53 the
//! client expects.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, TC_ACT_UNSPEC},
    macros::{classifier, map, sk_lookup},
    maps::SockMap,
    programs::{SkLookupContext, TcContext},
};

/// SK_PASS: let the lookup go on (with the socket picked, if any).
const SK_PASS: u32 = 1;
const AF_INET: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// 127.0.0.11 as the kernel stores it (network order).
const RESOLVER_ADDR: [u8; 4] = [127, 0, 0, 11];
const DNS_PORT: u16 = 53;
/// The slot of each protocol's socket in DNS_SOCKETS.
const UDP_SLOT: u32 = 0;
const TCP_SLOT: u32 = 1;
/// BPF_SK_LOOKUP_F_REPLACE: while two instances are attached (the agent
/// reopening a resolver), the later one's pick wins.
const SK_LOOKUP_F_REPLACE: u64 = 1;

/// The resolver's port P, set by the agent when it loads this instance.
#[unsafe(no_mangle)]
static RESOLVER_PORT: u16 = 0;

#[map]
static DNS_SOCKETS: SockMap = SockMap::with_max_entries(2, 0);

#[sk_lookup]
pub fn dns_steer(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel hands a valid context for the program's run.
    let lookup = unsafe { &*ctx.lookup };
    if lookup.family != AF_INET
        || lookup.local_port != u32::from(DNS_PORT)
        || lookup.local_ip4 != u32::from_ne_bytes(RESOLVER_ADDR)
    {
        return SK_PASS;
    }
    let slot = match lookup.protocol {
        IPPROTO_UDP => UDP_SLOT,
        IPPROTO_TCP => TCP_SLOT,
        _ => return SK_PASS,
    };
    // No socket in the slot: an earlier pick, or the kernel's own lookup,
    // decides.
    let _ = DNS_SOCKETS.redirect_sk_lookup(&ctx, slot, SK_LOOKUP_F_REPLACE);
    SK_PASS
}

#[classifier]
pub fn dns_reply_port(ctx: TcContext) -> i32 {
    // Whatever cannot be read is not a resolver reply.
    let _ = reply_port(&ctx);
    // TCX_NEXT: the programs attached after this one still run (another
    // instance's, while a resolver is reopened, rewrites its own port).
    TC_ACT_UNSPEC
}

/// Rewrites the source port of UDP from 127.0.0.11:P to 53.
#[inline(always)]
fn reply_port(ctx: &TcContext) -> Result<(), ()> {
    // SAFETY: a plain read of a load-time constant.
    let port = unsafe { core::ptr::read_volatile(&RESOLVER_PORT) };
    let proto: u16 = ctx.load(12).map_err(|_| ())?;
    if u16::from_be(proto) != ETH_P_IP {
        return Ok(());
    }
    // Version/IHL, then protocol, then the source address.
    let version_ihl: u8 = ctx.load(ETH_HLEN).map_err(|_| ())?;
    let ip_proto: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| ())?;
    let saddr: [u8; 4] = ctx.load(ETH_HLEN + 12).map_err(|_| ())?;
    if u32::from(ip_proto) != IPPROTO_UDP || saddr != RESOLVER_ADDR {
        return Ok(());
    }
    // Only a first fragment holds the UDP header.
    let frag: u16 = ctx.load(ETH_HLEN + 6).map_err(|_| ())?;
    if u16::from_be(frag) & 0x1fff != 0 {
        return Ok(());
    }
    let l4 = ETH_HLEN + usize::from(version_ihl & 0x0f) * 4;
    let sport: u16 = ctx.load(l4).map_err(|_| ())?;
    if u16::from_be(sport) != port {
        return Ok(());
    }
    let new = DNS_PORT.to_be();
    // The UDP checksum (offset 6) covers the port; 0 means "none" and stays.
    ctx.l4_csum_replace(
        l4 + 6,
        u64::from(sport),
        u64::from(new),
        u64::from(BPF_F_MARK_MANGLED_0) | 2,
    )
    .map_err(|_| ())?;
    ctx.store(l4, &new, 0).map_err(|_| ())
}
