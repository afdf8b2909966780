//! The resolver's sockets inside a container's namespace, and the redirect
//! from 127.0.0.11:53 to them, so that a process in the container can still
//! bind port 53 itself (as with Docker).
//!
//! The resolver listens on 127.0.0.11:P (UDP and TCP, one free port P); one
//! nf_tables table owned by the agent, in the container's namespace, sends
//! the container's queries there:
//!
//! ```text
//! table ip netagent_dns {
//!   chain output { type nat hook output priority dstnat; policy accept;
//!     ip daddr 127.0.0.11 udp dport 53 counter dnat to 127.0.0.11:P comment "netagent dns udp"
//!     ip daddr 127.0.0.11 tcp dport 53 counter dnat to 127.0.0.11:P comment "netagent dns tcp"
//!   }
//! }
//! ```
//!
//! Replies need no rule: conntrack un-NATs them (source back to :53).
//! Opening again replaces the table in one transaction (a restarted agent
//! gets a new port); nothing is forked or executed, and the namespace is
//! entered on dedicated threads only (`netns::run_in`).

use std::{
    io,
    net::{Ipv4Addr, TcpListener, UdpSocket},
    path::Path,
};

use super::{
    netlink::{self, Netlink},
    netns::{self, NetnsError},
    nftables::{Chain, Change, CmpOp, Expr, Hook, MetaKey, Nft, FAMILY_IP},
    overlay::{OverlayError, HINT_GENERIC},
};

/// Where containers send their queries.
pub const RESOLVER_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// The agent's table in every container namespace.
pub const TABLE: &str = "netagent_dns";
const DNS_PORT: u16 = 53;
const OUTPUT: Chain = Chain {
    name: "output",
    kind: "nat",
    hook: Hook::Output,
    // NF_IP_PRI_NAT_DST ("dstnat")
    priority: -100,
};
/// How many ports to try when the UDP socket's port is taken for TCP.
const BIND_ATTEMPTS: usize = 8;
const HINT_NFT: &str = "check that the agent runs as root and the kernel has nf_tables NAT (nf_tables, nft_nat), then see `nft list table ip netagent_dns` in the container's namespace";
const HINT_SOCKET: &str =
    "check that the agent runs as root and that lo is up in the container's namespace";

/// IPPROTO_UDP, IPPROTO_TCP.
#[derive(Clone, Copy, Debug)]
enum Proto {
    Udp = 17,
    Tcp = 6,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// `ip daddr 127.0.0.11 <proto> dport 53 counter dnat to 127.0.0.11:<port>`.
fn redirect_exprs(proto: Proto, port: u16) -> Vec<Expr> {
    let mut exprs = vec![
        // IPv4 destination address: network header bytes 16..20.
        Expr::network_header(16, 4),
        Expr::cmp(CmpOp::Eq, &RESOLVER_ADDR.octets()),
        Expr::meta(MetaKey::L4Proto),
        Expr::cmp(CmpOp::Eq, &[proto as u8]),
        // Destination port: transport header bytes 2..4 (UDP and TCP).
        Expr::transport_header(2, 2),
        Expr::cmp(CmpOp::Eq, &DNS_PORT.to_be_bytes()),
        Expr::counter(),
    ];
    exprs.extend(Expr::dnat(RESOLVER_ADDR, port));
    exprs
}

/// The transaction that installs the redirect to `port`, replacing the
/// table whether or not it exists (add, delete, add: the `nft -f` idiom).
fn plan_install(port: u16) -> Vec<Change> {
    let mut changes = vec![
        Change::AddTable,
        Change::DeleteTable,
        Change::AddTable,
        Change::AddChain(OUTPUT),
    ];
    changes.extend([Proto::Udp, Proto::Tcp].map(|proto| Change::AddRule {
        chain: OUTPUT.name,
        exprs: redirect_exprs(proto, port),
        comment: format!("netagent dns {}", proto.name()),
    }));
    changes
}

/// Opens, inside `container_netns`, a UDP socket and a TCP listener on
/// 127.0.0.11 at one free port P (the same for both; non-blocking), and
/// installs the redirect 127.0.0.11:53 → 127.0.0.11:P for UDP and TCP in the
/// container's nftables (one table owned by the agent). Replaces an existing
/// redirect (a restarted agent gets a new port). Brings `lo` up if needed.
pub async fn open_resolver_sockets(
    container_netns: &Path,
) -> Result<(UdpSocket, TcpListener), OverlayError> {
    // A bad path fails here, before anything is made.
    netns::open(container_netns).map_err(OverlayError::container_netns)?;
    let label = container_netns.display().to_string();
    lo_up(container_netns, &label).await?;
    let (udp, tcp, port) = netns::run_in(Some(container_netns), {
        let label = label.clone();
        move || {
            Ok(bind_pair(&label).and_then(|(udp, tcp, port)| {
                install(&label, port)?;
                Ok((udp, tcp, port))
            }))
        }
    })
    .await
    .map_err(OverlayError::container_netns)??;
    tracing::info!(netns = %label, port, "dns redirect installed (127.0.0.11:53 to the resolver port)");
    Ok((udp, tcp))
}

/// Brings `lo` up: 127.0.0.11 is bound there.
async fn lo_up(container_netns: &Path, label: &str) -> Result<(), OverlayError> {
    let at = |what: &str| OverlayError::netlink(what.to_owned(), label.to_owned(), HINT_GENERIC);
    let container = Netlink::connect(Some(container_netns))
        .await
        .map_err(at("connecting"))?;
    let lo = container
        .link("lo")
        .await
        .map_err(at("looking up lo"))?
        .ok_or_else(|| at("looking up lo")(netlink::NetlinkError::Protocol("no link lo".into())))?;
    if !netlink::link_is_up(&lo) {
        container
            .up(lo.header.index)
            .await
            .map_err(at("bringing lo up"))?;
    }
    Ok(())
}

/// Binds UDP to 127.0.0.11:0, then TCP to the port UDP got; tries another
/// port when that one is taken for TCP. Runs inside the namespace.
fn bind_pair(label: &str) -> Result<(UdpSocket, TcpListener, u16), OverlayError> {
    let fail = |what: String| {
        let label = label.to_owned();
        move |source: io::Error| OverlayError::Socket {
            what,
            netns: label,
            source,
            hint: HINT_SOCKET,
        }
    };
    // Ports found taken stay held until the end, so none is drawn twice.
    let mut taken = Vec::new();
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind((RESOLVER_ADDR, 0))
            .map_err(fail(format!("binding a UDP socket to {RESOLVER_ADDR}")))?;
        let port = udp
            .local_addr()
            .map_err(fail("reading the UDP socket's port".into()))?
            .port();
        match TcpListener::bind((RESOLVER_ADDR, port)) {
            Ok(tcp) => {
                udp.set_nonblocking(true)
                    .map_err(fail("making the UDP socket non-blocking".into()))?;
                tcp.set_nonblocking(true)
                    .map_err(fail("making the TCP listener non-blocking".into()))?;
                return Ok((udp, tcp, port));
            }
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
                tracing::debug!(netns = %label, port, "port taken for TCP, trying another");
                taken.push(udp);
            }
            Err(error) => {
                return Err(fail(format!(
                    "binding a TCP listener to {RESOLVER_ADDR}:{port}"
                ))(error))
            }
        }
    }
    Err(fail(format!(
        "finding a port free for both UDP and TCP on {RESOLVER_ADDR} ({BIND_ATTEMPTS} tries)"
    ))(io::ErrorKind::AddrInUse.into()))
}

/// Replaces the table with the redirect to `port`. Runs inside the namespace.
fn install(label: &str, port: u16) -> Result<(), OverlayError> {
    Nft::open(FAMILY_IP, TABLE)
        .and_then(|mut nft| nft.commit(&plan_install(port)))
        .map_err(OverlayError::nftables(
            format!("installing the dns redirect to {RESOLVER_ADDR}:{port} (table ip {TABLE})"),
            label,
            HINT_NFT,
        ))
}

/// Removes the redirect table from `container_netns`; absent is no error,
/// and neither is a namespace that is gone (its table went with it).
pub async fn remove_redirect(container_netns: &Path) -> Result<(), OverlayError> {
    let label = container_netns.display().to_string();
    let deleted = netns::run_in(Some(container_netns), || {
        Ok(Nft::open(FAMILY_IP, TABLE).and_then(|mut nft| nft.commit(&[Change::DeleteTable])))
    })
    .await;
    match deleted {
        Ok(Ok(())) => {
            tracing::info!(netns = %label, "dns redirect removed");
            Ok(())
        }
        Ok(Err(error)) if error.is(libc::ENOENT) => Ok(()),
        Ok(Err(error)) => Err(OverlayError::nftables(
            format!("deleting table ip {TABLE}"),
            label,
            HINT_NFT,
        )(error)),
        Err(NetnsError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            tracing::debug!(netns = %label, "namespace gone: no dns redirect to remove");
            Ok(())
        }
        Err(error) => Err(OverlayError::container_netns(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_replaces_the_table_in_one_transaction() {
        let changes = plan_install(40000);
        assert!(matches!(
            changes.as_slice(),
            [
                Change::AddTable,
                Change::DeleteTable,
                Change::AddTable,
                Change::AddChain(Chain {
                    name: "output",
                    hook: Hook::Output,
                    priority: -100,
                    ..
                }),
                Change::AddRule { .. },
                Change::AddRule { .. },
            ]
        ));
    }

    #[test]
    fn rules_match_the_protocol_before_the_port() {
        let udp = redirect_exprs(Proto::Udp, 40000);
        let tcp = redirect_exprs(Proto::Tcp, 40000);
        assert_eq!(udp.len(), 10);
        assert_eq!(udp[3], Expr::cmp(CmpOp::Eq, &[17]));
        assert_eq!(tcp[3], Expr::cmp(CmpOp::Eq, &[6]));
        assert_eq!(udp[5], Expr::cmp(CmpOp::Eq, &[0, 53]));
        assert_eq!(&udp[7..], &Expr::dnat(RESOLVER_ADDR, 40000));
    }
}
