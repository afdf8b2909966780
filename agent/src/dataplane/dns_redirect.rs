//! The resolver's sockets inside a container's namespace, and the steering
//! of 127.0.0.11:53 to them, so that a process in the container can still
//! bind port 53 itself (as with Docker).
//!
//! The resolver listens on 127.0.0.11:P (UDP and TCP, one free port P). Two
//! eBPF programs of their own object (`ebpf/programs/src/dns_steer.rs`),
//! loaded once per container namespace, send the container's queries there
//! without NAT, so without a conntrack entry per query:
//!
//! - `dns_steer` (sk_lookup, attached to the namespace) hands packets for
//!   127.0.0.11:53 to the sockets the agent put in its socket map;
//! - `dns_reply_port` (tcx egress on the namespace's `lo`) gives the UDP
//!   replies, sent from 127.0.0.11:P, the source port 53 (TCP needs nothing:
//!   an accepted connection's local address is the one the client asked for).
//!
//! Both links are owned by the [`Steering`] handle, not pinned: they go when
//! it is dropped, and with the agent's process, like the sockets they lead
//! to, so nothing is left behind and a restarted agent starts afresh.
//! Agents before this one used an nf_tables DNAT (table ip netagent_dns);
//! opening removes such a table. Nothing is forked or executed, and the
//! namespace is entered on dedicated threads only (`netns::run_in`).

use std::{
    io,
    net::{Ipv4Addr, TcpListener, UdpSocket},
    os::fd::OwnedFd,
    path::Path,
};

use aya::{
    maps::SockMap,
    programs::{tc::TcAttachOptions, LinkOrder, SchedClassifier, SkLookup, TcAttachType},
    Ebpf, EbpfLoader,
};

use super::{
    error::{OverlayError, HINT_GENERIC},
    netlink::{self, Netlink},
    netns,
    nftables::{Change, Nft, FAMILY_IP},
};

/// The steering object compiled by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netagent-dns-ebpf"));

/// Where containers send their queries.
pub const RESOLVER_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// The nf_tables table of earlier agents (a DNAT), removed on sight.
pub const LEGACY_TABLE: &str = "netagent_dns";
pub const STEER_PROGRAM: &str = "dns_steer";
pub const REPLY_PROGRAM: &str = "dns_reply_port";
const SOCKETS_MAP: &str = "DNS_SOCKETS";
const PORT_GLOBAL: &str = "RESOLVER_PORT";
/// The slots of DNS_SOCKETS (as in `dns_steer.rs`).
const UDP_SLOT: u32 = 0;
const TCP_SLOT: u32 = 1;
/// How many ports to try when the UDP socket's port is taken for TCP.
const BIND_ATTEMPTS: usize = 8;
const HINT_BPF: &str = "check that the agent runs as root and the kernel has sk_lookup and tcx (Linux 6.6 or later), then see `bpftool link` and `bpftool net` in the container's namespace";
const HINT_NFT: &str = "check that the agent runs as root, then see `nft list table ip netagent_dns` in the container's namespace";
const HINT_SOCKET: &str =
    "check that the agent runs as root and that lo is up in the container's namespace";

/// A container's resolver sockets and the steering that leads to them.
pub struct ResolverSockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
    pub steering: Steering,
}

/// The steering programs of one container namespace, attached for as long
/// as this lives: dropping it detaches them (and 127.0.0.11:53 then goes
/// unanswered, as it does with no resolver).
pub struct Steering {
    /// Owns the programs, their links and the socket map.
    _ebpf: Ebpf,
    program_ids: ProgramIds,
}

/// The kernel's ids of one instance's programs, as `bpftool prog` and
/// `bpftool link` show them (several namespaces' instances share names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramIds {
    pub steer: u32,
    pub reply: u32,
}

impl Steering {
    pub fn program_ids(&self) -> ProgramIds {
        self.program_ids
    }
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("program_ids", &self.program_ids)
            .finish_non_exhaustive()
    }
}

/// Opens, inside `container_netns`, a UDP socket and a TCP listener on
/// 127.0.0.11 at one free port P (the same for both; non-blocking), and
/// steers 127.0.0.11:53 (UDP and TCP) to them. Opening again steers to the
/// new sockets once the old [`Steering`] is dropped (the newest link runs
/// last and its pick wins meanwhile). Brings `lo` up if needed.
pub async fn open_resolver_sockets(
    container_netns: &Path,
) -> Result<ResolverSockets, OverlayError> {
    // A bad path fails here, before anything is made.
    let netns_fd = netns::open(container_netns).map_err(OverlayError::container_netns)?;
    let label = container_netns.display().to_string();
    lo_up(container_netns, &label).await?;
    let (sockets, port) = netns::run_in(Some(container_netns), {
        let label = label.clone();
        move || {
            Ok(remove_legacy_table(&label)
                .and_then(|()| bind_pair(&label))
                .and_then(|(udp, tcp, port)| {
                    let steering = Steering::attach(&label, &netns_fd, &udp, &tcp, port)?;
                    Ok((ResolverSockets { udp, tcp, steering }, port))
                }))
        }
    })
    .await
    .map_err(OverlayError::container_netns)??;
    let ids = sockets.steering.program_ids;
    tracing::info!(
        netns = %label,
        port,
        steer_prog_id = ids.steer,
        reply_prog_id = ids.reply,
        "dns steering attached (127.0.0.11:53 to the resolver port)"
    );
    Ok(sockets)
}

impl Steering {
    /// Loads an instance for `port`, fills its socket map, attaches the
    /// reply rewrite, then the steering (so the first steered query's reply
    /// is already right). On failure, what was attached goes with the
    /// instance. Runs inside the namespace (tcx finds `lo` there).
    fn attach(
        label: &str,
        netns_fd: &OwnedFd,
        udp: &UdpSocket,
        tcp: &TcpListener,
        port: u16,
    ) -> Result<Self, OverlayError> {
        let fail = |what: &str| {
            let (what, netns) = (what.to_owned(), label.to_owned());
            move |source: Box<dyn std::error::Error + Send + Sync>| OverlayError::Bpf {
                what,
                netns,
                cause: source,
                hint: HINT_BPF,
            }
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(PORT_GLOBAL, &port, true)
            .load(OBJECT)
            .map_err(|e| fail("loading the dns steering object")(e.into()))?;
        let mut sockets: SockMap<_> = ebpf
            .map_mut(SOCKETS_MAP)
            .ok_or_else(|| fail("finding its socket map")(SOCKETS_MAP.into()))?
            .try_into()
            .map_err(|e: aya::maps::MapError| fail("opening its socket map")(e.into()))?;
        sockets
            .set(UDP_SLOT, udp, 0)
            .map_err(|e| fail("putting the UDP socket in the socket map")(e.into()))?;
        sockets
            .set(TCP_SLOT, tcp, 0)
            .map_err(|e| fail("putting the TCP listener in the socket map")(e.into()))?;

        let reply: &mut SchedClassifier = ebpf
            .program_mut(REPLY_PROGRAM)
            .ok_or_else(|| fail("finding the reply program")(REPLY_PROGRAM.into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| {
                fail("opening the reply program")(e.into())
            })?;
        reply
            .load()
            .map_err(|e| fail("loading the reply program")(e.into()))?;
        let reply_id = reply
            .info()
            .map_err(|e| fail("reading the reply program's id")(e.into()))?
            .id();
        reply
            .attach_with_options(
                "lo",
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| fail("attaching the reply program to lo (tcx egress)")(e.into()))?;

        let steer: &mut SkLookup = ebpf
            .program_mut(STEER_PROGRAM)
            .ok_or_else(|| fail("finding the steering program")(STEER_PROGRAM.into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| {
                fail("opening the steering program")(e.into())
            })?;
        steer
            .load()
            .map_err(|e| fail("loading the steering program")(e.into()))?;
        let steer_id = steer
            .info()
            .map_err(|e| fail("reading the steering program's id")(e.into()))?
            .id();
        steer
            .attach(netns_fd)
            .map_err(|e| fail("attaching the steering program (sk_lookup)")(e.into()))?;
        Ok(Self {
            _ebpf: ebpf,
            program_ids: ProgramIds {
                steer: steer_id,
                reply: reply_id,
            },
        })
    }
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
            cause: source,
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

/// Removes the DNAT table of earlier agents, which would send queries to
/// their dead port before any lookup; absent is no error. Runs inside the
/// namespace.
fn remove_legacy_table(label: &str) -> Result<(), OverlayError> {
    match Nft::open(FAMILY_IP, LEGACY_TABLE).and_then(|mut nft| nft.commit(&[Change::DeleteTable]))
    {
        Ok(()) => {
            tracing::info!(netns = %label, "removed the dns DNAT table of an earlier agent");
            Ok(())
        }
        Err(error) if error.is(libc::ENOENT) => Ok(()),
        Err(error) => Err(OverlayError::nftables(
            format!("deleting table ip {LEGACY_TABLE}"),
            label,
            HINT_NFT,
        )(error)),
    }
}
