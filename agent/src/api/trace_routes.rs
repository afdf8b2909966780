//! `GET /v1/trace`: the trace stream, one JSON document per line
//! (`netagent_api::trace::TraceLine`) over a chunked response that lasts as long
//! as the client reads it. Tracing stays on while at least one such
//! response is open; a blank line every 250 ms finds out soon when a
//! client has gone, so that the flag goes off.

use std::{collections::VecDeque, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::{header, StatusCode},
    response::Response,
    routing::get,
    Router,
};
use netagent_api::{
    routes,
    trace::{TraceLine, TraceLost, TraceStart},
    trace_filter::TraceFilter,
};

use super::error::ApiError;
use crate::{
    node::state::AgentState,
    trace::{
        batch::{Batch, Receiver},
        Subscribed, Subscription, Tracer,
    },
};

/// How often an idle stream checks the loss counter and probes the client.
const TICK: Duration = Duration::from_millis(250);
/// Batches already waiting that one wake-up passes on at most (chunks
/// ready back to back can leave in one write).
const BATCHES_PER_WAKE: usize = 16;

pub fn router() -> Router<Arc<AgentState>> {
    Router::new().route(routes::TRACE, get(trace))
}

async fn trace(
    State(state): State<Arc<AgentState>>,
    Query(filter): Query<TraceFilter>,
) -> Result<Response, ApiError> {
    filter
        .check()
        .map_err(|error| ApiError::with_status(StatusCode::BAD_REQUEST, error))?;
    let tracer = state.tracer().ok_or_else(|| {
        ApiError::with_status(
            StatusCode::SERVICE_UNAVAILABLE,
            "tracing is unavailable on this node: see the agent's log for why the trace maps did not open",
        )
    })?;
    let since = filter.since_ms.map(Duration::from_millis);
    let Subscribed {
        subscription,
        recent,
        since_ns,
        receiver,
    } = tracer
        .subscribe(since, filter.all_packets)
        .map_err(ApiError::internal)?;
    let stats = tracer.stats();
    let mut replayed = Vec::new();
    let replayed_count: usize = recent
        .iter()
        .map(|batch| batch.select(&filter, since_ns, &mut replayed))
        .sum();
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    pending.push_back(line(&TraceLine::Start(TraceStart {
        node: tracer.node().to_owned(),
        tracers: stats.tracers,
        lost: stats.lost,
        replayed: replayed_count,
        all_packets: stats.all_packets > 0,
    })));
    if !replayed.is_empty() {
        pending.push_back(Bytes::from(replayed));
    }
    let stream = Stream {
        _subscription: subscription,
        tracer,
        filter,
        receiver,
        pending,
        ring_lost: stats.lost,
        tick: tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK),
    };
    let body = futures::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next().await?;
        Some((Ok::<_, Infallible>(chunk), stream))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(body))
        .map_err(ApiError::internal)
}

/// One client's stream.
struct Stream {
    /// Holds tracing on until the response is dropped (client gone).
    _subscription: Subscription,
    tracer: Arc<Tracer>,
    filter: TraceFilter,
    receiver: Receiver,
    /// Chunks ready to go, in order.
    pending: VecDeque<Bytes>,
    /// The ring's loss counter as last reported.
    ring_lost: u64,
    tick: tokio::time::Interval,
}

impl Stream {
    /// The next chunk, or `None` when the agent stops tracing.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            tokio::select! {
                received = self.receiver.recv() => {
                    let (batch, skipped) = received?;
                    self.add(&batch, skipped);
                    // What is already waiting goes out with it, back to
                    // back, rather than a wake-up per batch.
                    for _ in 1..BATCHES_PER_WAKE {
                        let Some((batch, skipped)) = self.receiver.try_recv() else {
                            break;
                        };
                        self.add(&batch, skipped);
                    }
                }
                _ = self.tick.tick() => {
                    if self.tracer.stats().lost > self.ring_lost {
                        return Some(self.lost(0));
                    }
                    // Keep-alive: writing is how a gone client is noticed.
                    return Some(Bytes::from_static(b"\n"));
                }
            }
        }
    }

    /// Queues the lines of `batch` this client wants, after a `lost` line
    /// if it missed records before it.
    fn add(&mut self, batch: &Batch, skipped: u64) {
        if skipped > 0 {
            let lost = self.lost(skipped);
            self.pending.push_back(lost);
        }
        if self.filter.takes_everything() {
            // The shared buffer itself: no copy for this client.
            self.pending.push_back(batch.lines());
            return;
        }
        let mut chunk = Vec::new();
        if batch.select(&self.filter, 0, &mut chunk) > 0 {
            self.pending.push_back(Bytes::from(chunk));
        }
    }

    fn lost(&mut self, skipped: u64) -> Bytes {
        let total = self.tracer.stats().lost.max(self.ring_lost);
        let ring = total - self.ring_lost;
        self.ring_lost = total;
        line(&TraceLine::Lost(TraceLost {
            ring,
            skipped,
            ring_total: total,
        }))
    }
}

fn line(line: &TraceLine) -> Bytes {
    let mut bytes = serde_json::to_vec(line).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    Bytes::from(bytes)
}
