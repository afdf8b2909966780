//! The store's key schema: every key the managers write, in one place.
//! Guard keys (`guard/…`) hold nothing: their revision is what racing
//! transactions compare (see `txn`).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub const INFO: &str = "cluster/info";
pub const CA: &str = "cluster/ca";
pub const TOKENS: &str = "cluster/tokens";
pub const NODES: &str = "nodes/";
pub const MANAGERS: &str = "managers/";
pub const NETWORKS: &str = "networks/";
pub const BLOCKS: &str = "blocks/";
pub const GUARD_NETWORKS: &str = "guard/networks";
pub const SERVICES: &str = "services/";
pub const GUARD_SERVICES: &str = "guard/services";

pub fn node(id: &str) -> String {
    format!("{NODES}{id}")
}
pub fn cert(fingerprint: &str) -> String {
    format!("certs/{fingerprint}")
}
pub fn manager(id: &str) -> String {
    format!("{MANAGERS}{id}")
}
pub fn network(id: &str) -> String {
    format!("{NETWORKS}{id}")
}
pub fn blocks(network: &str) -> String {
    format!("{BLOCKS}{network}/")
}
pub fn block(network: &str, block: Ipv4Net) -> String {
    format!("{BLOCKS}{network}/{}", block.network())
}
pub fn reservations(network: &str) -> String {
    format!("reservations/{network}/")
}
pub fn reservation(network: &str, ip: Ipv4Addr) -> String {
    format!("reservations/{network}/{ip}")
}
pub fn guard_alloc(network: &str) -> String {
    format!("guard/alloc/{network}")
}
pub fn service(id: &str) -> String {
    format!("{SERVICES}{id}")
}
pub fn vips(network: &str) -> String {
    format!("vips/{network}/")
}
pub fn vip(network: &str, ip: Ipv4Addr) -> String {
    format!("vips/{network}/{ip}")
}
