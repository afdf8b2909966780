//! The documents of the trace stream (`GET /v1/trace`): one JSON object per
//! line, a public contract like `types` (`netctl trace --format json`
//! prints them as they are). The agent writes its event lines with
//! its own `trace::batch::write_line`, byte for byte what serde makes of `TraceLine::Event`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

/// Every verdict `netctl trace --verdict` accepts (the agent's decoder
/// names each datapath verdict code with one of these).
pub const VERDICTS: [&str; 8] = [
    "translate",
    "translate-established",
    "reverse",
    "drop",
    "arp-reply",
    "pass",
    "forward",
    "forward-established",
];

/// One line of the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TraceLine {
    /// First line: the agent is tracing for this client from now on.
    Start(TraceStart),
    /// What the datapath did with one packet.
    Event(Box<TraceRecord>),
    /// Events this client will never see.
    Lost(TraceLost),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStart {
    pub node: String,
    /// Tracers connected, this one included.
    pub tracers: usize,
    /// Events the ring buffer has lost since the agent's maps were created.
    pub lost: u64,
    /// Events replayed before the live ones (`since`).
    pub replayed: usize,
    /// Whether the datapath reports every packet now (a tracer asked for
    /// it), else only what is new about each flow.
    #[serde(default)]
    pub all_packets: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceLost {
    /// Events dropped by the datapath because the ring was full, since the
    /// last report (all tracers miss them).
    pub ring: u64,
    /// Events this client fell too far behind to receive.
    pub skipped: u64,
    /// Ring losses since the maps were created.
    pub ring_total: u64,
}

/// An IPv4 5-tuple minus the protocol (kept in the record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
}

/// One event, with its addresses resolved to names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The node whose datapath saw the packet.
    pub node: String,
    /// The interface the program runs on (`ve-<endpoint id>` for a local
    /// endpoint), or `if<index>` when unknown.
    pub interface: String,
    /// The local endpoint concerned (its task name, else its id), if known;
    /// for a published port, the task (on this node or another).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `translate`, `translate-established`, `reverse`, `drop`,
    /// `arp-reply`, `pass`, `forward` or `forward-established`.
    pub verdict: String,
    /// Why (`no-backend`, `no-conntrack`, `malformed`, `unsupported`,
    /// `policy`), if there is more to say.
    #[serde(default)]
    pub reason: Option<String>,
    /// `tcp`, `udp`, `arp` or the IP protocol number.
    pub protocol: String,
    /// The packet as it arrived.
    pub before: Tuple,
    /// The packet as the datapath passed it on.
    pub after: Tuple,
    /// The service of the VIP or published port concerned.
    #[serde(default)]
    pub service: Option<String>,
    /// The network of the endpoint or VIP concerned.
    #[serde(default)]
    pub network: Option<String>,
    /// A published-port flow sent on to a task: `local` (on this node, it
    /// sees the client's address) or `remote` (over the overlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// For a `remote` task: the node's ingress address `ingress_in` SNATs
    /// the flow to after `after` (the source the task sees; the source
    /// port may change too when another client holds it), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat: Option<Ipv4Addr>,
    /// Names of the addresses above: task, `service (vip)` or node.
    #[serde(default)]
    pub names: BTreeMap<Ipv4Addr, String>,
    /// The packet's length on the wire.
    pub packet_len: u32,
    /// Its first bytes (Ethernet header on), base64: what `--pcap` writes;
    /// empty unless a tracer asks for every packet (`--all-packets`,
    /// `--pcap`).
    #[serde(default)]
    pub headers: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_reads_back_as_the_record() {
        let record = TraceRecord {
            time_ns: 1,
            node: "n1".into(),
            interface: "if3".into(),
            endpoint: None,
            verdict: "drop".into(),
            reason: Some("no-backend".into()),
            protocol: "udp".into(),
            before: Tuple {
                src: [10, 0, 0, 2].into(),
                sport: 5,
                dst: [10, 0, 0, 9].into(),
                dport: 53,
            },
            after: Tuple {
                src: [10, 0, 0, 2].into(),
                sport: 5,
                dst: [10, 0, 0, 9].into(),
                dport: 53,
            },
            service: Some("dns".into()),
            network: None,
            task: None,
            snat: None,
            names: BTreeMap::new(),
            packet_len: 42,
            headers: "AAE=".into(),
        };
        let mut bytes = serde_json::to_vec(&TraceLine::Event(Box::new(record.clone()))).unwrap();
        bytes.push(b'\n');
        let line: TraceLine = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(line, TraceLine::Event(Box::new(record)));
    }
}
