//! The lab's naming and address plan, in one place.

use std::net::Ipv4Addr;

/// Where every lab records what it made (one directory per lab prefix).
pub const LAB_STATE_ROOT: &str = "/run/netlab";
/// Every lab prefix starts with this, so a sweep never touches anything else.
pub const PREFIX_MARK: &str = "nl";
/// Root of the bpffs on this machine; each lab pins under `<root>/<prefix>`.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// `/etc/netns/<netns>/resolv.conf` is what `ip netns exec` shows as resolv.conf.
pub const ETC_NETNS: &str = "/etc/netns";

/// The underlay: 198.18.0.0/24, inside the RFC 2544 benchmark range.
pub const UNDERLAY_PREFIX_LEN: u8 = 24;
pub const UPSTREAM_DNS_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const EXTERNAL_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);

/// Address of node `index` (1-based): 198.18.0.11, .12, ...
pub fn node_addr(index: usize) -> Ipv4Addr {
    let host = 10 + index;
    assert!(
        (1..=150).contains(&index),
        "a lab holds at most 150 nodes (asked for node {index})"
    );
    Ipv4Addr::new(198, 18, 0, host as u8)
}

/// A fresh prefix: `nl` + 6 hex digits from the pid and the clock. Short,
/// because interface names derived from it must fit in 15 bytes.
pub fn fresh_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = (std::process::id() as u64) << 20 ^ u64::from(nanos) ^ counter();
    format!("{PREFIX_MARK}{:06x}", seed & 0xff_ffff)
}

fn counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(0x9e37_79b9, Ordering::Relaxed)
}

/// Whether `name` (a namespace, pin directory, ...) belongs to lab `prefix`.
pub fn belongs_to(name: &str, prefix: &str) -> bool {
    name == prefix || name.starts_with(&format!("{prefix}-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_and_distinct() {
        let a = fresh_prefix();
        let b = fresh_prefix();
        assert_ne!(a, b);
        assert_eq!(a.len(), 8);
        assert!(a.starts_with(PREFIX_MARK));
        // "<prefix>-c123" must fit an interface name too.
        assert!(format!("{a}-c123").len() <= 15);
    }

    #[test]
    fn membership_is_by_whole_prefix() {
        assert!(belongs_to("nl00aa11-n1", "nl00aa11"));
        assert!(!belongs_to("nl00aa111-n1", "nl00aa11"));
        assert!(!belongs_to("other", "nl00aa11"));
    }

    #[test]
    fn node_addresses_follow_the_plan() {
        assert_eq!(node_addr(1), Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(node_addr(20), Ipv4Addr::new(198, 18, 0, 30));
    }
}
