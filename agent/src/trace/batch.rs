//! The records of one drain of the ring, encoded once for every tracer:
//! their stream lines (`{"type":"event",...}`, the `record::TraceLine`
//! document) end to end in one shared buffer, written straight from the
//! event and the address book's pre-rendered names (no `String`, map or
//! `serde_json` value per record), and next to each line the little that
//! filters and `--since` read. A tracer that takes everything passes the
//! buffer on as it is; one with filters picks lines by the entries,
//! without parsing anything.

use std::{net::Ipv4Addr, sync::Arc};

use bytes::Bytes;
use netagent_api::{
    trace::Tuple,
    trace_filter::{Filterable, TraceFilter},
};
use netagent_common::TraceEvent;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};

use super::{
    decode,
    json::{self, Name},
    names::{AddressBook, Interface, Resolved},
};

/// What filters and `--since` read of one record.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    kind: u8,
    before: Tuple,
    after: Tuple,
    snat: Option<Ipv4Addr>,
    service: Option<Arc<str>>,
    network: Option<Arc<str>>,
    /// Where its line ends in the batch's buffer (it starts where the
    /// previous one ends).
    end: u32,
}

impl Filterable for Entry {
    fn network(&self) -> Option<&str> {
        self.network.as_deref()
    }

    fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    fn verdict(&self) -> &str {
        // An unknown code never matches: filters take known words only.
        decode::verdict_word(self.kind).unwrap_or("")
    }

    fn tuples(&self) -> (Tuple, Tuple) {
        (self.before, self.after)
    }

    fn snat(&self) -> Option<Ipv4Addr> {
        self.snat
    }
}

/// Records published together, their lines in one buffer.
#[derive(Debug)]
pub struct Batch {
    /// The number of its first record: the reader numbers records as it
    /// publishes them, so a tracer that fell behind knows how many it
    /// missed.
    pub first: u64,
    entries: Vec<Entry>,
    lines: Bytes,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The number of the record after its last.
    pub fn end(&self) -> u64 {
        self.first + self.len() as u64
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Every line, each with its newline (shared, not copied).
    pub fn lines(&self) -> Bytes {
        self.lines.clone()
    }

    /// The line of entry `index`, with its newline.
    pub fn line(&self, index: usize) -> &[u8] {
        let start = match index {
            0 => 0,
            _ => self.entries[index - 1].end as usize,
        };
        &self.lines[start..self.entries[index].end as usize]
    }

    /// Appends to `out` the lines of the records `filter` takes, from
    /// `from_ns` on; returns how many.
    pub fn select(&self, filter: &TraceFilter, from_ns: u64, out: &mut Vec<u8>) -> usize {
        let mut taken = 0;
        for (index, entry) in self.entries.iter().enumerate() {
            if entry.time_ns >= from_ns && filter.matches(entry) {
                out.extend_from_slice(self.line(index));
                taken += 1;
            }
        }
        taken
    }
}

/// Turns drained events into batches: the reader task's, one per agent.
pub struct Encoder {
    /// The node's name (as JSON, written in every line).
    node: Name,
    /// The number of the next record.
    next: u64,
    /// Bytes per line lately, to size the next buffer in one allocation.
    line_bytes: usize,
}

impl Encoder {
    pub fn new(node: &str) -> Self {
        Self {
            node: Name::new(node),
            next: 0,
            line_bytes: 512,
        }
    }

    /// The batch of `events`, named with `book`; `wall_offset_ns` turns
    /// the events' monotonic times into wall-clock times.
    pub fn encode(
        &mut self,
        events: &[TraceEvent],
        book: &AddressBook,
        wall_offset_ns: i128,
    ) -> Batch {
        let mut lines = Vec::with_capacity(events.len() * (self.line_bytes + 64));
        let mut entries = Vec::with_capacity(events.len());
        for event in events {
            let named = book.name(event, self.node.text(), wall_offset_ns);
            write_line(&mut lines, event, &named, &self.node);
            entries.push(Entry {
                time_ns: named.time_ns,
                kind: event.kind,
                before: named.before,
                after: named.after,
                snat: named.snat,
                service: named.service.map(Name::shared),
                network: named.network.map(Name::shared),
                end: u32::try_from(lines.len()).unwrap_or(u32::MAX),
            });
        }
        if !events.is_empty() {
            self.line_bytes = lines.len() / events.len();
        }
        let first = self.next;
        self.next += entries.len() as u64;
        Batch {
            first,
            entries,
            lines: Bytes::from(lines),
        }
    }
}

/// One event's stream line, `{"type":"event",...}` and a newline: the
/// fields of `record::TraceRecord` in its order, as `serde_json` writes
/// them.
pub fn write_line(out: &mut Vec<u8>, event: &TraceEvent, named: &Resolved<'_>, node: &Name) {
    let optional = |out: &mut Vec<u8>, name: Option<&Name>| match name {
        Some(name) => out.extend_from_slice(name.json()),
        None => out.extend_from_slice(b"null"),
    };
    out.extend_from_slice(br#"{"type":"event","time_ns":"#);
    json::number(out, named.time_ns);
    out.extend_from_slice(br#","node":"#);
    out.extend_from_slice(node.json());
    out.extend_from_slice(br#","interface":"#);
    match named.interface {
        Interface::Named(name) => out.extend_from_slice(name.json()),
        Interface::Index(index) => {
            out.extend_from_slice(br#""if"#);
            json::number(out, u64::from(index));
            out.push(b'"');
        }
    }
    out.extend_from_slice(br#","endpoint":"#);
    optional(out, named.endpoint);
    out.extend_from_slice(br#","verdict":""#);
    match decode::verdict_word(event.kind) {
        Some(word) => out.extend_from_slice(word.as_bytes()),
        None => {
            out.extend_from_slice(b"kind-");
            json::number(out, u64::from(event.kind));
        }
    }
    out.extend_from_slice(br#"","reason":"#);
    match decode::reason_word(event.reason) {
        Ok(None) => out.extend_from_slice(b"null"),
        Ok(Some(word)) => {
            out.push(b'"');
            out.extend_from_slice(word.as_bytes());
            out.push(b'"');
        }
        Err(code) => {
            out.extend_from_slice(br#""reason-"#);
            json::number(out, u64::from(code));
            out.push(b'"');
        }
    }
    out.extend_from_slice(br#","protocol":""#);
    match decode::protocol_word(event) {
        Ok(word) => out.extend_from_slice(word.as_bytes()),
        Err(number) => json::number(out, u64::from(number)),
    }
    out.extend_from_slice(br#"","before":"#);
    write_tuple(out, &named.before);
    out.extend_from_slice(br#","after":"#);
    write_tuple(out, &named.after);
    out.extend_from_slice(br#","service":"#);
    optional(out, named.service);
    out.extend_from_slice(br#","network":"#);
    optional(out, named.network);
    if let Some(task) = named.task {
        out.extend_from_slice(br#","task":""#);
        out.extend_from_slice(task.as_bytes());
        out.push(b'"');
    }
    if let Some(snat) = named.snat {
        out.extend_from_slice(br#","snat":"#);
        json::addr(out, snat);
    }
    out.extend_from_slice(br#","names":{"#);
    for (i, entry) in named.names_entries().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(entry);
    }
    out.extend_from_slice(br#"},"packet_len":"#);
    json::number(out, u64::from(event.packet_len));
    out.extend_from_slice(br#","headers":""#);
    let headers = decode::headers(event);
    if !headers.is_empty() {
        // 128 captured bytes are 172 base64 characters.
        let mut text = [0u8; netagent_common::TRACE_CAPTURE_BYTES.div_ceil(3) * 4];
        let written = base64::Engine::encode_slice(
            &base64::engine::general_purpose::STANDARD,
            headers,
            &mut text,
        )
        .unwrap_or(0);
        out.extend_from_slice(&text[..written]);
    }
    out.extend_from_slice(b"\"}\n");
}

fn write_tuple(out: &mut Vec<u8>, tuple: &Tuple) {
    out.extend_from_slice(br#"{"src":"#);
    json::addr(out, tuple.src);
    out.extend_from_slice(br#","sport":"#);
    json::number(out, u64::from(tuple.sport));
    out.extend_from_slice(br#","dst":"#);
    json::addr(out, tuple.dst);
    out.extend_from_slice(br#","dport":"#);
    json::number(out, u64::from(tuple.dport));
    out.push(b'}');
}

/// A tracer's end of the broadcast: whole batches, and how many records
/// it missed before each (it fell further behind than the channel holds).
pub struct Receiver {
    batches: broadcast::Receiver<Arc<Batch>>,
    /// The number of the next record this tracer expects.
    next: u64,
}

impl Receiver {
    /// `next` is the number of the first record published after the
    /// subscription.
    pub fn new(batches: broadcast::Receiver<Arc<Batch>>, next: u64) -> Self {
        Self { batches, next }
    }

    /// The next batch and the records missed before it; `None` once the
    /// tracer is gone.
    pub async fn recv(&mut self) -> Option<(Arc<Batch>, u64)> {
        loop {
            match self.batches.recv().await {
                Ok(batch) => return Some(self.count(batch)),
                // The next batch held says how many.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// A batch that is already waiting, if any.
    pub fn try_recv(&mut self) -> Option<(Arc<Batch>, u64)> {
        loop {
            match self.batches.try_recv() {
                Ok(batch) => return Some(self.count(batch)),
                Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    fn count(&mut self, batch: Arc<Batch>) -> (Arc<Batch>, u64) {
        let skipped = batch.first.saturating_sub(self.next);
        self.next = batch.end();
        (batch, skipped)
    }
}

#[cfg(test)]
mod tests {
    use netagent_common::{
        TraceTuple, TRACE_FLAG_PUBLISHED, TRACE_FLAG_REMOTE_TASK, TRACE_KIND_DROP,
        TRACE_KIND_FORWARD, TRACE_KIND_REVERSE, TRACE_KIND_TRANSLATE, TRACE_REASON_NO_BACKEND,
    };

    use super::*;
    use netagent_api::trace::{TraceLine, TraceRecord};

    use crate::trace::fixtures::{self, event, tuple};

    /// Names with everything JSON must escape in them.
    fn book() -> AddressBook {
        fixtures::book(&fixtures::Names {
            network: "app \"net\"",
            client: "client\\1\n\u{1}é",
            service: "web\t",
            node: "n\"1",
        })
    }

    /// Every kind of event the programs write, and some they do not.
    fn events() -> Vec<TraceEvent> {
        let sent = tuple([10, 0, 0, 2], 40000, [10, 0, 0, 250], 80);
        let translated = tuple([10, 0, 0, 2], 40000, [10, 0, 0, 3], 80);
        let reply = tuple([10, 0, 0, 3], 80, [10, 0, 0, 2], 40000);
        let reversed = tuple([10, 0, 0, 250], 80, [10, 0, 0, 2], 40000);
        let from_unnamed = tuple([10, 0, 0, 4], 1, [10, 0, 0, 250], 80);
        let client = tuple([198, 18, 0, 200], 40000, [198, 18, 0, 11], 8080);
        let to_task = tuple([198, 18, 0, 200], 40000, [10, 0, 0, 3], 80);
        let unknown = tuple([192, 0, 2, 1], 5, [192, 0, 2, 2], 6);
        let mut all = vec![
            event(TRACE_KIND_TRANSLATE, sent, translated),
            event(TRACE_KIND_REVERSE, reply, reversed),
            event(TRACE_KIND_TRANSLATE, from_unnamed, translated),
            event(TRACE_KIND_DROP, unknown, unknown),
            event(TRACE_KIND_TRANSLATE, TraceTuple::default(), sent),
        ];
        let mut dropped = event(TRACE_KIND_DROP, sent, sent);
        dropped.reason = TRACE_REASON_NO_BACKEND;
        dropped.proto = 17;
        all.push(dropped);
        let mut odd = event(42, sent, sent);
        (odd.reason, odd.proto) = (99, 132);
        all.push(odd);
        let mut arp = event(netagent_common::TRACE_KIND_ARP_REPLY, sent, sent);
        arp.proto = 0;
        all.push(arp);
        for flags in [0, TRACE_FLAG_REMOTE_TASK] {
            let mut forward = event(TRACE_KIND_FORWARD, client, to_task);
            forward.flags = TRACE_FLAG_PUBLISHED | flags;
            all.push(forward);
        }
        let mut published_reply = event(
            TRACE_KIND_REVERSE,
            tuple([10, 0, 0, 3], 80, [198, 18, 0, 200], 40000),
            tuple([198, 18, 0, 11], 8080, [198, 18, 0, 200], 40000),
        );
        published_reply.flags = TRACE_FLAG_PUBLISHED;
        all.push(published_reply);
        let mut captured = event(TRACE_KIND_TRANSLATE, sent, translated);
        captured.captured_len = 200; // clamped to the array
        captured.headers = std::array::from_fn(|i| i as u8);
        all.push(captured);
        let mut short = captured;
        short.captured_len = 5;
        all.push(short);
        all
    }

    /// The line as the agent wrote it before this encoder: the record,
    /// serialised by serde.
    fn serde_line(record: &TraceRecord) -> Vec<u8> {
        let line = TraceLine::Event(Box::new(record.clone()));
        let mut bytes = serde_json::to_vec(&line).expect("json");
        bytes.push(b'\n');
        bytes
    }

    #[test]
    fn lines_are_the_serde_documents_byte_for_byte() {
        let book = book();
        let mut encoder = Encoder::new("n1");
        let events = events();
        let batch = encoder.encode(&events, &book, -7);
        assert_eq!(batch.len(), events.len());
        let mut all = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let record = book.resolve(event, "n1", -7);
            let line = batch.line(index);
            assert_eq!(
                String::from_utf8_lossy(line),
                String::from_utf8_lossy(&serde_line(&record)),
                "event {index}"
            );
            // And it reads back as the same document.
            let read: TraceLine = serde_json::from_slice(line).expect("valid JSON");
            assert_eq!(read, TraceLine::Event(Box::new(record)));
            all.extend_from_slice(line);
        }
        assert_eq!(batch.lines(), all);
    }

    #[test]
    fn the_round_trip_covers_names_snat_and_headers() {
        let book = book();
        let records: Vec<_> = events().iter().map(|e| book.resolve(e, "n1", 0)).collect();
        assert!(records.iter().any(|r| r.snat.is_some()));
        assert!(records.iter().any(|r| r.task.as_deref() == Some("local")));
        assert!(records.iter().any(|r| r.names.len() >= 3));
        assert!(records.iter().any(|r| !r.headers.is_empty()));
        assert!(records.iter().any(|r| r.interface == "if9"));
        assert!(records.iter().any(|r| r.verdict == "kind-42"));
        assert!(records.iter().any(|r| r.protocol == "132"));
    }

    #[test]
    fn records_are_numbered_across_batches() {
        let mut encoder = Encoder::new("n1");
        let events = events();
        let one = encoder.encode(&events[..3], &AddressBook::default(), 0);
        let two = encoder.encode(&events[3..], &AddressBook::default(), 0);
        assert_eq!((one.first, two.first), (0, 3));
        assert!(encoder.encode(&[], &AddressBook::default(), 0).is_empty());
    }

    #[test]
    fn filters_pick_lines_from_the_entries() {
        let book = book();
        let events = events();
        let batch = Encoder::new("n1").encode(&events, &book, 0);
        let everything = TraceFilter::default();
        assert!(everything.takes_everything());
        let mut out = Vec::new();
        assert_eq!(batch.select(&everything, 0, &mut out), events.len());
        assert_eq!(out, batch.lines());
        for filter in [
            TraceFilter {
                service: Some("web\t".into()),
                ..Default::default()
            },
            TraceFilter {
                network: Some("app \"net\"".into()),
                ..Default::default()
            },
            TraceFilter {
                ip: Some(Ipv4Addr::new(10, 0, 0, 254)),
                ..Default::default()
            },
            TraceFilter {
                port: Some(8080),
                ..Default::default()
            },
            TraceFilter {
                verdict: Some("drop".into()),
                ..Default::default()
            },
        ] {
            assert!(!filter.takes_everything());
            let mut out = Vec::new();
            let taken = batch.select(&filter, 0, &mut out);
            // The same records as the filter on the documents.
            let expected: Vec<u8> = events
                .iter()
                .map(|e| book.resolve(e, "n1", 0))
                .filter(|r| filter.matches(r))
                .flat_map(|r| serde_line(&r))
                .collect();
            assert!(taken > 0 && taken < events.len(), "{filter:?}: {taken}");
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected),
                "{filter:?}"
            );
        }
        // --since: nothing is that recent.
        assert_eq!(batch.select(&everything, u64::MAX, &mut Vec::new()), 0);
    }

    #[tokio::test]
    async fn a_tracer_that_falls_behind_is_told_how_many_it_missed() {
        let (sender, receiver) = broadcast::channel(2);
        let mut receiver = Receiver::new(receiver, 0);
        let mut encoder = Encoder::new("n1");
        let events = events();
        for _ in 0..4 {
            let _ = sender.send(Arc::new(encoder.encode(
                &events[..3],
                &AddressBook::default(),
                0,
            )));
        }
        // Batches 0 and 1 (records 0-5) were pushed out of the channel.
        let (batch, skipped) = receiver.recv().await.expect("batch");
        assert_eq!((batch.first, skipped), (6, 6));
        let (batch, skipped) = receiver.try_recv().expect("batch");
        assert_eq!((batch.first, skipped), (9, 0));
        assert!(receiver.try_recv().is_none());
        drop(sender);
        assert!(receiver.recv().await.is_none());
    }
}
