//! `cargo xtask bench converge [--nodes N] [--attaches M]`: how long an
//! endpoint attached on one node takes to be programmed (neighbour entry on
//! vxlan0) in the sandbox of every other node, and how long a killed node's
//! entries take to leave every other node.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use netlab::{Lab, LabSpec};
use nix::sys::signal::Signal;

use super::report::{self, TableRow};

const NETWORK: &str = "convnet";

struct Options {
    nodes: usize,
    attaches: usize,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        nodes: 20,
        attaches: 50,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--nodes" => options.nodes = value.parse().context("--nodes takes a number")?,
            "--attaches" => {
                options.attaches = value.parse().context("--attaches takes a number")?
            }
            other => bail!("unknown option {other}: use --nodes N and --attaches M"),
        }
    }
    if options.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    Ok(options)
}

pub fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let mut lab = Lab::up(LabSpec::nodes(options.nodes)).context("building the lab")?;
    let result = measure(&mut lab, &options);
    let torn = lab.teardown();
    result.and_then(|()| torn.context("tearing down"))
}

fn neighbours(netns: &str) -> String {
    std::process::Command::new("ip")
        .args(["-n", netns, "neigh", "show", "dev", "vxlan0"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// Waits, one thread per sandbox, until `present(ip)` holds in each of
/// `sandboxes`; returns the time the last one got there, from `start`.
fn time_until_all(
    sandboxes: &[String],
    ip: &str,
    present: bool,
    start: Instant,
) -> Result<Duration> {
    let deadline = Duration::from_secs(30);
    let times: Vec<Option<Duration>> = thread::scope(|scope| {
        let handles: Vec<_> = sandboxes
            .iter()
            .map(|netns| {
                scope.spawn(move || {
                    netlab::wait_until(deadline, || {
                        let seen = neighbours(netns).split_whitespace().any(|word| word == ip);
                        (seen == present).then(|| start.elapsed())
                    })
                    .ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    times
        .into_iter()
        .map(|t| t.context("a node did not converge within 30 s"))
        .try_fold(Duration::ZERO, |max, t| Ok(max.max(t?)))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(at).copied().unwrap_or_default()
}

fn measure(lab: &mut Lab, options: &Options) -> Result<()> {
    println!("starting {} agents", options.nodes);
    lab.start_agents()?;
    lab.form_cluster()?;
    let network = lab.netctl_json("n1", &["overlay", "create", NETWORK])?;
    let vni = network["vni"].as_u64().context("vni")?;
    let names: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    let prefix = lab.prefix().to_owned();
    let sandbox = |node: &str| format!("{prefix}-{node}-{vni}");

    // One endpoint per node first, so every node has a sandbox to program.
    let mut base = Vec::new();
    for (i, node) in names.iter().enumerate() {
        base.push(
            lab.attach_container(node, &format!("b{}", i + 1), NETWORK)?
                .1,
        );
    }
    let all_sandboxes: Vec<String> = names.iter().map(|n| sandbox(n)).collect();
    time_until_all(&all_sandboxes[1..], &base[0], true, Instant::now())?;

    println!("timing {} attaches", options.attaches);
    let mut samples = Vec::new();
    for i in 0..options.attaches {
        let node = &names[i % names.len()];
        let others: Vec<String> = names
            .iter()
            .filter(|n| *n != node)
            .map(|n| sandbox(n))
            .collect();
        let start = Instant::now();
        let (_, ip) = lab.attach_container(node, &format!("t{}", i + 1), NETWORK)?;
        samples.push(time_until_all(&others, &ip, true, start)?);
    }
    samples.sort();

    let victim = names.last().cloned().context("no node")?;
    let victim_ip = base.last().cloned().unwrap_or_default();
    let others: Vec<String> = names
        .iter()
        .filter(|n| **n != victim)
        .map(|n| sandbox(n))
        .collect();
    let start = Instant::now();
    lab.signal_agent(&victim, Signal::SIGKILL)?;
    let dead_cleared = time_until_all(&others, &victim_ip, false, start)?;

    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let rows = vec![
        TableRow::new("nodes", options.nodes.to_string()),
        TableRow::new(
            "attach -> programmed everywhere, p50",
            ms(percentile(&samples, 0.5)),
        ),
        TableRow::new(
            "attach -> programmed everywhere, p99 (target <= 1 s)",
            ms(percentile(&samples, 0.99)),
        ),
        TableRow::new(
            "killed node cleared everywhere (target <= 5 s)",
            ms(dead_cleared),
        ),
    ];
    report::write(
        "converge",
        &rows,
        serde_json::json!({
            "nodes": options.nodes,
            "attach_ms": samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
            "dead_node_cleared_ms": dead_cleared.as_secs_f64() * 1000.0,
        }),
    )
}
