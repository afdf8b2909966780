//! `netctl trace`: the datapath's events, live, one line each (or one JSON
//! object each), optionally also into a pcap file. Ctrl-C (or SIGTERM)
//! stops it cleanly: the pcap file is complete.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    net::Ipv4Addr,
    path::PathBuf,
    time::Duration,
};

use base64::Engine;
use netagent_common::TRACE_CAPTURE_BYTES;
use tokio::signal::unix::{signal, SignalKind};

use netagent_api::{
    routes,
    trace::{TraceLine, TraceRecord, Tuple},
    trace_filter::{parse_duration, TraceFilter},
    ApiClient,
};

use crate::{error::CliError, output::Format, pcap::PcapWriter};

/// netctl's output buffer: a batch of lines is one write.
const OUT_BUFFER: usize = 256 * 1024;

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// Only events about this network.
    #[arg(long)]
    pub network: Option<String>,
    /// Only events about this service's VIP.
    #[arg(long)]
    pub service: Option<String>,
    /// Only events with this address, before or after translation.
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// Only events with this port, before or after translation.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only this verdict: translate (translate-established too), reverse,
    /// drop, arp-reply, pass, forward.
    #[arg(long)]
    pub verdict: Option<String>,
    /// First replay the events the agent kept from this long ago (e.g. 30s, 5m).
    #[arg(long, value_parser = since)]
    pub since: Option<Duration>,
    /// Also write the packets' headers to this pcap file (tcpdump -r,
    /// Wireshark). Implies --all-packets.
    #[arg(long)]
    pub pcap: Option<PathBuf>,
    /// Report every packet of each flow, not only what is new about it
    /// (first packet, first reply, first SYN/FIN/RST each way). Costs more:
    /// it holds for every tracer of the node while this one runs.
    #[arg(long)]
    pub all_packets: bool,
}

fn since(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|error| error.to_string())
}

pub async fn run(
    client: &ApiClient,
    args: TraceArgs,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let filter = TraceFilter {
        network: args.network,
        service: args.service,
        ip: args.ip,
        port: args.port,
        verdict: args.verdict,
        since_ms: args.since.map(|d| d.as_millis() as u64),
        all_packets: args.all_packets || args.pcap.is_some(),
    };
    filter.check()?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut lines = client
        .get_lines(&format!("{}{}", routes::TRACE, filter.query()))
        .await?;
    let pcap_error = |source| CliError::Pcap {
        path: args.pcap.clone().unwrap_or_default(),
        cause: source,
    };
    // Created once the agent has accepted: a refusal leaves no file behind.
    let mut pcap = match &args.pcap {
        Some(path) => {
            let file = File::create(path).map_err(|source| CliError::Pcap {
                path: path.clone(),
                cause: source,
            })?;
            Some(
                PcapWriter::new(BufWriter::new(file), TRACE_CAPTURE_BYTES as u32)
                    .map_err(pcap_error)?,
            )
        }
        None => None,
    };
    // Lines come a batch per chunk: a large buffer makes a chunk one write.
    let mut out = BufWriter::with_capacity(OUT_BUFFER, out);
    let ended = loop {
        let line = tokio::select! {
            line = lines.next_line() => line?,
            _ = sigint.recv() => break false,
            _ = sigterm.recv() => break false,
        };
        let Some(line) = line else {
            break true;
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue; // keep-alive
        }
        // The agent's lines are what --format json prints: passed on as
        // they came, parsed only for a table or the pcap file.
        if pcap.is_some() || matches!(format, Format::Table) {
            let parsed: TraceLine = serde_json::from_slice(line)?;
            if let (Some(pcap), TraceLine::Event(record)) = (&mut pcap, &parsed) {
                let headers = base64::engine::general_purpose::STANDARD
                    .decode(&record.headers)
                    .unwrap_or_default();
                if !headers.is_empty() {
                    pcap.packet(record.time_ns, record.packet_len, &headers)
                        .map_err(pcap_error)?;
                }
            }
            if matches!(format, Format::Table) {
                describe(&mut out, &parsed)?;
            }
        }
        if matches!(format, Format::Json) {
            out.write_all(line)?;
        }
        out.write_all(b"\n")?;
        // Written out whenever the agent has sent nothing more yet: a
        // batch costs one write, and what was shown is always on disk.
        if !lines.has_line() {
            out.flush()?;
            if let Some(pcap) = &mut pcap {
                pcap.flush().map_err(pcap_error)?;
            }
        }
    };
    out.flush()?;
    if let Some(pcap) = &mut pcap {
        pcap.flush().map_err(pcap_error)?;
    }
    if ended {
        return Err(CliError::TraceEnded);
    }
    Ok(())
}

/// One line for people (without its newline).
fn describe(out: &mut impl Write, line: &TraceLine) -> std::io::Result<()> {
    match line {
        TraceLine::Start(start) => write!(
            out,
            "tracing on node {} ({} tracer{} connected, {} events lost so far{}), {}; Ctrl-C to stop",
            start.node,
            start.tracers,
            if start.tracers == 1 { "" } else { "s" },
            start.lost,
            if start.replayed > 0 {
                format!(", {} replayed", start.replayed)
            } else {
                String::new()
            },
            if start.all_packets {
                "every packet"
            } else {
                "what is new about each flow (--all-packets for every packet)"
            }
        ),
        TraceLine::Lost(lost) => write!(
            out,
            "!! events lost: {} (ring buffer full), {} (this tracer too slow); {} lost in all",
            lost.ring, lost.skipped, lost.ring_total
        ),
        TraceLine::Event(record) => describe_event(out, record),
    }
}

/// An event, written piece by piece (no `String` per field).
fn describe_event(out: &mut impl Write, r: &TraceRecord) -> std::io::Result<()> {
    clock(out, r.time_ns)?;
    write!(out, " {} ", r.node)?;
    if let Some(endpoint) = &r.endpoint {
        write!(out, "{endpoint}/")?;
    }
    write!(out, "{} {} ", r.interface, r.protocol)?;
    let ports = r.protocol == "tcp" || r.protocol == "udp";
    let tuple = |out: &mut dyn Write, t: &Tuple| -> std::io::Result<()> {
        addr(out, t.src, t.sport, ports, &r.names)?;
        out.write_all(b" -> ")?;
        addr(out, t.dst, t.dport, ports, &r.names)
    };
    tuple(out, &r.before)?;
    if r.after != r.before {
        out.write_all(b" => ")?;
        tuple(out, &r.after)?;
    }
    write!(out, " {}", r.verdict)?;
    if let Some(task) = &r.task {
        write!(out, " to {task} task")?;
    }
    if let Some(snat) = r.snat {
        out.write_all(b" (SNAT to ")?;
        addr(out, snat, 0, false, &r.names)?;
        out.write_all(b")")?;
    }
    if let Some(reason) = &r.reason {
        let answer = match (r.verdict.as_str(), reason.as_str(), r.protocol.as_str()) {
            ("drop", "no-backend", "tcp") => ": RST sent",
            ("drop", "no-backend", "udp") => ": ICMP port unreachable sent",
            ("pass", "no-backend", _) => ": the node answers as a closed port",
            _ => "",
        };
        write!(out, " ({reason}{answer})")?;
    }
    if let Some(service) = &r.service {
        write!(out, " service={service}")?;
    }
    Ok(())
}

fn addr(
    out: &mut dyn Write,
    ip: Ipv4Addr,
    port: u16,
    ports: bool,
    names: &BTreeMap<Ipv4Addr, String>,
) -> std::io::Result<()> {
    if ports {
        write!(out, "{ip}:{port}")?;
    } else {
        write!(out, "{ip}")?;
    }
    if let Some(name) = names.get(&ip) {
        write!(out, "[{name}]")?;
    }
    Ok(())
}

/// `HH:MM:SS.micros`, UTC.
fn clock(out: &mut impl Write, time_ns: u64) -> std::io::Result<()> {
    let secs = time_ns / 1_000_000_000;
    let micros = time_ns % 1_000_000_000 / 1_000;
    write!(
        out,
        "{:02}:{:02}:{:02}.{micros:06}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(record: &TraceRecord) -> String {
        let mut out = Vec::new();
        describe_event(&mut out, record).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn an_event_reads_as_one_line() {
        let tuple = |src: [u8; 4], sport, dst: [u8; 4], dport| Tuple {
            src: src.into(),
            sport,
            dst: dst.into(),
            dport,
        };
        let mut names = BTreeMap::new();
        names.insert(Ipv4Addr::new(10, 0, 0, 250), "web (vip)".to_owned());
        names.insert(Ipv4Addr::new(10, 0, 0, 3), "web.1".to_owned());
        let record = TraceRecord {
            time_ns: 3_723_000_456_000 + 86_400 * 1_000_000_000,
            node: "n1".into(),
            interface: "ve-c0ffee00".into(),
            endpoint: Some("client.1".into()),
            verdict: "translate".into(),
            reason: None,
            protocol: "tcp".into(),
            before: tuple([10, 0, 0, 2], 40000, [10, 0, 0, 250], 80),
            after: tuple([10, 0, 0, 2], 40000, [10, 0, 0, 3], 80),
            service: Some("web".into()),
            network: Some("appnet".into()),
            task: None,
            snat: None,
            names,
            packet_len: 74,
            headers: String::new(),
        };
        assert_eq!(
            text(&record),
            "01:02:03.000456 n1 client.1/ve-c0ffee00 tcp 10.0.0.2:40000 -> 10.0.0.250:80[web (vip)] \
             => 10.0.0.2:40000 -> 10.0.0.3:80[web.1] translate service=web"
        );
        let dropped = TraceRecord {
            verdict: "drop".into(),
            reason: Some("no-backend".into()),
            after: record.before,
            ..record
        };
        assert!(text(&dropped).ends_with("drop (no-backend: RST sent) service=web"));
        let mut names = BTreeMap::new();
        names.insert(Ipv4Addr::new(198, 18, 0, 11), "node n1".to_owned());
        names.insert(Ipv4Addr::new(10, 0, 0, 3), "web.1".to_owned());
        names.insert(Ipv4Addr::new(10, 0, 0, 254), "node n1 ingress".to_owned());
        let forwarded = TraceRecord {
            interface: "eth0".into(),
            endpoint: Some("web.1".into()),
            verdict: "forward".into(),
            reason: None,
            before: tuple([198, 18, 0, 200], 40000, [198, 18, 0, 11], 8080),
            after: tuple([198, 18, 0, 200], 40000, [10, 0, 0, 3], 80),
            task: Some("remote".into()),
            snat: Some(Ipv4Addr::new(10, 0, 0, 254)),
            names,
            ..dropped.clone()
        };
        assert!(text(&forwarded).ends_with(
            "web.1/eth0 tcp 198.18.0.200:40000 -> 198.18.0.11:8080[node n1] \
             => 198.18.0.200:40000 -> 10.0.0.3:80[web.1] forward to remote task \
             (SNAT to 10.0.0.254[node n1 ingress]) service=web"
        ));
        let closed = TraceRecord {
            verdict: "pass".into(),
            reason: Some("no-backend".into()),
            ..dropped
        };
        assert!(text(&closed)
            .ends_with("pass (no-backend: the node answers as a closed port) service=web"));
    }
}
