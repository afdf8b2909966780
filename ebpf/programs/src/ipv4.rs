//! IPv4 and the TCP/UDP headers on it (Cilium's `lib/ipv4.h`), as far as
//! the programs read and write them: field offsets behind the Ethernet
//! header, protocol numbers and TCP flags, the headers of a flow read into
//! a `Flow` (`parse_flow`), a header built whole (`ipv4_header`), and an
//! address rewritten with both checksums fixed (`rewrite_addr`). Shared by
//! the VIP load balancer (`lb.rs`), the published ports (`ingress.rs`) and
//! their VXLAN path (`vxlan.rs`).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

use crate::{
    csum::{add_words, fold},
    eth::{bytes_at, ETH_HLEN, ETH_P_IP},
};

pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
/// IPv4 `frag_off`'s MF flag and fragment offset: any bit set, a fragment.
pub(crate) const IP_FRAG_MASK: u16 = 0x3fff;
const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub(crate) const IP_SRC_OFF: usize = ETH_HLEN + 12;
pub(crate) const IP_DST_OFF: usize = ETH_HLEN + 16;
pub(crate) const TCP_FLAG_FIN: u8 = 0x01;
pub(crate) const TCP_FLAG_SYN: u8 = 0x02;
pub(crate) const TCP_FLAG_RST: u8 = 0x04;
pub(crate) const TCP_FLAG_ACK: u8 = 0x10;

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
    pub(crate) ihl: usize,
}

/// The Ethernet type and, for IPv4, the destination address, read in one
/// direct access: all the miss path (not a VIP, not a reply) needs.
#[inline(always)]
pub(crate) fn eth_proto_and_daddr(ctx: &TcContext) -> Result<(u16, u32), ()> {
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
