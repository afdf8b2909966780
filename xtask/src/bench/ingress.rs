//! `cargo xtask bench ingress`: short TCP request/response exchanges (one
//! connection per request: connect, send, read the answer to EOF) from the
//! lab's external client to one task (on n1), through
//! (a) n1's published port (the task is local to the entry node),
//! (b) n2's published port (the mesh carries it over the overlay to n1),
//! (c) the task's own overlay address, routed by the client via n1: the same
//!     kernel path as (a) minus the published-port translation (the anchor).
//!     The same server answers it on a second port: were it the target port,
//!     (a) and (c) would give the task identical 4-tuples (same client
//!     address, ports reused), and each would run into the other's
//!     TIME_WAIT states (measured: whichever runs second drops to a fifth).
//! Rounds alternate between the three so that noise hits them alike; the
//! table reports medians of requests/s and of p99 latency, and ratios to (c).
//!
//! The load generator and the server are threads of this process that enter
//! the lab's namespaces (`setns` on their own thread only), so the
//! benchmark needs no tool beyond the lab.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use netlab::{Lab, LabSpec};
use nix::sched::{setns, CloneFlags};

use super::report::{self, TableRow};

const ROUNDS: usize = 3;
const SECONDS: u64 = 3;
/// Client threads, each with one request in flight.
const CONCURRENCY: usize = 8;
const SERVER_THREADS: usize = 4;
const TARGET_PORT: u16 = 8080;
/// The same server's port for (c).
const DIRECT_PORT: u16 = 8081;
const PUBLISHED_PORT: u16 = 18080;
const ANSWER: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

pub fn run(_args: &[String]) -> Result<()> {
    let mut lab = Lab::up(LabSpec::nodes(2)).context("building the lab")?;
    let result = measure(&mut lab);
    let torn = lab.teardown();
    result.and_then(|()| torn.context("tearing down"))
}

/// Moves the calling thread into namespace `netns` (a lab namespace).
fn enter(netns: &str) -> Result<()> {
    let file = File::open(Path::new("/run/netns").join(netns))
        .with_context(|| format!("opening namespace {netns}"))?;
    setns(file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {netns}"))
}

/// The task's server: threads inside the container namespace answering
/// every connection once, stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    netns: String,
}

impl Server {
    fn start(netns: &str) -> Result<Self> {
        let inside = netns.to_owned();
        let listeners = std::thread::spawn(move || -> Result<Vec<TcpListener>> {
            enter(&inside)?;
            [TARGET_PORT, DIRECT_PORT]
                .into_iter()
                .map(|port| Ok(TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?))
                .collect()
        })
        .join()
        .map_err(|_| anyhow!("server thread panicked"))??;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for listener in &listeners {
            for _ in 0..SERVER_THREADS {
                let listener = listener.try_clone()?;
                let stop = stop.clone();
                threads.push(std::thread::spawn(move || serve(&listener, &stop)));
            }
        }
        Ok(Server {
            stop,
            threads,
            netns: netns.to_owned(),
        })
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    let mut request = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        if conn.read(&mut request).is_ok() {
            let _ = conn.write_all(ANSWER);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake every blocked accept with a connection of our own, made
        // inside the container (never from this process's namespace).
        let netns = self.netns.clone();
        let threads = self.threads.len();
        let _ = std::thread::spawn(move || {
            if enter(&netns).is_ok() {
                for port in [TARGET_PORT, DIRECT_PORT] {
                    for _ in 0..threads / 2 {
                        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
                    }
                }
            }
        })
        .join();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One request: connect, send, read to EOF.
fn exchange(target: SocketAddr) -> Result<()> {
    let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut answer = Vec::with_capacity(64);
    conn.read_to_end(&mut answer)?;
    if answer != ANSWER {
        bail!("unexpected answer {:?}", String::from_utf8_lossy(&answer));
    }
    Ok(())
}

/// What one load run measured.
struct Load {
    per_second: f64,
    p99: Duration,
    errors: usize,
}

/// `CONCURRENCY` closed-loop clients in namespace `netns` against `target`
/// for `SECONDS`.
fn load(netns: &str, target: SocketAddr) -> Result<Load> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(SECONDS);
    let mut clients = Vec::new();
    for _ in 0..CONCURRENCY {
        let netns = netns.to_owned();
        clients.push(std::thread::spawn(
            move || -> Result<(Vec<Duration>, usize)> {
                enter(&netns)?;
                let (mut latencies, mut errors) = (Vec::new(), 0);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match exchange(target) {
                        Ok(()) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                Ok((latencies, errors))
            },
        ));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for client in clients {
        let (latencies, e) = client
            .join()
            .map_err(|_| anyhow!("client thread panicked"))??;
        all.extend(latencies);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let p99 = all
        .get((all.len() * 99 / 100).min(all.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    Ok(Load {
        per_second: all.len() as f64 / elapsed,
        p99,
        errors,
    })
}

fn measure(lab: &mut Lab) -> Result<()> {
    lab.start_agents()?;
    lab.form_cluster()?;
    lab.netctl_json(
        "n1",
        &["overlay", "create", "benchnet", "--subnet", "10.10.0.0/24"],
    )?;
    let publish = format!("published={PUBLISHED_PORT},target={TARGET_PORT}");
    lab.netctl_json(
        "n1",
        &[
            "service",
            "create",
            "web",
            "--network",
            "benchnet",
            "--publish",
            &publish,
        ],
    )?;
    let (task, endpoint) =
        lab.attach_container_with("n1", "web1", "benchnet", &["--service", "web"])?;
    let task_ip: Ipv4Addr = endpoint["ip"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .context("the task's address")?;
    let _server = Server::start(&task.netns)?;
    let ext = lab.external_netns();
    let n1 = lab.node("n1")?.addr;
    let n2 = lab.node("n2")?.addr;
    // (c): the client routes the overlay subnet to the task's node.
    let out = lab.exec(
        &ext,
        &["ip", "route", "add", "10.10.0.0/24", "via", &n1.to_string()],
    )?;
    if !out.status.success() {
        bail!("ip route add: {}", String::from_utf8_lossy(&out.stderr));
    }
    let targets = [
        (
            "(a) published port, local task",
            SocketAddr::from((n1, PUBLISHED_PORT)),
        ),
        (
            "(b) published port, remote task",
            SocketAddr::from((n2, PUBLISHED_PORT)),
        ),
        (
            "(c) task address, direct",
            SocketAddr::from((task_ip, DIRECT_PORT)),
        ),
    ];
    // Every path answers before measuring.
    for (label, target) in targets {
        netlab::wait_until(Duration::from_secs(20), || {
            let ext = ext.clone();
            std::thread::spawn(move || enter(&ext).and_then(|()| exchange(target)))
                .join()
                .ok()?
                .ok()
        })
        .map_err(|_| anyhow!("{label}: {target} never answered\n{}", lab.agent_logs(20)))?;
    }
    let mut rates = [Vec::new(), Vec::new(), Vec::new()];
    let mut p99s = [Vec::new(), Vec::new(), Vec::new()];
    let mut errors = 0;
    for round in 1..=ROUNDS {
        println!("round {round}/{ROUNDS}");
        for (i, (_, target)) in targets.iter().enumerate() {
            let run = load(&ext, *target)?;
            rates[i].push(run.per_second);
            p99s[i].push(run.p99.as_secs_f64() * 1e3);
            errors += run.errors;
        }
    }
    let rate: Vec<f64> = rates.iter().map(|r| report::median(r.clone())).collect();
    let p99: Vec<f64> = p99s.iter().map(|r| report::median(r.clone())).collect();
    let mut rows = Vec::new();
    for (i, (label, _)) in targets.iter().enumerate() {
        rows.push(TableRow::new(
            format!("{label}: requests/s, p99 (median)"),
            format!("{:.0} /s, {:.2} ms", rate[i], p99[i]),
        ));
    }
    rows.push(TableRow::new(
        "(a) / (c) requests/s (target >= 0.90)",
        format!("{:.3}", rate[0] / rate[2]),
    ));
    rows.push(TableRow::new(
        "(b) / (c) requests/s (target >= 0.75)",
        format!("{:.3}", rate[1] / rate[2]),
    ));
    rows.push(TableRow::new(
        "failed requests (all runs)",
        errors.to_string(),
    ));
    report::write(
        "ingress",
        &rows,
        serde_json::json!({
            "requests_per_second": {"local": rates[0], "remote": rates[1], "direct": rates[2]},
            "p99_ms": {"local": p99s[0], "remote": p99s[1], "direct": p99s[2]},
            "concurrency": CONCURRENCY,
            "seconds": SECONDS,
            "errors": errors,
        }),
    )
}
