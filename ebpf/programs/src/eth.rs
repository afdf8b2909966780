//! Ethernet (Cilium's `lib/eth.h`): the header's length and the EtherTypes
//! the programs read, direct reads of the headers from the frame's start
//! (`bytes_at`), and the MAC the agent gives an IPv4 address (`mac_of`).
//! Here, not in one program, because the VIP load balancer (`lb.rs`), the
//! published ports (`ingress.rs`) and their VXLAN path (`vxlan.rs`) all
//! read frames the same way.

use aya_ebpf::programs::TcContext;

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_ARP: u16 = 0x0806;

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

/// The MAC the agent gives the interface with IPv4 address `addr`
/// (network byte order): 02:42 and the address, as Docker does.
#[inline(always)]
pub(crate) fn mac_of(addr: u32) -> [u8; 6] {
    let a = addr.to_ne_bytes();
    [0x02, 0x42, a[0], a[1], a[2], a[3]]
}
