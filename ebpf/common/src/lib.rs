//! Types shared between the eBPF programs (`ebpf/programs`) and the agent.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side writes it into
//! maps, the agent reads it back byte for byte.
#![no_std]

/// Packet and byte counts of one interface, one direction pair.
///
/// Stored per CPU in the `IF_COUNTERS` map, keyed by interface index; the
/// agent sums the CPUs when it reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    /// Packets the interface received (tc ingress).
    pub rx_packets: u64,
    /// Bytes the interface received, link-layer headers included.
    pub rx_bytes: u64,
    /// Packets the interface sent (tc egress).
    pub tx_packets: u64,
    /// Bytes the interface sent, link-layer headers included.
    pub tx_bytes: u64,
}

impl IfCounters {
    /// Adds another CPU's share to this one.
    pub fn accumulate(&mut self, other: &IfCounters) {
        self.rx_packets = self.rx_packets.wrapping_add(other.rx_packets);
        self.rx_bytes = self.rx_bytes.wrapping_add(other.rx_bytes);
        self.tx_packets = self.tx_packets.wrapping_add(other.tx_packets);
        self.tx_bytes = self.tx_bytes.wrapping_add(other.tx_bytes);
    }
}

#[cfg(feature = "user")]
// SAFETY: IfCounters is #[repr(C)], has no padding and every bit pattern is valid.
unsafe impl aya::Pod for IfCounters {}

/// Name of the per-interface counter map, as pinned under the agent's bpffs dir.
pub const IF_COUNTERS_MAP: &str = "IF_COUNTERS";
/// Name of the tc program that counts received packets.
pub const COUNT_INGRESS_PROG: &str = "count_ingress";
/// Name of the tc program that counts sent packets.
pub const COUNT_EGRESS_PROG: &str = "count_egress";
/// How many interfaces the counter map holds.
pub const IF_COUNTERS_CAPACITY: u32 = 4096;
