//! Checksum arithmetic (Cilium's `lib/csum.h`): the ones' complement sum
//! of some bytes and its fold into the Internet checksum, for the headers
//! the programs build whole (`ipv4::ipv4_header`, the ICMP error of
//! `lb.rs`). A field rewritten in a packet has its checksums fixed by the
//! kernel's `l3_csum_replace` / `l4_csum_replace` instead.

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
