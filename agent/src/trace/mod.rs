//! `netctl trace`: what the datapath did with each packet, live.
//!
//! The programs write `TraceEvent`s into the TRACE_EVENTS ring buffer while
//! the TRACE_ON flag is set (see `ebpf/programs/src/trace.rs`). `Tracer`
//! owns the agent's side: it sets the flag while at least one tracer is
//! connected (and clears it at start and when the last one leaves) to
//! TRACE_MODE_CHANGES, what is new about each flow, or to
//! TRACE_MODE_ALL_PACKETS while a tracer asks for every packet (`--pcap`,
//! `--all-packets`), reads
//! the ring as it fills (`AsyncFd`), resolves addresses to task, service
//! and node names, writes each record's stream line once (`batch`), keeps
//! the last `REPLAY_CAPACITY` records for `--since`, and broadcasts them a
//! batch at a time to the connected tracers, each of which filters its own
//! copy (`netagent_api::trace_filter`).

// The kernel boundary: the ring buffer's descriptor registered with tokio, and CLOCK_MONOTONIC.
#![allow(unsafe_code)]

pub mod batch;
pub mod decode;
#[cfg(test)]
mod fixtures;
pub mod json;
pub mod names;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, MapError, PerCpuArray, RingBuf};
use futures::future::BoxFuture;
use netagent_common::{
    TraceEvent, TRACE_EVENTS_MAP, TRACE_MODE_ALL_PACKETS, TRACE_MODE_CHANGES, TRACE_MODE_OFF,
    TRACE_ON_MAP, TRACE_RING_BYTES, TRACE_STATS_MAP, TRACE_STAT_EMITTED, TRACE_STAT_LOST,
};
use tokio::{
    io::unix::AsyncFd,
    sync::{broadcast, Notify},
};
use tracing::{debug, warn};

use crate::sync::lock;

use netagent_api::types::TraceStats;

use crate::dataplane::{
    bpf::{map_failure, MapFailure},
    Datapath, DatapathError,
};
use batch::{Batch, Encoder, Receiver};
use names::AddressBook;

/// Records kept for `--since`: a bounded window, the newest ones.
pub const REPLAY_CAPACITY: usize = 4096;
/// Batches a slow tracer may fall behind before it skips some (and is
/// told): at least 32 drains, at most 32 × `PUBLISH_BATCH` records.
const CHANNEL_CAPACITY: usize = 32;
/// Records encoded into one buffer, then kept and sent as one message (a
/// drain gives one batch unless more than this is waiting).
const PUBLISH_BATCH: usize = 1024;
/// How old the address book may get while events come in.
const NAMES_MAX_AGE: Duration = Duration::from_secs(1);
/// How often the ring is drained while someone traces: the programs only
/// wake the agent when an eighth of the ring is waiting, so this bounds how
/// late an event shows.
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Datapath(#[from] Box<DatapathError>),
    #[error("trace map {0}: if <bpffs>/maps/{name} is left from another build, remove it and restart netagent", name = .0.name)]
    Map(MapFailure),
    #[error(
        "the pinned trace ring buffer holds {pinned} bytes, this build uses {}: \
         remove <bpffs>/maps/TRACE_EVENTS and restart the agent",
        TRACE_RING_BYTES
    )]
    RingSize { pinned: u32 },
    #[error("cannot watch the trace ring buffer: {0}: restart netagent; if it happens again, report it with the agent's log (`journalctl -u netagent`)")]
    Poll(std::io::Error),
}

impl From<MapFailure> for TraceError {
    fn from(cause: MapFailure) -> Self {
        Self::Map(cause)
    }
}

/// Where the names of addresses come from (the agent's model).
pub type NameSource = Box<dyn Fn() -> BoxFuture<'static, AddressBook> + Send + Sync>;

pub struct Tracer {
    node: String,
    /// TRACE_ON, and who holds it on.
    flag: Mutex<Holders>,
    stats: PerCpuArray<MapData, u64>,
    /// The ring, until `spawn` hands it to the reader task.
    ring: Mutex<Option<RingBuf<MapData>>>,
    /// Records for `--since`; sending happens under this lock, so that a new
    /// tracer's replay and live stream neither overlap nor leave a gap.
    replay: Mutex<Replay>,
    events: broadcast::Sender<Arc<Batch>>,
    /// Tells the reader that a tracer arrived (start the drain timer).
    arrived: Arc<Notify>,
}

/// The newest batches, at least `REPLAY_CAPACITY` records once that many
/// came (the newest is always kept: it numbers the next record).
#[derive(Default)]
struct Replay {
    batches: VecDeque<Arc<Batch>>,
    records: usize,
}

/// TRACE_ON and the tracers that hold it on.
struct Holders {
    map: Array<MapData, u32>,
    tracers: usize,
    /// Tracers asking for every packet.
    all_packets: usize,
}

impl Holders {
    fn mode(&self) -> u32 {
        match (self.tracers, self.all_packets) {
            (0, _) => TRACE_MODE_OFF,
            (_, 0) => TRACE_MODE_CHANGES,
            _ => TRACE_MODE_ALL_PACKETS,
        }
    }

    /// Counts a tracer in (`delta` 1) or out (-1) and writes the mode when
    /// it changes.
    fn count(&mut self, delta: isize, all_packets: bool) -> Result<(), MapError> {
        let before = (self.tracers, self.all_packets, self.mode());
        self.tracers = self.tracers.saturating_add_signed(delta);
        if all_packets {
            self.all_packets = self.all_packets.saturating_add_signed(delta);
        }
        let mode = self.mode();
        if mode != before.2 {
            if let Err(error) = self.map.set(0, mode, 0) {
                // A tracer that could not come in is not counted (one
                // that leaves is, whatever the map says).
                if delta > 0 {
                    (self.tracers, self.all_packets) = (before.0, before.1);
                }
                return Err(error);
            }
            debug!(mode, "trace mode");
        }
        Ok(())
    }
}

impl Tracer {
    /// Takes the trace maps out of `datapath` and switches tracing off
    /// (a crashed agent may have left it on).
    pub fn open(datapath: &mut Datapath, node: &str) -> Result<Arc<Self>, TraceError> {
        let mut take = |name: &'static str| datapath.take_map(name).map_err(Box::new);
        let ring = take(TRACE_EVENTS_MAP)?;
        // A pin left by a build with another ring size is reused as it is;
        // reading it with this build's size would misread it.
        if let aya::maps::Map::RingBuf(data) = &ring {
            let pinned = data
                .info()
                .map_err(map_failure(TRACE_EVENTS_MAP))?
                .max_entries();
            if pinned != TRACE_RING_BYTES {
                return Err(TraceError::RingSize { pinned });
            }
        }
        let ring = RingBuf::try_from(ring).map_err(map_failure(TRACE_EVENTS_MAP))?;
        let mut flag: Array<MapData, u32> =
            Array::try_from(take(TRACE_ON_MAP)?).map_err(map_failure(TRACE_ON_MAP))?;
        let stats =
            PerCpuArray::try_from(take(TRACE_STATS_MAP)?).map_err(map_failure(TRACE_STATS_MAP))?;
        flag.set(0, TRACE_MODE_OFF, 0)
            .map_err(map_failure(TRACE_ON_MAP))?;
        Ok(Arc::new(Self {
            node: node.to_owned(),
            flag: Mutex::new(Holders {
                map: flag,
                tracers: 0,
                all_packets: 0,
            }),
            stats,
            ring: Mutex::new(Some(ring)),
            replay: Mutex::new(Replay::default()),
            events: broadcast::channel(CHANNEL_CAPACITY).0,
            arrived: Arc::new(Notify::new()),
        }))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Starts the task that reads the ring (once).
    pub fn spawn(self: &Arc<Self>, names: NameSource) -> Result<(), TraceError> {
        let Some(ring) = lock(&self.ring).take() else {
            return Ok(());
        };
        // SAFETY: the ring owns its map's file descriptor and keeps it open
        // while the AsyncFd holds it; nothing else closes or replaces it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|error| TraceError::Poll(error.into_parts().1))?;
        tokio::spawn(read_ring(
            Arc::downgrade(self),
            self.arrived.clone(),
            ring,
            names,
        ));
        Ok(())
    }

    /// A new tracer: tracing is on until the returned guard drops, for
    /// every packet while an `all_packets` tracer is connected, else for
    /// what is new about each flow. Also returns the kept records of the
    /// last `since`, and the live stream.
    pub fn subscribe(
        self: &Arc<Self>,
        since: Option<Duration>,
        all_packets: bool,
    ) -> Result<Subscribed, TraceError> {
        lock(&self.flag)
            .count(1, all_packets)
            .map_err(map_failure(TRACE_ON_MAP))?;
        self.arrived.notify_one();
        let subscription = Subscription {
            tracer: self.clone(),
            all_packets,
        };
        let replay = lock(&self.replay);
        let next = replay.batches.back().map_or(0, |b| b.end());
        let receiver = Receiver::new(self.events.subscribe(), next);
        let (since_ns, recent) = match since {
            // Without --since nothing is replayed.
            None => (u64::MAX, Vec::new()),
            Some(since) => {
                let since_ns = wall_clock_ns().saturating_sub(since.as_nanos() as u64);
                let recent = replay
                    .batches
                    .iter()
                    // CPUs' events interleave: any record may be the newest.
                    .filter(|b| b.entries().iter().any(|e| e.time_ns >= since_ns))
                    .cloned()
                    .collect();
                (since_ns, recent)
            }
        };
        Ok(Subscribed {
            subscription,
            recent,
            since_ns,
            receiver,
        })
    }

    pub fn stats(&self) -> TraceStats {
        let sum = |index: u32| {
            self.stats
                .get(&index, 0)
                .map(|values| values.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
                .unwrap_or(0)
        };
        let (tracers, all_packets) = {
            let flag = lock(&self.flag);
            (flag.tracers, flag.all_packets)
        };
        TraceStats {
            tracers,
            all_packets,
            emitted: sum(TRACE_STAT_EMITTED),
            lost: sum(TRACE_STAT_LOST),
        }
    }

    fn unsubscribe(&self, all_packets: bool) {
        if let Err(error) = lock(&self.flag).count(-1, all_packets) {
            warn!(%error, "cannot lower the trace mode");
        }
    }

    /// Keeps and sends a batch, encoded before the lock is taken.
    fn publish(&self, batch: Batch) {
        let batch = Arc::new(batch);
        let mut replay = lock(&self.replay);
        replay.records += batch.len();
        replay.batches.push_back(batch.clone());
        while let Some(oldest) = replay.batches.front() {
            if replay.records - oldest.len() < REPLAY_CAPACITY {
                break;
            }
            replay.records -= oldest.len();
            replay.batches.pop_front();
        }
        // No receiver is fine: the records stay for `--since`.
        let _ = self.events.send(batch);
    }
}

/// A new tracer's share: tracing stays on while `subscription` lives.
pub struct Subscribed {
    pub subscription: Subscription,
    /// The kept batches holding records of the window asked for, oldest
    /// first: their records from `since_ns` on are the ones asked for.
    pub recent: Vec<Arc<Batch>>,
    pub since_ns: u64,
    /// Every record from now on.
    pub receiver: Receiver,
}

/// Keeps tracing on while it lives.
pub struct Subscription {
    tracer: Arc<Tracer>,
    all_packets: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.tracer.unsubscribe(self.all_packets);
    }
}

async fn read_ring(
    tracer: std::sync::Weak<Tracer>,
    arrived: Arc<Notify>,
    mut ring: AsyncFd<RingBuf<MapData>>,
    names: NameSource,
) {
    let mut book = AddressBook::default();
    let mut encoder = match tracer.upgrade() {
        Some(tracer) => Encoder::new(&tracer.node),
        None => return,
    };
    let mut book_at: Option<Instant> = None;
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One more drain after the last tracer leaves picks up the remainder.
    let mut was_tracing = false;
    // Reused from drain to drain: no allocation per batch once grown.
    let mut events = Vec::new();
    loop {
        let tracing = match tracer.upgrade() {
            Some(tracer) => lock(&tracer.flag).tracers > 0,
            None => return,
        };
        let timer = tracing || was_tracing;
        was_tracing = tracing;
        events.clear();
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(error) => {
                        warn!(%error, "trace ring buffer: polling failed; tracing stops");
                        return;
                    }
                };
                take_events(guard.get_inner_mut(), &mut events);
                guard.clear_ready();
            }
            _ = drain.tick(), if timer => take_events(ring.get_mut(), &mut events),
            () = arrived.notified(), if !timer => continue,
        }
        let Some(tracer) = tracer.upgrade() else {
            return;
        };
        if events.is_empty() {
            continue;
        }
        if book_at.is_none_or(|at| at.elapsed() > NAMES_MAX_AGE) {
            book = names().await;
            book_at = Some(Instant::now());
        }
        let offset = wall_offset_ns();
        for chunk in events.chunks(PUBLISH_BATCH) {
            tracer.publish(encoder.encode(chunk, &book, offset));
        }
    }
}

/// Everything waiting in the ring, into `events`.
fn take_events(ring: &mut RingBuf<MapData>, events: &mut Vec<TraceEvent>) {
    while let Some(item) = ring.next() {
        if let Some(event) = decode::event(&item) {
            events.push(event);
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Wall clock minus CLOCK_MONOTONIC (what `bpf_ktime_get_ns` reads).
fn wall_offset_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let monotonic = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    i128::from(wall_clock_ns()) - monotonic
}
