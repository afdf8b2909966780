//! `cargo xtask bench lb [--services 1,1000,10000] [--rounds R] [--seconds S]
//! [--threads T] [--connections C] [--variants ebpf,notrace,traceon,traceall,iptables,nft]`:
//! one client namespace opens short TCP
//! connections to a VIP with two real backends, the other N-1 services
//! programmed before it as decoys, through (a) netagent's eBPF load
//! balancer, (b) iptables DNAT written as kube-proxy's iptables mode writes
//! it and (c) nftables written as its nftables mode writes it
//! (`kube_proxy`). For each N and each of the three, a fresh topology:
//!
//! ```text
//!   <prefix>-lbcl (client, 198.18.64.10) ─┐
//!   <prefix>-lbb1 (backend, .21) ─────────┼─ br0 in <prefix>-lbbr
//!   <prefix>-lbb2 (backend, .22) ─────────┘      (eBPF on the client's port)
//! ```
//!
//! The eBPF load balancer sits on the client's bridge port, as netagent
//! puts it on an endpoint's veth; the kube-proxy rules sit in the client
//! namespace's nat hooks (kube-proxy hooks KUBE-SERVICES into both
//! PREROUTING, for pods, and OUTPUT, for processes of the host), so all
//! three translate on the same path between the same namespaces.
//!
//! Measured: connect latency p50/p99 (connections one after another),
//! connections per second (connect, request, answer, close; T threads),
//! the time to program N services from empty and the time of one backend
//! change at N (a third backend joins the measured service, then leaves).
//! eBPF programming goes through the library's real code path,
//! `LoadBalancer::sync` with N services (planning included), driven by
//! `agent/examples/lb_program.rs`; the anchors' through `iptables-restore`
//! and `nft -f`, timed as processes. Medians over the rounds, which
//! alternate between the cases (starting one further each round) so that
//! noise hits them alike.
//!
//! Tracing (`netctl trace`) adds two eBPF cases: `notrace`, the programs
//! built without their `trace` feature (the example built a second time
//! with NETAGENT_EBPF_NO_TRACE=1 into `<target>/bench-notrace`), the
//! reference for `ebpf` (trace code in, nobody tracing); and `traceon`,
//! where `lb_program --trace on` holds tracing on (the default mode: what
//! is new about each flow) and consumes every event through the library's
//! `Tracer` while the traffic runs; `traceall` (not in the default set) the
//! same with every packet reported (`--trace all`, as `netctl trace
//! --all-packets` or `--pcap`).

use std::{
    collections::BTreeMap,
    io::Read,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use netlab::{Lab, LabSpec};

use super::{
    kube_proxy::{self, Service},
    report::{self, TableRow},
    tcp_load,
};
use crate::workspace;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 64, 10);
const BACKENDS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 18, 64, 21),
    Ipv4Addr::new(198, 18, 64, 22),
];
/// The backend that joins and leaves for the change measurement (no
/// traffic goes to it: the change is undone before any is sent).
const EXTRA_BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 64, 23);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 64, 250);
const PORT: u16 = 80;
const PREFIX_LEN: u8 = 24;
/// Each way, per case.
const CHANGES: usize = 5;
const WARMUP: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    /// Built without trace code.
    NoTrace,
    /// The normal build, nobody tracing.
    Ebpf,
    /// The normal build, traced (what is new about each flow).
    TraceOn,
    /// The normal build, traced packet by packet (`--all-packets`).
    TraceAll,
    Iptables,
    Nftables,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::NoTrace,
        Mode::Ebpf,
        Mode::TraceOn,
        Mode::Iptables,
        Mode::Nftables,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::NoTrace => "ebpf-notrace",
            Mode::Ebpf => "ebpf",
            Mode::TraceOn => "ebpf-traceon",
            Mode::TraceAll => "ebpf-traceall",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }

    /// What `--variants` calls it.
    fn parse(name: &str) -> Option<Mode> {
        Some(match name {
            "notrace" => Mode::NoTrace,
            "ebpf" => Mode::Ebpf,
            "traceon" => Mode::TraceOn,
            "traceall" => Mode::TraceAll,
            "iptables" => Mode::Iptables,
            "nft" | "nftables" => Mode::Nftables,
            _ => return None,
        })
    }
}

#[derive(Debug)]
struct Options {
    services: Vec<usize>,
    rounds: usize,
    seconds: u64,
    threads: usize,
    connections: usize,
    /// The cases measured, in the order of a round.
    variants: Vec<Mode>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        services: vec![1, 1000, 10_000],
        rounds: 3,
        seconds: 3,
        threads: 4,
        connections: 2000,
        variants: Mode::ALL.to_vec(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        let number = |what: &str| -> Result<usize> {
            match value.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => bail!("{what} takes a number of at least 1, not {value:?}"),
            }
        };
        match arg.as_str() {
            "--services" => {
                options.services = value
                    .split(',')
                    .map(|n| match n.trim().parse::<usize>() {
                        Ok(n) if (1..=16_000).contains(&n) => Ok(n),
                        _ => bail!("--services takes counts from 1 to 16000, like 1,1000,10000"),
                    })
                    .collect::<Result<_>>()?
            }
            "--rounds" => options.rounds = number("--rounds")?,
            "--seconds" => options.seconds = number("--seconds")? as u64,
            "--threads" => options.threads = number("--threads")?,
            "--connections" => options.connections = number("--connections")?,
            "--variants" => {
                let mut variants = value
                    .split(',')
                    .map(|v| {
                        Mode::parse(v.trim()).with_context(|| {
                            format!(
                                "--variants: unknown {v:?}; pick from \
                                 ebpf,notrace,traceon,traceall,iptables,nft"
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                variants.sort();
                variants.dedup();
                options.variants = variants;
            }
            other => bail!(
                "unknown option {other}: use --services N,N,.. --rounds R --seconds S \
                 --threads T --connections C --variants ebpf,notrace,traceon,traceall,iptables,nft"
            ),
        }
    }
    Ok(options)
}

pub fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let programs = Programs::build(&options.variants)?;
    let mut lab = Lab::up(LabSpec::nodes(0)).context("building the lab")?;
    let result = measure(&lab, &options, &programs);
    let torn = lab.teardown();
    result.and_then(|()| torn.context("tearing down"))
}

/// The `lb_program` builds: the normal one, and the one without trace code.
struct Programs {
    normal: PathBuf,
    no_trace: PathBuf,
}

impl Programs {
    /// Builds the example (release), a second time without trace code into
    /// a target dir of its own when `notrace` is measured: building it in
    /// the normal one would rebuild the agent back and forth.
    fn build(variants: &[Mode]) -> Result<Self> {
        let build = [
            "build",
            "--release",
            "-p",
            "netagent",
            "--example",
            "lb_program",
        ];
        let example = |target: &Path| target.join("release/examples/lb_program");
        let target = workspace::target_dir();
        let no_trace_target = target.join("bench-notrace");
        if variants
            .iter()
            .any(|m| matches!(m, Mode::Ebpf | Mode::TraceOn | Mode::TraceAll))
        {
            workspace::cargo(&build)?;
        }
        if variants.contains(&Mode::NoTrace) {
            let dir = no_trace_target.display().to_string();
            let mut args = build.to_vec();
            args.extend(["--target-dir", &dir]);
            workspace::cargo_with_env(&args, &[("NETAGENT_EBPF_NO_TRACE", "1")])?;
        }
        Ok(Self {
            normal: example(&target),
            no_trace: example(&no_trace_target),
        })
    }
}

/// `n` services, decoys first and the measured one last. Decoy k has VIP
/// 198.19.0.0+k and backends 198.19.64.0+k, 198.19.128.0+k: all in the
/// lab's range, none of them ever sent a packet.
fn scenario(n: usize) -> Vec<Service> {
    let offset =
        |base: [u8; 4], k: usize| Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + k as u32);
    let mut services: Vec<Service> = (1..n)
        .map(|k| Service {
            name: format!("svc{k}"),
            vip: offset([198, 19, 0, 0], k),
            port: PORT,
            backends: vec![offset([198, 19, 64, 0], k), offset([198, 19, 128, 0], k)],
        })
        .collect();
    services.push(Service {
        name: "target".into(),
        vip: VIP,
        port: PORT,
        backends: BACKENDS.to_vec(),
    });
    services
}

/// What one case measured.
#[derive(Clone, Debug, Default)]
struct Sample {
    p50_us: f64,
    p99_us: f64,
    rate: f64,
    program_ms: f64,
    change_ms: f64,
    /// Connections that failed in the rate phase.
    failed: u64,
    /// With tracing on: what was traced meanwhile.
    traced: Option<Traced>,
}

/// What `lb_program --trace on` reports when it stops.
#[derive(Clone, Copy, Debug, Default)]
struct Traced {
    /// Records the tracer consumed (decoded, named, serialised).
    records: u64,
    /// Events the programs wrote into the ring (TRACE_STATS).
    emitted: u64,
    /// Events lost to a full ring (TRACE_STATS).
    lost: u64,
    /// Records the consumer fell behind on (broadcast lag).
    skipped: u64,
}

fn measure(lab: &Lab, options: &Options, programs: &Programs) -> Result<()> {
    let mut samples: BTreeMap<(usize, Mode), Vec<Sample>> = BTreeMap::new();
    for round in 1..=options.rounds {
        // Each round starts one case further, so no case always runs first
        // (or right after a compile burst of the neighbours).
        let mut order = options.variants.clone();
        let first = (round - 1) % order.len();
        order.rotate_left(first);
        for &n in &options.services {
            let services = scenario(n);
            for &mode in &order {
                println!(
                    "round {round}/{}: {n} services, {}",
                    options.rounds,
                    mode.name()
                );
                let sample = case(lab, options, programs, mode, &services, round)
                    .with_context(|| format!("{} with {n} services", mode.name()))?;
                println!(
                    "  connect p50 {:.0} us, p99 {:.0} us, {:.0} conn/s, program {:.1} ms, \
                     change {:.2} ms",
                    sample.p50_us, sample.p99_us, sample.rate, sample.program_ms, sample.change_ms
                );
                if let Some(t) = sample.traced {
                    println!(
                        "  traced: {} events emitted, {} lost, {} records consumed, {} skipped",
                        t.emitted, t.lost, t.records, t.skipped
                    );
                }
                samples.entry((n, mode)).or_default().push(sample);
            }
        }
    }
    write_report(options, &samples)
}

/// One measurement of `mode` with `services`, in a topology of its own.
fn case(
    lab: &Lab,
    options: &Options,
    programs: &Programs,
    mode: Mode,
    services: &[Service],
    round: usize,
) -> Result<Sample> {
    let topology = Topology::build(lab.prefix())?;
    let n = services.len();
    let bpffs = Path::new("/sys/fs/bpf")
        .join(lab.prefix())
        .join(format!("lb-{n}-{round}"));
    let mut tracing = None;
    let programmed = match mode {
        Mode::Ebpf => program_ebpf(lab, &topology, services, &bpffs, &programs.normal),
        Mode::NoTrace => program_ebpf(lab, &topology, services, &bpffs, &programs.no_trace),
        Mode::TraceOn | Mode::TraceAll => {
            let all = mode == Mode::TraceAll;
            trace_ebpf(lab, &topology, services, &bpffs, &programs.normal, all).map(
                |(done, session)| {
                    tracing = Some(session);
                    done
                },
            )
        }
        Mode::Iptables => program_iptables(lab, &topology, services),
        Mode::Nftables => program_nft(lab, &topology, services),
    };
    let measured = programmed.and_then(|(program_ms, changes)| {
        let target = SocketAddr::from((VIP, PORT));
        let latencies = tcp_load::latencies(&topology.client, target, WARMUP, options.connections)?;
        let (rate, failed) = tcp_load::rate(
            &topology.client,
            target,
            options.threads,
            Duration::from_secs(options.seconds),
        )?;
        if failed > 0 {
            println!("  {failed} connections failed under load");
        }
        let traced = tracing.take().map(TraceSession::finish).transpose()?;
        let us = |q| tcp_load::quantile(&latencies, q).as_secs_f64() * 1e6;
        Ok(Sample {
            p50_us: us(0.5),
            p99_us: us(0.99),
            rate,
            program_ms,
            change_ms: report::median(changes),
            failed,
            traced,
        })
    });
    // A failed measurement stops the tracer (its Drop) before teardown.
    drop(tracing);
    let torn = topology.teardown();
    // The maps go with their pins once the namespaces (and the programs
    // attached in them) are gone.
    let unpinned = if bpffs.exists() {
        std::fs::remove_dir_all(&bpffs).with_context(|| format!("removing {}", bpffs.display()))
    } else {
        Ok(())
    };
    let sample = measured?;
    torn?;
    unpinned?;
    Ok(sample)
}

/// The bench's namespaces for one case; `teardown` deletes them (the lab's
/// teardown sweeps them too, as they carry its prefix).
struct Topology {
    bridge: String,
    client: String,
    backends: Vec<String>,
    servers: Vec<tcp_load::Server>,
}

fn ip(args: &[&str]) -> Result<()> {
    netlab::run("ip", args).map_err(Into::into)
}

fn sysctl(netns: &str, settings: &[&str]) -> Result<()> {
    let mut args = vec!["netns", "exec", netns, "sysctl", "-qw"];
    args.extend_from_slice(settings);
    ip(&args)
}

impl Topology {
    fn build(prefix: &str) -> Result<Self> {
        let mut topology = Topology {
            bridge: format!("{prefix}-lbbr"),
            client: format!("{prefix}-lbcl"),
            backends: (1..=BACKENDS.len())
                .map(|i| format!("{prefix}-lbb{i}"))
                .collect(),
            servers: Vec::new(),
        };
        match topology.wire() {
            Ok(()) => Ok(topology),
            Err(error) => {
                let _ = topology.teardown();
                Err(error)
            }
        }
    }

    fn namespaces(&self) -> Vec<&str> {
        let mut all = vec![self.bridge.as_str(), self.client.as_str()];
        all.extend(self.backends.iter().map(String::as_str));
        all
    }

    fn wire(&mut self) -> Result<()> {
        for netns in self.namespaces() {
            ip(&["netns", "add", netns])?;
            sysctl(
                netns,
                &[
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            )?;
            ip(&["-n", netns, "link", "set", "lo", "up"])?;
        }
        let br = self.bridge.as_str();
        ip(&["-n", br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", br, "link", "set", "br0", "up"])?;
        // Docker's MACs (02:42:<ip>): the eBPF load balancer sends a
        // translated frame to its backend's.
        let mut hosts = vec![("vcl", self.client.clone(), CLIENT)];
        for (i, netns) in self.backends.iter().enumerate() {
            hosts.push((["vb1", "vb2"][i], netns.clone(), BACKENDS[i]));
        }
        for (port, netns, addr) in &hosts {
            let o = addr.octets();
            let mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
            ip(&[
                "-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns",
                netns,
            ])?;
            ip(&["-n", br, "link", "set", port, "master", "br0", "up"])?;
            ip(&["-n", netns, "link", "set", "eth0", "address", &mac, "up"])?;
            ip(&[
                "-n",
                netns,
                "addr",
                "add",
                &format!("{addr}/{PREFIX_LEN}"),
                "dev",
                "eth0",
            ])?;
        }
        // Plenty of client ports: the rate phase opens tens of thousands
        // of connections.
        sysctl(&self.client, &["net.ipv4.ip_local_port_range=1024 65535"])?;
        for netns in &self.backends {
            self.servers.push(tcp_load::Server::start(netns, PORT, 2)?);
        }
        Ok(())
    }

    /// Stops the servers, then deletes the namespaces in reverse order,
    /// carrying on past errors.
    fn teardown(mut self) -> Result<()> {
        self.servers.clear();
        let mut errors = Vec::new();
        for netns in self.namespaces().into_iter().rev() {
            if Path::new("/run/netns").join(netns).exists() {
                if let Err(error) = ip(&["netns", "del", netns]) {
                    errors.push(error.to_string());
                }
            }
        }
        if !errors.is_empty() {
            bail!("removing the bench namespaces: {}", errors.join("; "));
        }
        Ok(())
    }
}

/// Runs `args` inside `netns` and returns how long it took, failing on a
/// non-zero exit.
fn timed(netns: &str, args: &[&str]) -> Result<f64> {
    let start = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "{} in {netns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

fn write_input(lab: &Lab, name: &str, text: &str) -> Result<PathBuf> {
    let path = lab.state_dir().join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The measured service with the extra backend, and as it was.
fn with_extra(services: &[Service]) -> Result<(Service, Service)> {
    let target = services.last().context("no service")?.clone();
    let mut grown = target.clone();
    grown.backends.push(EXTRA_BACKEND);
    Ok((grown, target))
}

/// The `lb_program` command for `services`, pins under `bpffs`.
fn lb_program(
    lab: &Lab,
    topology: &Topology,
    services: &[Service],
    bpffs: &Path,
    program: &Path,
) -> Result<Command> {
    let lines: String = services
        .iter()
        .map(|s| {
            let backends: Vec<String> = s.backends.iter().map(Ipv4Addr::to_string).collect();
            format!("{} {}\n", s.vip, backends.join(" "))
        })
        .collect();
    let input = write_input(lab, "lb-services.txt", &lines)?;
    let mut command = Command::new(program);
    command
        .arg("--bpffs")
        .arg(bpffs)
        .arg("--netns")
        .arg(Path::new("/run/netns").join(&topology.bridge))
        .args(["--ifname", "vcl", "--extra", &EXTRA_BACKEND.to_string()])
        .arg("--services")
        .arg(&input)
        .args(["--changes", &CHANGES.to_string()]);
    Ok(command)
}

/// Programs through `lb_program` (the library's `LoadBalancer`), which
/// also attaches the programs to the client's bridge port and times the
/// changes itself.
fn program_ebpf(
    lab: &Lab,
    topology: &Topology,
    services: &[Service],
    bpffs: &Path,
    program: &Path,
) -> Result<(f64, Vec<f64>)> {
    let out = lb_program(lab, topology, services, bpffs, program)?
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "lb_program failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    programmed(&String::from_utf8_lossy(&out.stdout))
}

/// Programs as `program_ebpf`, then leaves `lb_program` running with
/// tracing on (`all_packets`: every packet), consuming events, until the
/// session finishes.
fn trace_ebpf(
    lab: &Lab,
    topology: &Topology,
    services: &[Service],
    bpffs: &Path,
    program: &Path,
    all_packets: bool,
) -> Result<((f64, Vec<f64>), TraceSession)> {
    let mode = if all_packets { "all" } else { "on" };
    let child = lb_program(lab, topology, services, bpffs, program)?
        .args(["--trace", mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", program.display()))?;
    let mut session = TraceSession { child };
    // The first line comes once tracing is on.
    let line = session.line()?;
    Ok((programmed(&line)?, session))
}

/// `lb_program --trace on`, running: tracing stays on while it lives.
struct TraceSession {
    child: Child,
}

impl TraceSession {
    /// The next line `lb_program` prints (unbuffered: one byte at a time,
    /// so nothing after the line is swallowed).
    fn line(&mut self) -> Result<String> {
        let stdout = self
            .child
            .stdout
            .as_mut()
            .context("lb_program: no stdout")?;
        let mut line = Vec::new();
        let mut byte = [0u8];
        while stdout.read(&mut byte).context("reading lb_program")? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        if line.is_empty() {
            let mut stderr = String::new();
            if let Some(err) = self.child.stderr.as_mut() {
                let _ = err.read_to_string(&mut stderr);
            }
            bail!("lb_program --trace on failed: {}", stderr.trim());
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// Closes its stdin (tracing stops) and reads what was traced.
    fn finish(mut self) -> Result<Traced> {
        drop(self.child.stdin.take());
        let line = self.line()?;
        let report: serde_json::Value =
            serde_json::from_str(&line).context("lb_program printed no trace JSON")?;
        let count = |key: &str| {
            report[key]
                .as_u64()
                .with_context(|| format!("lb_program: no {key}"))
        };
        let traced = Traced {
            records: count("trace_records")?,
            emitted: count("trace_emitted")?,
            lost: count("trace_lost")?,
            skipped: count("trace_skipped")?,
        };
        let status = self.child.wait().context("waiting for lb_program")?;
        if !status.success() {
            bail!("lb_program --trace on exited with {status}");
        }
        Ok(traced)
    }
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        // Only if `finish` did not reap it: a failed measurement.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The programming times of `lb_program`'s JSON report.
fn programmed(json: &str) -> Result<(f64, Vec<f64>)> {
    let report: serde_json::Value =
        serde_json::from_str(json.trim()).context("lb_program printed no JSON")?;
    let program_ms = report["program_ms"]
        .as_f64()
        .context("lb_program: no program_ms")?;
    let changes = report["change_ms"]
        .as_array()
        .context("lb_program: no change_ms")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    Ok((program_ms, changes))
}

fn program_iptables(
    lab: &Lab,
    topology: &Topology,
    services: &[Service],
) -> Result<(f64, Vec<f64>)> {
    let full = write_input(lab, "lb-iptables.txt", &kube_proxy::iptables_full(services))?;
    let program_ms = timed(
        &topology.client,
        &["iptables-restore", &full.display().to_string()],
    )?;
    let (grown, target) = with_extra(services)?;
    let mut others = services.to_vec();
    others.pop();
    let mut all_grown = others.clone();
    all_grown.push(grown.clone());
    let add = write_input(
        lab,
        "lb-iptables-add.txt",
        &kube_proxy::iptables_change(&all_grown, &grown, &target.backends),
    )?;
    let remove = write_input(
        lab,
        "lb-iptables-remove.txt",
        &kube_proxy::iptables_change(services, &target, &grown.backends),
    )?;
    let mut changes = Vec::new();
    for _ in 0..CHANGES {
        for file in [&add, &remove] {
            changes.push(timed(
                &topology.client,
                &["iptables-restore", "--noflush", &file.display().to_string()],
            )?);
        }
    }
    Ok((program_ms, changes))
}

fn program_nft(lab: &Lab, topology: &Topology, services: &[Service]) -> Result<(f64, Vec<f64>)> {
    let full = write_input(lab, "lb-nft.txt", &kube_proxy::nft_full(services))?;
    let program_ms = timed(
        &topology.client,
        &["nft", "-f", &full.display().to_string()],
    )?;
    let (grown, target) = with_extra(services)?;
    let add = write_input(
        lab,
        "lb-nft-add.txt",
        &kube_proxy::nft_change(&grown, &target.backends),
    )?;
    let remove = write_input(
        lab,
        "lb-nft-remove.txt",
        &kube_proxy::nft_change(&target, &grown.backends),
    )?;
    let mut changes = Vec::new();
    for _ in 0..CHANGES {
        for file in [&add, &remove] {
            changes.push(timed(
                &topology.client,
                &["nft", "-f", &file.display().to_string()],
            )?);
        }
    }
    Ok((program_ms, changes))
}

/// A metric of one sample.
type Metric = fn(&Sample) -> f64;

/// The rows giving every variant's median at each N: what, metric, digits.
const PER_VARIANT: [(&str, Metric, usize); 5] = [
    ("connect p50 (us)", |s| s.p50_us, 0),
    ("connect p99 (us)", |s| s.p99_us, 0),
    ("connections/s", |s| s.rate, 0),
    ("program N services (ms)", |s| s.program_ms, 1),
    ("one backend change (ms)", |s| s.change_ms, 2),
];

/// The ratios against nftables at each N: what, a, b, metric (a / b).
const VS_NFTABLES: [(&str, Mode, Mode, Metric); 2] = [
    (
        "ebpf / nftables conn/s (target >= 1)",
        Mode::Ebpf,
        Mode::Nftables,
        |s| s.rate,
    ),
    (
        "nftables / ebpf connect p50 (target >= 1)",
        Mode::Nftables,
        Mode::Ebpf,
        |s| s.p50_us,
    ),
];

/// The tracing ratios at each N: off must be within noise of no trace
/// code, on may cost 10%.
const TRACING: [(&str, Mode, Mode, Metric); 5] = [
    (
        "trace off / no trace conn/s (target: within noise)",
        Mode::Ebpf,
        Mode::NoTrace,
        |s| s.rate,
    ),
    (
        "trace off / no trace connect p50",
        Mode::Ebpf,
        Mode::NoTrace,
        |s| s.p50_us,
    ),
    (
        "trace on / trace off conn/s (target >= 0.9)",
        Mode::TraceOn,
        Mode::Ebpf,
        |s| s.rate,
    ),
    (
        "trace on / trace off connect p50",
        Mode::TraceOn,
        Mode::Ebpf,
        |s| s.p50_us,
    ),
    (
        "trace every packet / trace off conn/s",
        Mode::TraceAll,
        Mode::Ebpf,
        |s| s.rate,
    ),
];

fn write_report(options: &Options, samples: &BTreeMap<(usize, Mode), Vec<Sample>>) -> Result<()> {
    let med = |n: usize, mode: Mode, f: Metric| {
        report::median(
            samples
                .get(&(n, mode))
                .map(|v| v.iter().map(f).collect())
                .unwrap_or_default(),
        )
    };
    let has = |mode: Mode| options.variants.contains(&mode);
    // `a / b` of a measure, when both were measured.
    let ratio = |n: usize, a: Mode, b: Mode, f: Metric| {
        (has(a) && has(b)).then(|| format!("{:.3}", med(n, a, f) / med(n, b, f)))
    };
    let mut rows = Vec::new();
    for &n in &options.services {
        let line = |f: Metric, digits: usize| {
            options
                .variants
                .iter()
                .map(|&m| format!("{} {:.digits$}", m.name(), med(n, m, f)))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        for (what, metric, digits) in PER_VARIANT {
            rows.push(TableRow::new(format!("N={n} {what}"), line(metric, digits)));
        }
    }
    let (first, last) = (
        options.services.iter().copied().min().unwrap_or(1),
        options.services.iter().copied().max().unwrap_or(1),
    );
    let mut push = |label: String, value: Option<String>| {
        if let Some(value) = value {
            rows.push(TableRow::new(label, value));
        }
    };
    push(
        format!("ebpf p99 at {last} / at {first} (target <= 1.05)"),
        has(Mode::Ebpf).then(|| {
            format!(
                "{:.3}",
                med(last, Mode::Ebpf, |s| s.p99_us) / med(first, Mode::Ebpf, |s| s.p99_us)
            )
        }),
    );
    for &n in &options.services {
        for (what, a, b, metric) in VS_NFTABLES {
            push(format!("N={n} {what}"), ratio(n, a, b, metric));
        }
    }
    push(
        format!("N={first} ebpf / iptables conn/s (target >= 0.9)"),
        ratio(first, Mode::Ebpf, Mode::Iptables, |s| s.rate),
    );
    push(
        format!("ebpf programs {last} services (target <= 1000 ms)"),
        has(Mode::Ebpf).then(|| format!("{:.1} ms", med(last, Mode::Ebpf, |s| s.program_ms))),
    );
    push(
        format!("ebpf one change at {last} (target <= 10 ms)"),
        has(Mode::Ebpf).then(|| format!("{:.2} ms", med(last, Mode::Ebpf, |s| s.change_ms))),
    );
    for &n in &options.services {
        for (what, a, b, metric) in TRACING {
            push(format!("N={n} {what}"), ratio(n, a, b, metric));
        }
        for (mode, what) in [(Mode::TraceOn, "traced"), (Mode::TraceAll, "traced all")] {
            let traced: Vec<Traced> = samples
                .get(&(n, mode))
                .map(|runs| runs.iter().filter_map(|s| s.traced).collect())
                .unwrap_or_default();
            push(
                format!("N={n} {what} per run: emitted / lost / consumed"),
                (!traced.is_empty()).then(|| {
                    traced
                        .iter()
                        .map(|t| format!("{}/{}/{}", t.emitted, t.lost, t.records))
                        .collect::<Vec<_>>()
                        .join(", ")
                }),
            );
        }
    }
    let data: Vec<serde_json::Value> = samples
        .iter()
        .map(|((n, mode), runs)| {
            serde_json::json!({
                "services": n,
                "mode": mode.name(),
                "runs": runs.iter().map(|s| serde_json::json!({
                    "connect_p50_us": s.p50_us,
                    "connect_p99_us": s.p99_us,
                    "connections_per_s": s.rate,
                    "program_ms": s.program_ms,
                    "change_ms": s.change_ms,
                    "failed_connections": s.failed,
                    "traced": s.traced.map(|t| serde_json::json!({
                        "emitted": t.emitted,
                        "lost": t.lost,
                        "consumed": t.records,
                        "skipped": t.skipped,
                    })),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    report::write(
        "lb",
        &rows,
        serde_json::json!({
            "rounds": options.rounds,
            "threads": options.threads,
            "seconds": options.seconds,
            "latency_connections": options.connections,
            "variants": options.variants.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "cases": data,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_variant_by_default() {
        assert_eq!(parse(&[]).unwrap().variants, Mode::ALL.to_vec());
    }

    #[test]
    fn variants_pick_cases_in_a_fixed_order() {
        let options = parse(&args(&["--variants", "traceon,nft,ebpf,notrace,ebpf"])).unwrap();
        assert_eq!(
            options.variants,
            [Mode::NoTrace, Mode::Ebpf, Mode::TraceOn, Mode::Nftables]
        );
    }

    #[test]
    fn an_unknown_variant_is_named() {
        let error = parse(&args(&["--variants", "ebpf,bogus"])).unwrap_err();
        assert!(error.to_string().contains("\"bogus\""), "{error}");
    }
}
