//! `cargo xtask bench dns`: dnsperf against netagent's resolver (127.0.0.11
//! in a container) and against dnsmasq serving the same 10,000 names from a
//! hosts file in the same container (127.0.0.53), same run, same query
//! file: 90% cluster names, 10% names only the lab's upstream knows (both
//! forward those to it). For each: the highest rate with under 0.1% loss,
//! then p50/p99 latency at half that rate (and p99 of the cluster names
//! and of the forwarded names apart). Both get the same dnsperf
//! parameters (clients, outstanding queries, timeout). Alongside, from
//! `/proc`: the server's CPU time per answered query (which a busy machine
//! disturbs much less than the rates) and dnsperf's own CPU use at the
//! highest rate (near one core, the client is the bottleneck).

use std::{
    fmt::Write as _,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use netlab::{Lab, LabSpec};

use super::report::{self, TableRow};

const ENDPOINTS: usize = 100;
const ALIASES_PER_ENDPOINT: usize = 100;
const QUERIES: usize = 10_000;
const ANCHOR_ADDR: &str = "127.0.0.53";
const RUN_SECONDS: &str = "5";
/// Linux reports process times in USER_HZ ticks, 100 a second.
const TICKS_PER_SECOND: f64 = 100.0;
/// Names the lab's upstream dnsmasq answers (see netlab's upstream.hosts).
const FORWARDED: &[&str] = &[
    "example.org",
    "www.example.org",
    "external.lab",
    "upstream.lab",
];

pub fn run(_args: &[String]) -> Result<()> {
    let mut lab = Lab::up(LabSpec::nodes(1)).context("building the lab")?;
    let result = measure(&mut lab);
    let torn = lab.teardown();
    result.and_then(|()| torn.context("tearing down"))
}

/// A small deterministic generator, so that every run asks the same queries.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % bound
    }
}

fn alias(endpoint: usize, index: usize) -> String {
    format!("n{endpoint}x{index}")
}

struct Anchor(Child);

impl Drop for Anchor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one dnsperf run saw.
struct Run {
    qps: f64,
    lost: f64,
    completed: f64,
    /// Seconds of CPU the server used during the run.
    server_cpu: f64,
    /// Seconds of CPU dnsperf used.
    client_cpu: f64,
    /// Per-query latencies in seconds, each with whether the name was a
    /// forwarded one (verbose runs only).
    latencies: Vec<(bool, f64)>,
}

/// User + system CPU seconds of process `pid` (all its threads).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (is the server still running?)"))?;
    // Fields after the command name (which may hold spaces): state is 3,
    // utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    match (ticks(14), ticks(15)) {
        (Some(user), Some(system)) => Ok((user + system) / TICKS_PER_SECOND),
        _ => bail!("/proc/{pid}/stat has no CPU times: {stat}"),
    }
}

/// `times` prints the shell's, then its children's, user and system time:
/// "0m1.250s 0m0.480s".
fn children_cpu(times: &str) -> Option<f64> {
    let seconds = |field: &str| -> Option<f64> {
        let (minutes, rest) = field.split_once('m')?;
        Some(minutes.parse::<f64>().ok()? * 60.0 + rest.trim_end_matches('s').parse::<f64>().ok()?)
    };
    let line = times.lines().rev().find(|line| !line.trim().is_empty())?;
    let mut fields = line.split_whitespace();
    Some(seconds(fields.next()?)? + seconds(fields.next()?)?)
}

/// One dnsperf run from `netns` against `server` (process `server_pid`).
fn dnsperf(
    lab: &Lab,
    netns: &str,
    (server, server_pid): (&str, u32),
    data: &str,
    max_qps: Option<u64>,
    verbose: bool,
) -> Result<Run> {
    // dnsperf's report goes to a file, read once it is done: with `-v` it
    // writes one line per answer, one write() each, and a pipe would wake
    // this process for every answer of the measured run (tens of thousands
    // a second on the cores the servers and dnsperf share). `times` after
    // dnsperf: its CPU use, from the shell that waited for it.
    let report = lab.state_dir().join("dnsperf.out");
    let report_arg = report.display().to_string();
    let mut args = vec![
        "bash",
        "-c",
        "out=$1; shift; dnsperf \"$@\" >\"$out\" && times >&2",
        "dnsperf",
        &report_arg,
        "-s",
        server,
        "-d",
        data,
        "-l",
        RUN_SECONDS,
        "-c",
        "4",
        "-q",
        "200",
        "-t",
        "2",
    ];
    let qps = max_qps.map(|q| q.to_string());
    if let Some(qps) = &qps {
        args.extend(["-Q", qps]);
    }
    if verbose {
        args.push("-v");
    }
    let before = cpu_seconds(server_pid)?;
    let out = lab.exec(netns, &args)?;
    let server_cpu = cpu_seconds(server_pid)? - before;
    if !out.status.success() {
        bail!(
            "dnsperf against {server} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&report)
        .with_context(|| format!("reading dnsperf's report {}", report.display()))?;
    let field = |label: &str| -> Option<&str> {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .map(str::trim)
    };
    let qps = field("Queries per second:")
        .and_then(|v| v.parse::<f64>().ok())
        .context("dnsperf printed no queries per second")?;
    // "Queries lost:         0 (0.00%)"
    let lost = field("Queries lost:")
        .and_then(|v| v.split('(').nth(1))
        .and_then(|v| v.trim_end_matches("%)").parse::<f64>().ok())
        .unwrap_or(100.0)
        / 100.0;
    let completed = field("Queries completed:")
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("dnsperf printed no completed queries")?;
    let client_cpu = children_cpu(&String::from_utf8_lossy(&out.stderr))
        .context("no CPU times after dnsperf")?;
    // "> NOERROR n3x7 A 0.000150"
    let latencies = text
        .lines()
        .filter(|line| line.starts_with("> "))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = fields.get(2)?.trim_end_matches('.');
            let latency = fields.last()?.parse::<f64>().ok()?;
            Some((FORWARDED.contains(&name), latency))
        })
        .collect();
    Ok(Run {
        qps,
        lost,
        completed,
        server_cpu,
        client_cpu,
        latencies,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(at).copied().unwrap_or(0.0)
}

/// One server's figures in one round.
#[derive(Clone, Copy, Default)]
struct Profile {
    /// Highest rate under 0.1% loss.
    qps: f64,
    /// Latency at half that rate, seconds.
    p50: f64,
    p99: f64,
    /// p99 of the cluster names only, and of the forwarded names only.
    p99_cluster: f64,
    p99_forwarded: f64,
    /// Server CPU seconds per answered query at the highest rate.
    cpu_per_query: f64,
    /// dnsperf's CPU use at the highest rate, in cores.
    client_cores: f64,
}

/// Highest rate under 0.1% loss, then (p50, p99) latency at half of it.
fn profile(lab: &Lab, netns: &str, server: (&str, u32), data: &str) -> Result<Profile> {
    let mut run = dnsperf(lab, netns, server, data, None, false)?;
    let mut cap = run.qps;
    for _ in 0..4 {
        if run.lost < 0.001 {
            break;
        }
        cap *= 0.8;
        run = dnsperf(lab, netns, server, data, Some(cap as u64), false)?;
    }
    if run.lost >= 0.001 {
        bail!(
            "{} loses {:.2}% of queries even at {cap:.0} qps",
            server.0,
            run.lost * 100.0
        );
    }
    let seconds: f64 = RUN_SECONDS.parse()?;
    let mut latencies =
        dnsperf(lab, netns, server, data, Some((run.qps / 2.0) as u64), true)?.latencies;
    latencies.sort_by(|a, b| a.1.total_cmp(&b.1));
    let of = |forwarded: Option<bool>| -> Vec<f64> {
        latencies
            .iter()
            .filter(|(f, _)| forwarded.is_none_or(|want| *f == want))
            .map(|(_, latency)| *latency)
            .collect()
    };
    let all = of(None);
    Ok(Profile {
        qps: run.qps,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        p99_cluster: percentile(&of(Some(false)), 0.99),
        p99_forwarded: percentile(&of(Some(true)), 0.99),
        cpu_per_query: run.server_cpu / run.completed.max(1.0),
        client_cores: run.client_cpu / seconds,
    })
}

impl Profile {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "qps": self.qps,
            "p50_s": self.p50,
            "p99_s": self.p99,
            "p99_cluster_names_s": self.p99_cluster,
            "p99_forwarded_names_s": self.p99_forwarded,
            "cpu_per_query_s": self.cpu_per_query,
            "dnsperf_cores": self.client_cores,
        })
    }
}

fn measure(lab: &mut Lab) -> Result<()> {
    lab.start_agents()?;
    lab.form_cluster()?;
    lab.netctl_json(
        "n1",
        &["overlay", "create", "dnsnet", "--subnet", "10.60.0.0/16"],
    )?;
    println!("attaching {ENDPOINTS} endpoints with {ALIASES_PER_ENDPOINT} aliases each");
    let mut hosts = String::new();
    for endpoint in 0..ENDPOINTS {
        let container = lab.add_container(&format!("e{endpoint}"))?;
        let path = container.netns_path().display().to_string();
        let aliases: Vec<String> = (0..ALIASES_PER_ENDPOINT)
            .map(|i| alias(endpoint, i))
            .collect();
        let mut args = vec![
            "endpoint",
            "attach",
            "--network",
            "dnsnet",
            "--netns",
            &path,
        ];
        for a in &aliases {
            args.extend(["--alias", a.as_str()]);
        }
        let ep = lab.netctl_json("n1", &args)?;
        let ip = ep["ip"].as_str().context("endpoint without ip")?.to_owned();
        for a in &aliases {
            let _ = writeln!(hosts, "{ip} {a}");
        }
    }
    let (client, _) = lab.attach_container("n1", "client", "dnsnet")?;
    let state = lab.state_dir().to_owned();
    let hosts_file = state.join("bench.hosts");
    std::fs::write(&hosts_file, &hosts)?;

    let mut rng = Lcg(0x5eed);
    let mut queries = String::new();
    for _ in 0..QUERIES {
        if rng.next(10) == 0 {
            let _ = writeln!(queries, "{} A", FORWARDED[rng.next(FORWARDED.len())]);
        } else {
            let _ = writeln!(
                queries,
                "{} A",
                alias(rng.next(ENDPOINTS), rng.next(ALIASES_PER_ENDPOINT))
            );
        }
    }
    let data = state.join("bench.queries");
    std::fs::write(&data, &queries)?;
    let data = data.display().to_string();

    let anchor = Anchor(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &client.netns,
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
            ])
            .arg(format!("--listen-address={ANCHOR_ADDR}"))
            .args([
                "--bind-interfaces",
                "--port=53",
                "--user=root",
                "--pid-file=",
                "--server=198.18.0.2",
            ])
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the anchor dnsmasq")?,
    );
    // Both answer before measuring (the agent's table has all names).
    let probe = alias(ENDPOINTS - 1, ALIASES_PER_ENDPOINT - 1);
    for server in ["127.0.0.11", ANCHOR_ADDR] {
        netlab::wait_until(Duration::from_secs(20), || {
            let out = lab
                .exec(
                    &client.netns,
                    &[
                        "dig",
                        "+short",
                        "+time=1",
                        "+tries=1",
                        &format!("@{server}"),
                        &probe,
                    ],
                )
                .ok()?;
            (!out.stdout.is_empty()).then_some(())
        })
        .map_err(|_| anyhow::anyhow!("{server} does not answer {probe}"))?;
    }

    let agent_pid = lab
        .node("n1")?
        .agent()
        .map(|agent| agent.id.pid)
        .and_then(|pid| u32::try_from(pid).ok())
        .context("the agent of n1 is not running")?;
    let ours_at = ("127.0.0.11", agent_pid);
    let theirs_at = (ANCHOR_ADDR, anchor.0.id());
    println!("measuring (two rounds each, alternating)");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..2 {
        ours.push(profile(lab, &client.netns, ours_at, &data)?);
        theirs.push(profile(lab, &client.netns, theirs_at, &data)?);
    }
    drop(anchor);
    let best = |runs: &[Profile]| {
        runs.iter()
            .copied()
            .max_by(|a, b| a.qps.total_cmp(&b.qps))
            .unwrap_or_default()
    };
    let (o, t) = (best(&ours), best(&theirs));
    let ms = |s: f64| format!("{:.3} ms", s * 1000.0);
    let us = |s: f64| format!("{:.1} us", s * 1e6);
    let rows = vec![
        TableRow::new("netagent qps (< 0.1% loss)", format!("{:.0}", o.qps)),
        TableRow::new("dnsmasq qps (< 0.1% loss)", format!("{:.0}", t.qps)),
        TableRow::new(
            "qps ratio netagent / dnsmasq (target >= 1.0)",
            format!("{:.2}", o.qps / t.qps),
        ),
        TableRow::new(
            "netagent p50 / p99 at half load",
            format!("{} / {}", ms(o.p50), ms(o.p99)),
        ),
        TableRow::new(
            "dnsmasq p50 / p99 at half load",
            format!("{} / {}", ms(t.p50), ms(t.p99)),
        ),
        TableRow::new("netagent p99 (target <= 1 ms)", ms(o.p99)),
        TableRow::new(
            "p99 cluster / forwarded names, netagent",
            format!("{} / {}", ms(o.p99_cluster), ms(o.p99_forwarded)),
        ),
        TableRow::new(
            "p99 cluster / forwarded names, dnsmasq",
            format!("{} / {}", ms(t.p99_cluster), ms(t.p99_forwarded)),
        ),
        TableRow::new(
            "server CPU per query netagent / dnsmasq",
            format!(
                "{} / {} ({:.2})",
                us(o.cpu_per_query),
                us(t.cpu_per_query),
                o.cpu_per_query / t.cpu_per_query
            ),
        ),
        TableRow::new(
            "dnsperf CPU at max rate vs netagent / dnsmasq",
            format!("{:.2} / {:.2} cores", o.client_cores, t.client_cores),
        ),
    ];
    let runs = |runs: &[Profile]| runs.iter().map(Profile::json).collect::<Vec<_>>();
    report::write(
        "dns",
        &rows,
        serde_json::json!({"netagent": runs(&ours), "dnsmasq": runs(&theirs), "names": ENDPOINTS * ALIASES_PER_ENDPOINT, "forwarded_share": 0.1}),
    )
}
