//! CONTRACT STUB (issue 4): the resolver's sockets inside a container's
//! namespace, and the redirect from 127.0.0.11:53 to them (so a process in
//! the container can still bind port 53 itself, as with Docker).

use std::path::Path;

use super::overlay::OverlayError;

/// Opens, inside `container_netns`, a UDP socket and a TCP listener on
/// 127.0.0.11 at one free port P (the same for both; non-blocking), and
/// installs the redirect 127.0.0.11:53 → 127.0.0.11:P for UDP and TCP in the
/// container's nftables (one table owned by the agent). Replaces an existing
/// redirect (a restarted agent gets a new port).
pub async fn open_resolver_sockets(
    _container_netns: &Path,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), OverlayError> {
    Err(OverlayError::Config("dns redirect: not implemented".into()))
}

/// Removes the redirect table from `container_netns`; absent is no error.
pub async fn remove_redirect(_container_netns: &Path) -> Result<(), OverlayError> {
    Ok(())
}
