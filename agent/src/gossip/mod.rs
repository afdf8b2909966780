//! Gossip on port 7946: chitchat (scuttlebutt + phi-accrual failure
//! detection) over UDP datagrams sealed with the cluster key.
//!
//! Each node publishes the facts it owns: its VTEP address and its local
//! endpoints. Every node sees the live nodes' facts; a dead node's facts
//! leave the view within seconds and come back when it returns; a restarted
//! node's state replaces its old state.

mod frame;
mod sealed;
mod transport;
mod view;

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};
use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
};
use tracing::{debug, warn};

use crate::model::Endpoint;

pub use view::{endpoint_key, GossipView, PeerState, ENDPOINT_PREFIX, VTEP_KEY};

/// Used when the configuration leaves the interval at zero.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(200);
/// A node is declared dead once it has been silent for this many mean
/// heartbeat intervals (chitchat's phi is elapsed / mean interval): with 200 ms
/// rounds, 2 to 3 s. Long enough that an agent restart (new generation live
/// before the old one is declared dead) never withdraws the node's endpoints
/// from the others, short enough that a dead node's entries leave every table
/// within 5 s.
const PHI_THRESHOLD: f64 = 15.0;
/// Heartbeat intervals remembered per node: about 20 s of history at 200 ms,
/// so the detector adapts to the cluster's size quickly.
const SAMPLING_WINDOW: usize = 100;
/// How long a dead node's last state is kept (never shown) before it is
/// forgotten; the memory stops it from being resurrected by stale gossip.
const DEAD_NODE_GRACE: Duration = Duration::from_secs(10 * 60);
/// How long a withdrawn key's tombstone is kept so that every peer hears of it.
const TOMBSTONE_GRACE: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("cannot encode endpoint {id} for gossip ({cause}): report this bug with the agent's log (`journalctl -u netagent`)")]
    Encode {
        id: String,
        cause: serde_json::Error,
    },
    #[error("gossip address {0} must be the node's own address, not a wildcard: restart netagent with --advertise-addr set to one of its addresses")]
    Wildcard(SocketAddr),
    #[error("cannot start gossip on {addr}: {reason}: check that no other process holds that UDP port (`ss -lunp`), or pass another --gossip-port")]
    Start { addr: SocketAddr, reason: String },
}

#[derive(Clone, Debug)]
pub struct GossipConfig {
    pub node_name: String,
    pub cluster_id: String,
    /// Where to listen (advertise address, port 7946 by default).
    pub listen_addr: SocketAddr,
    /// Other nodes' gossip addresses to contact first.
    pub seeds: Vec<SocketAddr>,
    /// The cluster's 32-byte key: every packet is sealed with it.
    pub cluster_key: [u8; 32],
    pub vtep: Ipv4Addr,
    /// Zero means [`DEFAULT_GOSSIP_INTERVAL`].
    pub gossip_interval: Duration,
}

pub struct Gossip {
    view: watch::Receiver<Arc<GossipView>>,
    handle: ChitchatHandle,
    rejected: Arc<AtomicU64>,
    /// Wakes the view task after a local change.
    refresh: Arc<Notify>,
    view_task: JoinHandle<()>,
}

/// A chitchat generation: the start time in ms, strictly increasing within
/// the process so that a quick restart still counts as a new generation.
fn next_generation() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0);
    let previous = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(0);
    now.max(previous + 1)
}

fn current_view(chitchat: &Chitchat) -> GossipView {
    view::build_view(chitchat.live_nodes().filter_map(|id| {
        let state = chitchat.node_state(id)?;
        Some(view::NodeFacts {
            name: &id.node_id,
            generation: id.generation_id,
            key_values: state.key_values(),
        })
    }))
}

impl Gossip {
    pub async fn start(
        config: GossipConfig,
        endpoints: Vec<Endpoint>,
    ) -> Result<Self, GossipError> {
        // The listen address is also what peers are told to gossip to.
        if config.listen_addr.ip().is_unspecified() {
            return Err(GossipError::Wildcard(config.listen_addr));
        }
        let interval = if config.gossip_interval.is_zero() {
            DEFAULT_GOSSIP_INTERVAL
        } else {
            config.gossip_interval
        };
        let mut key_values = vec![(VTEP_KEY.to_owned(), config.vtep.to_string())];
        for endpoint in &endpoints {
            let value = view::encode_endpoint(endpoint).map_err(|source| GossipError::Encode {
                id: endpoint.id.clone(),
                cause: source,
            })?;
            key_values.push((endpoint_key(&endpoint.id), value));
        }
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(
                config.node_name.as_str(),
                next_generation(),
                config.listen_addr,
            ),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: interval,
            listen_addr: config.listen_addr,
            // Addresses only: chitchat resolves names it cannot parse, and we
            // never want DNS here.
            seed_nodes: config.seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: PHI_THRESHOLD,
                sampling_window_size: SAMPLING_WINDOW,
                // A longer gap (a pause, a partition) is not a sample of the
                // normal rhythm.
                max_interval: interval * 10,
                // The prior of the mean interval, before samples arrive.
                initial_interval: interval,
                dead_node_grace_period: DEAD_NODE_GRACE,
            },
            marked_for_deletion_grace_period: TOMBSTONE_GRACE,
            catchup_callback: None,
            extra_liveness_predicate: None,
            // Compressed digests; every node of the cluster runs this agent.
            protocol_version: ProtocolVersion::V1,
        };
        let rejected = Arc::new(AtomicU64::new(0));
        let transport = transport::SealedTransport::new(
            sealed::Sealer::new(&config.cluster_key, &config.cluster_id),
            rejected.clone(),
        );
        let handle = spawn_chitchat(chitchat_config, key_values, &transport)
            .await
            .map_err(|err| GossipError::Start {
                addr: config.listen_addr,
                reason: format!("{err:#}"),
            })?;

        let chitchat = handle.chitchat();
        let (initial, mut live_nodes) = {
            let guard = chitchat.lock().await;
            (current_view(&guard), guard.live_nodes_watcher())
        };
        let (view_tx, view_rx) = watch::channel(Arc::new(initial));
        let refresh = Arc::new(Notify::new());
        let wake = refresh.clone();
        // chitchat's live-nodes watcher fires when the live set changes or a
        // live node's max version does (any key set or deleted), checked after
        // every gossip round; local changes wake us directly.
        let view_task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = live_nodes.changed() => if changed.is_err() { break },
                    () = wake.notified() => {}
                }
                let view = current_view(&*chitchat.lock().await);
                view_tx.send_if_modified(|current| {
                    if **current == view {
                        return false;
                    }
                    debug!(nodes = view.nodes.len(), "gossip view changed");
                    *current = Arc::new(view);
                    true
                });
            }
        });
        Ok(Gossip {
            view: view_rx,
            handle,
            rejected,
            refresh,
            view_task,
        })
    }

    pub async fn publish(&self, endpoint: &Endpoint) {
        let value = match view::encode_endpoint(endpoint) {
            Ok(value) => value,
            Err(err) => {
                warn!(endpoint = %endpoint.id, %err, "cannot encode endpoint for gossip");
                return;
            }
        };
        let key = endpoint_key(&endpoint.id);
        self.handle
            .with_chitchat(|chitchat| {
                let state = chitchat.self_node_state();
                // Setting an unchanged value would still bump the version.
                if state.get(&key) != Some(value.as_str()) {
                    state.set(key.clone(), value.clone());
                }
            })
            .await;
        self.refresh.notify_one();
    }

    pub async fn withdraw(&self, endpoint_id: &str) {
        let key = endpoint_key(endpoint_id);
        self.handle
            .with_chitchat(|chitchat| {
                let state = chitchat.self_node_state();
                if state.contains_key(&key) {
                    state.delete(&key);
                }
            })
            .await;
        self.refresh.notify_one();
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<GossipView>> {
        self.view.clone()
    }

    /// Packets dropped because they did not open with the cluster key.
    pub fn rejected_packets(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Stops the chitchat server (which closes its sockets) and the view task.
    pub async fn shutdown(self) {
        if let Err(err) = self.handle.initiate_shutdown() {
            debug!(%err, "gossip already stopped");
        }
        if let Err(err) = self.handle.termination_watcher().await {
            warn!(%err, "gossip server ended with an error");
        }
        self.view_task.abort();
        // Drop aborts whatever is left.
    }
}

impl Drop for Gossip {
    fn drop(&mut self) {
        self.handle.abort();
        self.view_task.abort();
    }
}
