//! Finding interfaces of the agent's own namespace by address or name.

// The kernel boundary: if_indextoname on a buffer this module owns.
#![allow(unsafe_code)]

use std::net::IpAddr;

/// The name of the interface that holds `addr`, if any.
pub fn interface_with_addr(addr: IpAddr) -> Option<String> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs
        .filter(|ifaddr| {
            ifaddr.address.is_some_and(|sockaddr| {
                let ip = if let Some(v4) = sockaddr.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    sockaddr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                };
                ip == Some(addr)
            })
        })
        .map(|ifaddr| ifaddr.interface_name)
        .next()
}

/// The index of interface `name`, or `None` when it does not exist.
pub fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// The name of interface `index`, or `None` when it does not exist.
pub fn ifname(index: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes, as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if ptr.is_null() {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}
