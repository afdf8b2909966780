//! VXLAN headers written by `ingress_in` itself, as the sandboxes' vxlan
//! devices would write them (see the agent's `dataplane::sandbox`): UDP to
//! port 4789 with no checksum, the source port spread by the flow's hash
//! over the kernel's default range, TTL 64, the network's VNI. The outer
//! header leaves DF unset, as the vxlan device does: a packet is only
//! encapsulated here when it fits this node's underlay MTU (and the
//! network's), and a smaller MTU further along the path fragments it (the
//! task node's vxlan device reassembles) rather than dropping it. Anything
//! else is left to the sandbox path, which handles it as before.
//!
//! The other way, `inner_reply` reads the inner 5-tuple of a VXLAN packet
//! the node received and `decapsulate` strips the outer headers, for
//! `ingress_in` to send a task's reply to the client without the node's
//! UDP socket, vxlan device and sandbox.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_ADJ_ROOM_ENCAP_L2_MASK,
        BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::generated::{bpf_check_mtu, bpf_get_prandom_u32},
    programs::TcContext,
};
use netagent_common::{IngressRemote, LbRevKey, VXLAN_OVERHEAD, VXLAN_PORT};

use crate::{
    conntrack::plain_reply_key,
    eth::{bytes_at, ETH_HLEN, ETH_P_IP},
    ipv4::{ipv4_header, IPPROTO_TCP, IPPROTO_UDP},
};

const OUTER_IP: usize = 20;
const UDP_HDR: usize = 8;
/// The kernel's default local port range, which vxlan draws source ports
/// from (so that the underlay's ECMP hashing spreads flows).
const SPORT_MIN: u64 = 32768;
const SPORT_RANGE: u64 = 61000 - 32768;
/// VXLAN's "I" flag: the VNI is valid.
const VXLAN_FLAG_VNI: u8 = 0x08;

/// What `encapsulate` did.
pub(crate) enum Encap {
    /// The packet is now VXLAN to `to.vtep`, ready to be sent.
    Done,
    /// The packet is untouched: it is not one this path takes (too large,
    /// a GSO aggregate, or the kernel refused the room).
    Declined,
    /// Room was made but the headers could not be written: drop it.
    Broken,
}

/// Wraps the (IPv4) packet in `ctx` in VXLAN to the task node `to`, from
/// `outer_src` (this node's underlay address), with `inner_src_mac` as
/// the inner source (what the task's node sends the replies to) and `hash`
/// (the flow's) for the UDP source port.
#[inline(always)]
pub(crate) fn encapsulate(
    ctx: &TcContext,
    outer_src: u32,
    to: &IngressRemote,
    inner_src_mac: [u8; 6],
    hash: u32,
) -> Encap {
    // tc sees the Ethernet header in the length.
    let inner_ip_len = ctx.len().saturating_sub(ETH_HLEN as u32);
    if inner_ip_len + VXLAN_OVERHEAD as u32 > u32::from(u16::MAX) {
        return Encap::Declined;
    }
    // The largest inner packet that leaves: the packet itself, or one
    // segment of a GSO aggregate (a TCP stream over a veth).
    let Some(largest) = largest_segment(ctx, inner_ip_len) else {
        return Encap::Declined;
    };
    if to.mtu != 0 && largest > to.mtu {
        return Encap::Declined;
    }
    // In: the L3 length to check (instead of the skb's); out: the MTU.
    let mut mtu_len = largest;
    // SAFETY: a plain helper call; ifindex 0 is the skb's device (the
    // underlay, which the packet leaves by).
    let fits = unsafe {
        bpf_check_mtu(
            ctx.skb.skb.cast(),
            0,
            &mut mtu_len,
            VXLAN_OVERHEAD as i32,
            0,
        )
    };
    if fits != 0 {
        return Encap::Declined;
    }
    // The ENCAP flags mark the skb as UDP-tunnelled (GSO segments get the
    // outer headers, inner checksums stay offloaded); FIXED_GSO keeps the
    // segments' payload size (checked against the MTU just above) instead
    // of shrinking it by the 50 bytes.
    let flags = u64::from(
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
            | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
            | BPF_F_ADJ_ROOM_ENCAP_L2_ETH
            | BPF_F_ADJ_ROOM_FIXED_GSO,
    ) | ((ETH_HLEN as u64 & u64::from(BPF_ADJ_ROOM_ENCAP_L2_MASK))
        << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);
    if ctx
        .adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        return Encap::Declined;
    }
    // Checked above: it fits in 16 bits.
    let outer_len = (inner_ip_len as usize + VXLAN_OVERHEAD) as u16;
    // An ID per packet: without DF (as the vxlan device sends, see the
    // module doc), a router may fragment it, and the task node must not
    // mix the fragments of two packets. TTL 64, as a vxlan device with
    // `ttl 0` uses.
    // SAFETY: a plain helper call.
    let id = unsafe { bpf_get_prandom_u32() } as u16;
    let ip = ipv4_header(outer_len, id, IPPROTO_UDP, outer_src, to.vtep);

    let mut h = [0u8; VXLAN_OVERHEAD];
    h[..OUTER_IP].copy_from_slice(&ip);
    let sport = (SPORT_MIN + ((u64::from(hash) * SPORT_RANGE) >> 32)) as u16;
    let udp = OUTER_IP;
    h[udp..udp + 2].copy_from_slice(&sport.to_be_bytes());
    h[udp + 2..udp + 4].copy_from_slice(&VXLAN_PORT.to_be_bytes());
    h[udp + 4..udp + 6].copy_from_slice(&(outer_len - OUTER_IP as u16).to_be_bytes());
    // Checksum 0: none (as the vxlan devices send, `udpcsum` off).
    let vx = udp + UDP_HDR;
    h[vx] = VXLAN_FLAG_VNI;
    h[vx + 4..vx + 8].copy_from_slice(&(to.vni << 8).to_be_bytes());
    let eth = vx + 8;
    h[eth..eth + 6].copy_from_slice(&to.mac);
    h[eth + 6..eth + 12].copy_from_slice(&inner_src_mac);
    h[eth + 12..eth + 14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    match ctx.store(ETH_HLEN, &h, 0) {
        Ok(()) => Encap::Done,
        Err(_) => Encap::Broken,
    }
}

/// The IPv4 length of the largest packet `ctx` leaves as: `ip_len` (the
/// whole packet's) unless it is a GSO aggregate, then headers plus one
/// segment's payload. `None` for an aggregate of anything but TCP and UDP.
#[inline(always)]
fn largest_segment(ctx: &TcContext, ip_len: u32) -> Option<u32> {
    // SAFETY: the kernel hands every tc program a valid __sk_buff.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return Some(ip_len);
    }
    let ihl = u32::from(ctx.load::<u8>(ETH_HLEN).ok()? & 0x0f) * 4;
    let l4_len = match ctx.load::<u8>(ETH_HLEN + 9).ok()? {
        IPPROTO_TCP => {
            let doff = ctx.load::<u8>(ETH_HLEN + ihl as usize + 12).ok()?;
            u32::from(doff >> 4) * 4
        }
        IPPROTO_UDP => UDP_HDR as u32,
        _ => return None,
    };
    Some(ihl + l4_len + gso_size)
}

/// Where the inner IPv4 header of a VXLAN packet with an option-less
/// outer IPv4 header starts.
const INNER_IP: usize = ETH_HLEN + VXLAN_OVERHEAD;

/// The inner packet of the VXLAN packet in `ctx` (UDP to port 4789, not a
/// fragment: `conntrack::reply_key` read it so), as a reply key, when it is
/// plain enough to be handled here: the outer IPv4 without options, a VNI,
/// the inner IPv4 without options, TCP or UDP, not a fragment, not a GSO
/// aggregate, all in the linear part. `None` otherwise (the node's vxlan
/// device takes it, as before).
#[inline(always)]
pub(crate) fn inner_reply(ctx: &TcContext) -> Option<LbRevKey> {
    // SAFETY: the kernel hands every tc program a valid __sk_buff.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 {
        return None;
    }
    // One direct read up to the inner ports.
    let h = bytes_at::<{ INNER_IP + 24 }>(ctx, 0)?;
    let vxlan_flags = h[ETH_HLEN + OUTER_IP + UDP_HDR];
    if h[ETH_HLEN] != 0x45
        || vxlan_flags & VXLAN_FLAG_VNI == 0
        || h[INNER_IP - 2..INNER_IP] != ETH_P_IP.to_be_bytes()
    {
        return None;
    }
    plain_reply_key(&h, INNER_IP)
}

/// Strips the outer IPv4, UDP and VXLAN headers and the inner Ethernet
/// header of a packet `inner_reply` accepted: the outer Ethernet header
/// (type IPv4) is left in front of the inner IPv4 packet.
#[inline(always)]
pub(crate) fn decapsulate(ctx: &TcContext) -> Result<(), ()> {
    ctx.adjust_room(
        -(VXLAN_OVERHEAD as i32),
        BPF_ADJ_ROOM_MAC,
        u64::from(BPF_F_ADJ_ROOM_DECAP_L3_IPV4),
    )
    .map_err(|_| ())
}
