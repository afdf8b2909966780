//! `cargo xtask bench dns`: dnsperf against netagent's resolver (127.0.0.11
//! in a container) and against dnsmasq serving the same 10,000 names from a
//! hosts file in the same container (127.0.0.53), same run, same query
//! file: 90% cluster names, 10% names only the lab's upstream knows (both
//! forward those to it). For each: the highest rate with under 0.1% loss,
//! then p50/p99 latency at half that rate.

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

/// One dnsperf run from `netns` against `server`: (queries per second,
/// lost fraction, latencies in seconds when `verbose`).
fn dnsperf(
    lab: &Lab,
    netns: &str,
    server: &str,
    data: &str,
    max_qps: Option<u64>,
    verbose: bool,
) -> Result<(f64, f64, Vec<f64>)> {
    let mut args = vec![
        "dnsperf",
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
    let out = lab.exec(netns, &args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "dnsperf against {server} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
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
    let latencies = text
        .lines()
        .filter(|line| line.starts_with("> "))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .collect();
    Ok((qps, lost, latencies))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(at).copied().unwrap_or(0.0)
}

/// Highest rate under 0.1% loss, then (p50, p99) latency at half of it.
fn profile(lab: &Lab, netns: &str, server: &str, data: &str) -> Result<(f64, f64, f64)> {
    let (mut qps, mut lost, _) = dnsperf(lab, netns, server, data, None, false)?;
    let mut cap = qps;
    for _ in 0..4 {
        if lost < 0.001 {
            break;
        }
        cap *= 0.8;
        (qps, lost, _) = dnsperf(lab, netns, server, data, Some(cap as u64), false)?;
    }
    if lost >= 0.001 {
        bail!(
            "{server} loses {:.2}% of queries even at {cap:.0} qps",
            lost * 100.0
        );
    }
    let (_, _, mut latencies) = dnsperf(lab, netns, server, data, Some((qps / 2.0) as u64), true)?;
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok((
        qps,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    ))
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

    println!("measuring (two rounds each, alternating)");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..2 {
        ours.push(profile(lab, &client.netns, "127.0.0.11", &data)?);
        theirs.push(profile(lab, &client.netns, ANCHOR_ADDR, &data)?);
    }
    drop(anchor);
    let best = |runs: &[(f64, f64, f64)]| {
        runs.iter()
            .copied()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or_default()
    };
    let (o, t) = (best(&ours), best(&theirs));
    let ms = |s: f64| format!("{:.3} ms", s * 1000.0);
    let rows = vec![
        TableRow::new("netagent qps (< 0.1% loss)", format!("{:.0}", o.0)),
        TableRow::new("dnsmasq qps (< 0.1% loss)", format!("{:.0}", t.0)),
        TableRow::new(
            "qps ratio netagent / dnsmasq (target >= 1.0)",
            format!("{:.2}", o.0 / t.0),
        ),
        TableRow::new(
            "netagent p50 / p99 at half load",
            format!("{} / {}", ms(o.1), ms(o.2)),
        ),
        TableRow::new(
            "dnsmasq p50 / p99 at half load",
            format!("{} / {}", ms(t.1), ms(t.2)),
        ),
        TableRow::new("netagent p99 (target <= 1 ms)", ms(o.2)),
    ];
    report::write(
        "dns",
        &rows,
        serde_json::json!({"netagent": ours, "dnsmasq": theirs, "names": ENDPOINTS * ALIASES_PER_ENDPOINT, "forwarded_share": 0.1}),
    )
}
