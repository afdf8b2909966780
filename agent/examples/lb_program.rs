//! Programs the load balancer through the library's real code path, for
//! `cargo xtask bench lb`: loads the datapath with its maps pinned under
//! `--bpffs`, attaches it to `--ifname` in namespace `--netns`, then times
//! `LoadBalancer::sync` with every service of `--services FILE` (one line
//! per service: `VIP BACKEND...`, the measured target last) from empty, and
//! `--changes` times one backend change: `--extra` joins the target's
//! backends, then leaves again. Prints one JSON object; the programs and
//! pinned maps stay behind for the bench to send traffic through.
//!
//! `--trace on` then traces as `netctl trace` would while the bench sends
//! traffic: it opens the library's `Tracer` on the pinned maps, subscribes
//! (which sets TRACE_ON), prints the JSON object, and consumes every record
//! (drained from TRACE_EVENTS, decoded, named, written as its JSON line)
//! until its stdin closes; then switches tracing off and prints a second
//! object with the records consumed and TRACE_STATS' emitted and lost.
//!
//! `cargo run --release -p netagent --example lb_program -- --bpffs DIR
//! --netns /run/netns/NS --ifname IF --services FILE --extra IP --changes 5
//! [--trace on]`

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};
use netagent::{
    dataplane::{lb_maps::MapSizes, Datapath},
    lb::{plan, LoadBalancer, Seen},
    model::{Endpoint, EndpointMode, Service, ServiceVip},
    trace::{names::AddressBook, Tracer},
};

const NODE: &str = "bench";
const NETWORK: &str = "benchnet";
const NETWORK_ID: &str = "benchnet-id";

struct Args {
    bpffs: PathBuf,
    netns: PathBuf,
    ifname: String,
    services: PathBuf,
    extra: Ipv4Addr,
    changes: usize,
    /// Consume trace events while the bench measures.
    trace: bool,
    /// Every packet, not only what is new about each flow (`--trace all`).
    all_packets: bool,
}

fn args() -> Result<Args> {
    let mut raw = std::env::args().skip(1);
    let (mut bpffs, mut netns, mut ifname, mut services, mut extra, mut changes) =
        (None, None, None, None, None, 5);
    let (mut trace, mut all_packets) = (false, false);
    while let Some(flag) = raw.next() {
        let value = raw
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bpffs" => bpffs = Some(PathBuf::from(value)),
            "--netns" => netns = Some(PathBuf::from(value)),
            "--ifname" => ifname = Some(value),
            "--services" => services = Some(PathBuf::from(value)),
            "--extra" => extra = Some(value.parse().context("--extra is not an IPv4 address")?),
            "--changes" => changes = value.parse().context("--changes is not a number")?,
            "--trace" => {
                (trace, all_packets) = match value.as_str() {
                    "on" => (true, false),
                    "all" => (true, true),
                    "off" => (false, false),
                    _ => bail!("--trace takes on, all or off, not {value:?}"),
                }
            }
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(Args {
        bpffs: bpffs.context("--bpffs is required")?,
        netns: netns.context("--netns is required")?,
        ifname: ifname.context("--ifname is required")?,
        services: services.context("--services is required")?,
        extra: extra.context("--extra is required")?,
        changes,
        trace,
        all_packets,
    })
}

/// Services `svc<n>` and their tasks, from the `VIP BACKEND...` lines.
fn scenario(text: &str) -> Result<(Vec<Service>, Vec<Endpoint>)> {
    let mut services = Vec::new();
    let mut endpoints = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut addrs = line.split_whitespace().map(str::parse::<Ipv4Addr>);
        let vip = addrs
            .next()
            .with_context(|| format!("line {}: empty", n + 1))?
            .with_context(|| format!("line {}: bad VIP", n + 1))?;
        let name = format!("svc{n}");
        for (t, backend) in addrs.enumerate() {
            let backend = backend.with_context(|| format!("line {}: bad backend", n + 1))?;
            endpoints.push(Endpoint {
                service: Some(name.clone()),
                ..Endpoint::new(format!("{name}-t{t}"), NETWORK, NETWORK_ID, NODE, backend)
            });
        }
        services.push(Service {
            id: format!("{name}-id"),
            name,
            endpoint_mode: EndpointMode::Vip,
            vips: vec![ServiceVip {
                network: NETWORK.into(),
                network_id: NETWORK_ID.into(),
                addr: vip,
            }],
            networks: vec![NETWORK.into()],
            ports: Vec::new(),
        });
    }
    Ok((services, endpoints))
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let args = args()?;
    let text = std::fs::read_to_string(&args.services)
        .with_context(|| format!("reading {}", args.services.display()))?;
    let (services, mut endpoints) = scenario(&text)?;
    let target = services.last().context("no service")?.name.clone();

    let start = Instant::now();
    let lb = LoadBalancer::load(&args.bpffs, MapSizes::default())?;
    let load_ms = ms(start);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(lb.attach_endpoint(&args.netns, &args.ifname))?;

    let live: BTreeSet<String> = [NODE.to_owned()].into();
    let seen = Seen {
        settled: true,
        live_nodes: &live,
    };
    let start = Instant::now();
    lb.sync(&services, &endpoints, &seen)?;
    let program_ms = ms(start);

    // One backend change, each way: what a reconcile pass costs when one
    // task of one service comes or goes, planning included.
    let extra = Endpoint {
        service: Some(target),
        ..Endpoint::new("extra", NETWORK, NETWORK_ID, NODE, args.extra)
    };
    let mut change_ms = Vec::new();
    let mut plan_ms = Vec::new();
    for _ in 0..args.changes {
        // The pure planning alone, for comparison: its share of a pass.
        let start = Instant::now();
        std::hint::black_box(plan::desired(&services, &endpoints));
        plan_ms.push(ms(start));
        endpoints.push(extra.clone());
        let start = Instant::now();
        lb.sync(&services, &endpoints, &seen)?;
        change_ms.push(ms(start));
        endpoints.pop();
        let start = Instant::now();
        lb.sync(&services, &endpoints, &seen)?;
        change_ms.push(ms(start));
    }
    let report = serde_json::json!({
        "services": services.len(),
        "load_ms": load_ms,
        "program_ms": program_ms,
        "change_ms": change_ms,
        "plan_ms": plan_ms,
    });
    if args.trace {
        return trace_until_stdin_closes(&args.bpffs, args.all_packets, &report);
    }
    println!("{report}");
    Ok(())
}

/// Tracing on, as a connected `netctl trace` holds it, while the bench
/// measures: prints `report` once the flag is set, consumes every record
/// until stdin closes, then prints what was traced.
fn trace_until_stdin_closes(
    bpffs: &std::path::Path,
    all_packets: bool,
    report: &serde_json::Value,
) -> Result<()> {
    // A second handle on the pinned maps, as the agent opens its tracer
    // next to the load balancer.
    let mut datapath = Datapath::load(bpffs, &MapSizes::default())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        // EOF (or an error) on stdin: the bench is done measuring.
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = closed_tx.send(());
    });
    runtime.block_on(async {
        let tracer = Tracer::open(&mut datapath, NODE)?;
        tracer.spawn(Box::new(|| Box::pin(async { AddressBook::default() })))?;
        let subscribed = tracer.subscribe(None, all_packets)?;
        println!("{report}");
        let mut receiver = subscribed.receiver;
        let (mut records, mut bytes, mut skipped) = (0u64, 0u64, 0u64);
        loop {
            tokio::select! {
                received = receiver.recv() => match received {
                    Some((batch, missed)) => {
                        records += batch.len() as u64;
                        bytes += std::hint::black_box(batch.lines()).len() as u64;
                        skipped += missed;
                    }
                    None => break,
                },
                _ = &mut closed => break,
            }
        }
        drop(subscribed.subscription);
        let stats = tracer.stats();
        println!(
            "{}",
            serde_json::json!({
                "trace_records": records,
                "trace_bytes": bytes,
                "trace_skipped": skipped,
                "trace_emitted": stats.emitted,
                "trace_lost": stats.lost,
            })
        );
        Ok::<_, anyhow::Error>(())
    })
}
