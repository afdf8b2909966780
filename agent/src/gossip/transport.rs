//! A chitchat `Transport` whose datagrams are sealed with the cluster key.
//!
//! chitchat 0.13 keeps its wire (de)serialisation crate-private, so a foreign
//! socket cannot turn an envelope into bytes. We let chitchat's own UDP socket
//! do that on a loopback address and relay: what it sends goes to a local
//! "tap" socket, is sealed and leaves through the public socket; what arrives
//! on the public socket is opened and handed to chitchat's socket from a
//! loopback "feeder" socket that stands for the sender, so that replies go
//! back to the right peer. Nothing unsealed ever leaves the host.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::{
    transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as ChitchatUdp},
    ChitchatEnvelope,
};
use tokio::net::UdpSocket;
use tracing::debug;

use super::{
    frame::{self, Reassembler, MAX_DATAGRAM},
    sealed::Sealer,
};

/// Bound on the loopback sockets standing for peers.
const MAX_FEEDERS: usize = 4096;
/// How long to wait for chitchat's datagram to reach the tap (it is local).
const TAP_TIMEOUT: Duration = Duration::from_secs(1);

pub struct SealedTransport {
    sealer: Arc<Sealer>,
    rejected: Arc<AtomicU64>,
}

impl SealedTransport {
    pub fn new(sealer: Sealer, rejected: Arc<AtomicU64>) -> Self {
        SealedTransport {
            sealer: Arc::new(sealer),
            rejected,
        }
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let public = UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind {listen_addr}/udp for gossip"))?;
        let inner = ChitchatUdp::open(loopback()).await?;
        let inner_addr = inner.local_addr()?;
        let tap = UdpSocket::bind(loopback())
            .await
            .context("failed to bind the gossip tap socket")?;
        let tap_addr = tap.local_addr()?;
        Ok(Box::new(SealedSocket {
            public,
            inner,
            inner_addr,
            tap,
            tap_addr,
            feeders: HashMap::new(),
            feeder_peers: HashMap::new(),
            sealer: self.sealer.clone(),
            rejected: self.rejected.clone(),
            reassembler: Reassembler::default(),
            next_message_id: 0,
            buf: vec![0; MAX_DATAGRAM + 1].into_boxed_slice(),
        }))
    }
}

struct SealedSocket {
    public: UdpSocket,
    inner: ChitchatUdp,
    inner_addr: SocketAddr,
    tap: UdpSocket,
    tap_addr: SocketAddr,
    /// Peer address → loopback socket standing for it.
    feeders: HashMap<SocketAddr, UdpSocket>,
    /// Loopback address of a feeder → peer address.
    feeder_peers: HashMap<SocketAddr, SocketAddr>,
    sealer: Arc<Sealer>,
    rejected: Arc<AtomicU64>,
    reassembler: Reassembler,
    next_message_id: u32,
    buf: Box<[u8]>,
}

fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::OutOfMemory
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

enum Event {
    Inner(anyhow::Result<RecvOutcome>),
    Public(io::Result<(usize, SocketAddr)>),
}

impl SealedSocket {
    /// The loopback socket standing for `peer`, created on first use.
    async fn feeder(&mut self, peer: SocketAddr) -> anyhow::Result<&UdpSocket> {
        if !self.feeders.contains_key(&peer) {
            if self.feeders.len() >= MAX_FEEDERS {
                // Peers come and go by address; forgetting them all is rare and
                // only costs a message or two.
                self.feeders.clear();
                self.feeder_peers.clear();
            }
            let socket = UdpSocket::bind(loopback())
                .await
                .context("failed to bind a gossip feeder socket")?;
            self.feeder_peers.insert(socket.local_addr()?, peer);
            self.feeders.insert(peer, socket);
        }
        self.feeders
            .get(&peer)
            .context("gossip feeder socket vanished")
    }

    /// Opens one datagram from the network and hands it to chitchat.
    async fn accept(&mut self, len: usize, from: SocketAddr) -> anyhow::Result<()> {
        let plaintext = match self.sealer.open(&self.buf[..len]) {
            Ok(plaintext) => plaintext,
            Err(err) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                debug!(%from, len, %err, "dropped gossip packet");
                return Ok(());
            }
        };
        let message = match self.reassembler.push(from, &plaintext) {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(err) => {
                debug!(%from, %err, "dropped gossip frame");
                return Ok(());
            }
        };
        let inner_addr = self.inner_addr;
        let feeder = self.feeder(from).await?;
        if let Err(err) = feeder.send_to(&message, inner_addr).await {
            debug!(%from, %err, "could not hand gossip message to chitchat");
        }
        Ok(())
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.public
            .local_addr()
            .context("failed to get the gossip socket address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        // chitchat serialises into a datagram to our tap...
        self.inner.send(self.tap_addr, envelope).await?;
        let len = loop {
            let (len, from) = tokio::time::timeout(TAP_TIMEOUT, self.tap.recv_from(&mut self.buf))
                .await
                .context("gossip tap timed out")?
                .context("gossip tap failed")?;
            // Anything else on the tap is some local process: ignore it.
            if from == self.inner_addr {
                break len;
            }
        };
        // ...which we seal and send to the peer.
        let message_id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1);
        let mut num_bytes_sent = 0;
        for plaintext in frame::split(&self.buf[..len], message_id) {
            let datagram = self.sealer.seal(&plaintext)?;
            match self.public.send_to(&datagram, to).await {
                Ok(sent) => num_bytes_sent += sent,
                Err(err) if is_transient(&err) => debug!(%to, %err, "gossip send failed"),
                Err(err) => return Err(err).context("gossip send failed"),
            }
        }
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Cancel-safe: chitchat drops this future at every gossip tick.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let event = tokio::select! {
                // Opened messages first, so they are not held up by new ones.
                biased;
                outcome = self.inner.recv() => Event::Inner(outcome),
                received = self.public.recv_from(&mut self.buf) => Event::Public(received),
            };
            match event {
                Event::Inner(outcome) => {
                    let outcome = outcome?;
                    match self.feeder_peers.get(&outcome.from_addr) {
                        Some(peer) => {
                            return Ok(RecvOutcome {
                                from_addr: *peer,
                                ..outcome
                            });
                        }
                        None => {
                            debug!(from = %outcome.from_addr, "dropped unsealed local gossip message")
                        }
                    }
                }
                Event::Public(Ok((len, from))) => self.accept(len, from).await?,
                Event::Public(Err(err)) if is_transient(&err) => {
                    debug!(%err, "transient gossip recv error")
                }
                Event::Public(Err(err)) => return Err(err).context("gossip recv failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chitchat::{ChitchatMessage, ProtocolVersion};

    use super::*;

    const KEY: [u8; 32] = [3; 32];

    async fn open(key: [u8; 32]) -> (Box<dyn Socket>, Arc<AtomicU64>) {
        let rejected = Arc::new(AtomicU64::new(0));
        let transport = SealedTransport::new(Sealer::new(&key, "c"), rejected.clone());
        (transport.open(loopback()).await.unwrap(), rejected)
    }

    fn syn(cluster_id: String) -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: ProtocolVersion::V1,
            message: ChitchatMessage::Syn {
                cluster_id,
                // The digest type is private to chitchat; an empty one will do.
                digest: Default::default(),
            },
        }
    }

    #[tokio::test]
    async fn gossip_sealed_socket_relays_small_and_fragmented_messages() {
        let (mut a, _) = open(KEY).await;
        let (mut b, b_rejected) = open(KEY).await;
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());

        // The second is big enough that its sealed datagram would exceed
        // 65 507 bytes: it goes as two fragments.
        for cluster_id in ["c".to_owned(), "x".repeat(65_490)] {
            a.send(b_addr, syn(cluster_id.clone())).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(2), b.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.from_addr, a_addr);
            assert_eq!(got.envelope, syn(cluster_id));
        }
        // And back: b answers a at the address it came from.
        b.send(a_addr, syn("reply".into())).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), a.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.from_addr, b_addr);
        assert_eq!(b_rejected.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn gossip_sealed_socket_drops_foreign_and_plain_packets() {
        let (mut stranger, _) = open([4; 32]).await;
        let (mut b, b_rejected) = open(KEY).await;
        let b_addr = b.local_addr().unwrap();
        stranger.send(b_addr, syn("c".into())).await.unwrap();
        let plain = UdpSocket::bind(loopback()).await.unwrap();
        plain.send_to(b"not sealed at all", b_addr).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), b.recv())
            .await
            .is_err());
        assert_eq!(b_rejected.load(Ordering::Relaxed), 2);
    }
}
