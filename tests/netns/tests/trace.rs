//! `netctl trace`: the datapath reports what it did with each packet of a
//! VIP flow (translation, reverse translation, refusal when there is no
//! backend) to every connected tracer, with names resolved, filtered per
//! tracer, into a pcap file tcpdump reads, replayed with `--since`; and
//! while nobody traces, the datapath writes no event at all. By default a
//! flow is reported only when something new happens to it (its opening and
//! closing, not each data packet); `--all-packets` and `--pcap` get every
//! packet.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

mod common;

use common::task_server::{spawn_dying_with_us, task_of, Server, CLIENT};
use netlab::{require_root, wait_until, Container, Lab};

/// A running `netctl trace`; its output lines arrive on a channel.
struct Tracer {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
    what: String,
}

impl Tracer {
    /// Starts `netctl trace args` on `node` and waits for its first line
    /// (the agent has switched tracing on by then).
    fn start(lab: &Lab, node: &str, args: &[&str]) -> Self {
        let host = lab.node(node).expect("node").agent().expect("agent").host();
        let mut child = spawn_dying_with_us(
            Command::new(lab.netctl_bin())
                .args(["--host", &host])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut tracer = Tracer {
            child,
            lines,
            seen: Vec::new(),
            what: format!("netctl {}", args.join(" ")),
        };
        tracer.wait_for("its first line", |_| true);
        tracer
    }

    /// `netctl --format json trace FILTER...` on `node`, started as above.
    fn json(lab: &Lab, node: &str, filter: &[&str]) -> Self {
        let mut args = vec!["--format", "json", "trace"];
        args.extend_from_slice(filter);
        Self::start(lab, node, &args)
    }

    /// Its first line says whether the datapath reports every packet.
    fn assert_all_packets(&self, all: bool) {
        let want = format!(r#""all_packets":{all}"#);
        assert!(self.seen[0].contains(&want), "{:?}", self.seen);
    }

    /// Reads lines until one satisfies `check` (10 s at most); returns it.
    fn wait_for(&mut self, what: &str, check: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|l| check(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if check(&line) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("{}: no {what} in:\n{}", self.what, self.seen.join("\n"));
    }

    /// The JSON events read so far.
    fn events(&self) -> Vec<serde_json::Value> {
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "event")
            .collect()
    }

    /// Waits for a JSON event satisfying `check`.
    fn wait_event(
        &mut self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let line = self.wait_for(what, |line| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|v| v["type"] == "event" && check(&v))
        });
        serde_json::from_str(&line).expect("json")
    }

    /// Ctrl-C; its exit status and stderr.
    fn stop(mut self) -> (ExitStatus, String) {
        // Shown when the test fails (and with --nocapture).
        eprintln!("{}:\n{}", self.what, self.seen.join("\n"));
        // SAFETY: a plain signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        (self.child.wait().expect("wait"), stderr)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two nodes: a client on n1, task web.1 of `web` on n2 (serving TCP
/// 8080), and a service `empty` with no task.
struct Scene {
    lab: Lab,
    client: Container,
    client_ip: String,
    web_ip: String,
    vip: String,
    empty_vip: String,
    _server: Server,
}

impl Scene {
    fn up() -> Self {
        let mut lab = Lab::cluster_with_web(2).expect("cluster");
        lab.netctl_json("n1", &["service", "create", "empty", "--network", "appnet"])
            .expect("service empty");
        let (client, endpoint) = lab
            .attach_container_with("n1", "client", "appnet", &["--name", "client.1"])
            .expect("client");
        let (web, web_endpoint) = lab
            .attach_container_with(
                "n2",
                "web1",
                "appnet",
                &["--service", "web", "--name", "web.1"],
            )
            .expect("task");
        let server = Server::start(&web, "web1");
        let vip_of = |lab: &Lab, service: &str| {
            lab.netctl_json("n1", &["service", "inspect", service])
                .expect("inspect")["vips"][0]["addr"]
                .as_str()
                .expect("vip")
                .to_owned()
        };
        let scene = Scene {
            vip: vip_of(&lab, "web"),
            empty_vip: vip_of(&lab, "empty"),
            client_ip: endpoint["ip"].as_str().expect("ip").to_owned(),
            web_ip: web_endpoint["ip"].as_str().expect("ip").to_owned(),
            lab,
            client,
            _server: server,
        };
        // The VIP works before anything is traced.
        let mut last = String::new();
        wait_until(Duration::from_secs(20), || {
            last = scene.ask("tcp", &scene.vip);
            (last == "web1").then_some(())
        })
        .unwrap_or_else(|_| panic!("VIP never answered: {last}\n{}", scene.lab.agent_logs(30)));
        scene
    }

    /// One request from the client to vip:8080.
    fn ask(&self, proto: &str, vip: &str) -> String {
        let out = self
            .lab
            .exec(
                &self.client.netns,
                &["python3", "-c", CLIENT, proto, vip, "8080", "1"],
            )
            .expect("client");
        task_of(String::from_utf8_lossy(&out.stdout).trim()).to_owned()
    }

    /// n1's trace figures from `netctl status`: (tracers, emitted, lost).
    fn trace_status(&self) -> (u64, u64, u64) {
        let status = self.lab.netctl_json("n1", &["status"]).expect("status");
        let field = |k: &str| status["trace"][k].as_u64().expect(k);
        (field("tracers"), field("emitted"), field("lost"))
    }

    /// TRACE_ON[0] of n1's datapath, read straight from the pinned map.
    fn flag(&self) -> u32 {
        let agent = self.lab.node("n1").expect("n1").agent().expect("agent");
        let pin = agent.bpffs.join("maps/TRACE_ON");
        let out = Command::new("bpftool")
            .args(["--json", "map", "lookup", "pinned"])
            .arg(&pin)
            .args(["key", "0", "0", "0", "0"])
            .output()
            .expect("bpftool");
        let value: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("bpftool: {out:?}"));
        value["value"]
            .as_array()
            .expect("value bytes")
            .iter()
            .map(|b| match b {
                serde_json::Value::String(hex) => {
                    u32::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex")
                }
                other => other.as_u64().expect("byte") as u32,
            })
            .rev()
            .fold(0, |acc, byte| acc << 8 | byte)
    }
}

#[test]
fn a_vip_flow_is_traced_with_names_filters_pcap_and_replay() {
    require_root!();
    let mut scene = Scene::up();
    let pcap: PathBuf = scene.lab.state_dir().join("trace.pcap");
    let pcap_arg = pcap.display().to_string();

    // Four tracers at once, each with its own filter (or none); all get
    // the stream.
    let mut all = Tracer::start(&scene.lab, "n1", &["trace", "--pcap", &pcap_arg]);
    assert!(all.seen[0].starts_with("tracing on node"), "{:?}", all.seen);
    let mut web = Tracer::json(&scene.lab, "n1", &["--service", "web"]);
    let mut drops = Tracer::json(&scene.lab, "n1", &["--verdict", "drop"]);
    let mut unfiltered = Tracer::json(&scene.lab, "n1", &[]);
    assert_eq!(scene.trace_status().0, 4);
    // The pcap tracer wants every packet: the datapath reports them all.
    assert_eq!(scene.flag(), 2);

    assert_eq!(scene.ask("tcp", &scene.vip), "web1");
    let refused_tcp = scene.ask("tcp", &scene.empty_vip);
    let refused_udp = scene.ask("udp", &scene.empty_vip);
    assert!(
        refused_tcp.contains("refused") && refused_udp.contains("refused"),
        "{refused_tcp} / {refused_udp}"
    );

    // The new flow: translated to web.1, named; then its replies reversed.
    let (client_ip, vip, web_ip) = (&scene.client_ip, &scene.vip, &scene.web_ip);
    let translate = web.wait_event("translation of the flow", |e| {
        e["verdict"] == "translate"
            && e["protocol"] == "tcp"
            && e["before"]["src"] == client_ip.as_str()
            && e["before"]["dst"] == vip.as_str()
            && e["after"]["dst"] == web_ip.as_str()
            && e["before"]["dport"] == 8080
    });
    assert_eq!(translate["service"], "web");
    assert_eq!(translate["network"], "appnet");
    assert_eq!(translate["node"], "n1");
    assert_eq!(translate["endpoint"], "client.1");
    assert_eq!(translate["names"][web_ip.as_str()], "web.1");
    assert_eq!(translate["names"][vip.as_str()], "web (vip)");
    assert_eq!(translate["names"][client_ip.as_str()], "client.1");
    let sport = translate["before"]["sport"].clone();
    let reverse = web.wait_event("reverse translation of the flow", |e| {
        e["verdict"] == "reverse"
            && e["before"]["src"] == web_ip.as_str()
            && e["after"]["src"] == vip.as_str()
            && e["after"]["dst"] == client_ip.as_str()
            && e["after"]["dport"] == sport
    });
    assert_eq!(reverse["service"], "web");
    assert_eq!(reverse["endpoint"], "client.1");

    // No backend: refused, with its reason, for TCP and UDP.
    let empty_vip = &scene.empty_vip;
    for proto in ["tcp", "udp"] {
        let drop = drops.wait_event("a refusal", |e| {
            e["protocol"] == proto && e["before"]["dst"] == empty_vip.as_str()
        });
        assert_eq!(drop["verdict"], "drop");
        assert_eq!(drop["reason"], "no-backend");
        assert_eq!(drop["service"], "empty");
    }

    // The tracer without a filter got both, as the same documents the
    // filtered ones got.
    unfiltered.wait_event("the translation, unfiltered", |e| *e == translate);
    unfiltered.wait_event("a refusal, unfiltered", |e| {
        e["verdict"] == "drop" && e["before"]["dst"] == empty_vip.as_str()
    });

    // Filters: after one more web flow reached the `web` tracer, it has
    // seen nothing of `empty`, and the drop tracer nothing but drops.
    assert_eq!(scene.ask("tcp", &scene.vip), "web1");
    web.wait_event("a second flow", |e| {
        e["verdict"] == "translate" && e["before"]["sport"] != sport
    });
    let events = web.events();
    assert!(
        events.iter().all(|e| e["service"] == "web"),
        "the web tracer got other services' events: {events:?}"
    );
    let events = drops.events();
    assert!(
        events.iter().all(|e| e["verdict"] == "drop"),
        "the drop tracer got other verdicts: {events:?}"
    );

    // The people's format says the same in one line each.
    let line = all.wait_for("a translate line", |l| {
        l.contains(" translate ") && l.contains("[web.1]") && l.contains("client.1/ve-")
    });
    assert!(line.contains(" n1 "), "{line}");
    // The client asked who the empty VIP is: the datapath answered.
    all.wait_for("an ARP reply line", |l| {
        l.contains(" arp-reply ") && l.contains(&format!("{empty_vip}[empty (vip)]"))
    });
    all.wait_for("a refusal line", |l| {
        l.contains("drop (no-backend: RST sent) service=empty")
    });

    // Ctrl-C: a clean exit and a pcap file tcpdump reads, showing the flow
    // as translated (client -> task) and the SYN refused by the empty VIP.
    let (status, stderr) = all.stop();
    assert!(
        status.success(),
        "netctl trace after Ctrl-C: {status} {stderr}"
    );
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&pcap)
        .output()
        .expect("tcpdump");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpdump -r: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = sport.as_u64().expect("port");
    assert!(
        text.contains(&format!("{client_ip}.{port} > {web_ip}.8080: Flags [S]")),
        "no translated SYN in:\n{text}"
    );
    assert!(
        text.contains(&format!("{vip}.8080 > {client_ip}.{port}: Flags [S.]")),
        "no reverse-translated SYN-ACK in:\n{text}"
    );
    assert!(
        text.contains(&format!("> {empty_vip}.8080: Flags [S]")),
        "no refused SYN in:\n{text}"
    );
    assert!(
        text.contains(&format!("ARP, Reply {empty_vip} is-at 02:42:")),
        "no ARP reply in:\n{text}"
    );

    // --since replays the drop that already happened.
    let mut late = Tracer::json(&scene.lab, "n1", &["--verdict", "drop", "--since", "5m"]);
    let start: serde_json::Value = serde_json::from_str(&late.seen[0]).expect("start line");
    assert_eq!(start["type"], "start");
    assert!(start["replayed"].as_u64() >= Some(2), "{start}");
    late.wait_event("the replayed refusal", |e| {
        e["before"]["dst"] == empty_vip.as_str() && e["reason"] == "no-backend"
    });

    for tracer in [web, drops, unfiltered, late] {
        let (status, stderr) = tracer.stop();
        assert!(status.success(), "{status} {stderr}");
    }
    scene.lab.teardown().expect("teardown");
}

#[test]
fn nobody_tracing_means_no_events_and_bad_filters_are_refused() {
    require_root!();
    let mut scene = Scene::up();
    // At start, and after the last tracer goes, the flag is off and the
    // datapath writes nothing, whatever the traffic.
    assert_eq!(scene.flag(), 0);
    let (tracers, before, _) = scene.trace_status();
    assert_eq!(tracers, 0);
    assert_eq!(scene.ask("tcp", &scene.vip), "web1");
    assert!(scene.ask("tcp", &scene.empty_vip).contains("refused"));
    assert_eq!(
        scene.trace_status().1,
        before,
        "events written while nobody traced"
    );

    let mut tracer = Tracer::json(&scene.lab, "n1", &[]);
    assert_eq!(scene.flag(), 1);
    assert_eq!(scene.ask("tcp", &scene.vip), "web1");
    tracer.wait_event("an event", |e| e["verdict"] == "translate");
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{status} {stderr}");
    wait_until(Duration::from_secs(10), || {
        (scene.trace_status().0 == 0 && scene.flag() == 0).then_some(())
    })
    .unwrap_or_else(|_| {
        panic!(
            "tracing still on: {:?} flag {}",
            scene.trace_status(),
            scene.flag()
        )
    });
    let (_, after_tracing, lost) = scene.trace_status();
    assert!(after_tracing > before);
    assert_eq!(lost, 0);
    assert_eq!(scene.ask("tcp", &scene.vip), "web1");
    assert!(scene.ask("udp", &scene.empty_vip).contains("refused"));
    assert_eq!(
        scene.trace_status().1,
        after_tracing,
        "events written after the last tracer left"
    );

    // A bad filter: one line, non-zero exit, no pcap file made.
    let pcap = scene.lab.state_dir().join("never.pcap");
    let out = scene
        .lab
        .netctl(
            "n1",
            &[
                "trace",
                "--verdict",
                "dropped",
                "--pcap",
                &pcap.display().to_string(),
            ],
        )
        .expect("netctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown verdict"), "{stderr}");
    assert!(!pcap.exists());
    let out = scene
        .lab
        .netctl("n1", &["trace", "--since", "soon"])
        .expect("netctl");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad duration"));
    scene.lab.teardown().expect("teardown");
}

/// `python3 -c TALK host n`: one TCP connection to host:8081, `n` messages
/// each answered, then closed; prints the connection's local port.
const TALK: &str = r#"
import socket, sys
host, n = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, 8081), timeout=2)
for _ in range(n):
    s.sendall(b"x")
    s.recv(200)
print(s.getsockname()[1])
s.close()
"#;

/// Messages of one `TALK` connection: far more data packets each way than
/// the opening and closing of the flow.
const MESSAGES: usize = 20;

impl Scene {
    /// One `TALK` connection to the `web` VIP; its client port.
    fn talk(&self) -> u64 {
        let out = self
            .lab
            .exec(
                &self.client.netns,
                &["python3", "-c", TALK, &self.vip, &MESSAGES.to_string()],
            )
            .expect("talk");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("talk: {text} {}", String::from_utf8_lossy(&out.stderr)))
    }
}

impl Tracer {
    /// The events read so far of the client flow from `sport` (both ways).
    fn flow_events(&self, sport: u64) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["before"]["sport"] == sport || e["before"]["dport"] == sport)
            .collect()
    }

    /// Reads lines until `n` events of the client flow from `sport` came
    /// (10 s at most).
    fn wait_flow_events(&mut self, sport: u64, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.flow_events(sport);
            if events.len() >= n {
                return events;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                panic!(
                    "{}: {} events of flow :{sport}, not {n}:\n{}",
                    self.what,
                    events.len(),
                    self.seen.join("\n")
                );
            };
            if let Ok(line) = self.lines.recv_timeout(left) {
                self.seen.push(line);
            }
        }
    }
}

#[test]
fn an_established_flow_is_reported_when_something_changes_unless_every_packet_is_asked() {
    require_root!();
    let mut scene = Scene::up();
    let mut changes = Tracer::json(&scene.lab, "n1", &["--service", "web"]);
    changes.assert_all_packets(false);
    assert_eq!(scene.flag(), 1);

    // By default: the new flow, its first reply (the SYN-ACK) and the
    // client's FIN; none of the data packets or ACKs in between. (The
    // server closes its side when it accepts the next connection: its FIN
    // is the fourth and last event of the flow.)
    let sport = scene.talk();
    let events = changes.wait_flow_events(sport, 3);
    let verdicts = |events: &[serde_json::Value]| {
        let mut v: Vec<String> = events
            .iter()
            .map(|e| e["verdict"].as_str().expect("verdict").to_owned())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    assert_eq!(
        verdicts(&events),
        ["reverse", "translate", "translate-established"],
        "{events:?}"
    );
    // A later flow has come through: at most the server's FIN more of
    // this one did, out of 2 x 20 data packets and their ACKs.
    let quiet = |tracer: &mut Tracer, sport: u64| {
        let later = scene.talk();
        tracer.wait_flow_events(later, 3);
        let events = tracer.flow_events(sport);
        assert!(events.len() <= 4, "{events:?}");
        let new_flows = events.iter().filter(|e| e["verdict"] == "translate");
        assert_eq!(new_flows.count(), 1, "{events:?}");
    };
    quiet(&mut changes, sport);

    // `--all-packets`: every packet of the flow, for every tracer while it
    // is connected: each message and each answer at least.
    let mut every = Tracer::json(&scene.lab, "n1", &["--all-packets", "--port", "8081"]);
    every.assert_all_packets(true);
    assert_eq!(scene.flag(), 2);
    let sport = scene.talk();
    let events = every.wait_flow_events(sport, 2 * MESSAGES);
    let established = events
        .iter()
        .filter(|e| e["verdict"] == "translate-established")
        .count();
    assert!(established >= MESSAGES, "{events:?}");
    changes.wait_flow_events(sport, 2 * MESSAGES);

    // The all-packets tracer gone, flows are reported by what changes again.
    let (status, stderr) = every.stop();
    assert!(status.success(), "{status} {stderr}");
    wait_until(Duration::from_secs(10), || {
        (scene.flag() == 1).then_some(())
    })
    .unwrap_or_else(|_| panic!("trace mode stays {}", scene.flag()));
    let sport = scene.talk();
    changes.wait_flow_events(sport, 3);
    quiet(&mut changes, sport);
    let (status, stderr) = changes.stop();
    assert!(status.success(), "{status} {stderr}");
    scene.lab.teardown().expect("teardown");
}

/// Sends `n` datagrams of one UDP flow to host:9, as fast as it can.
const FLOOD: &str = r#"
import socket, sys
host, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n):
    try:
        s.sendto(b"x", (host, 9))
    except OSError:
        pass
"#;

#[test]
fn events_the_full_ring_could_not_hold_are_counted_and_reported() {
    require_root!();
    let mut scene = Scene::up();
    // Every packet: by default one flow's datagrams are reported once.
    let mut tracer = Tracer::json(&scene.lab, "n1", &["--port", "9", "--all-packets"]);
    // With the agent stopped nothing drains the ring: 40,000 events of one
    // flow cannot fit in its ~21,800 places.
    let agent = scene.lab.node("n1").expect("n1").agent().expect("agent");
    agent.id.signal(nix::sys::signal::Signal::SIGSTOP);
    let flood = scene.lab.exec(
        &scene.client.netns,
        &["python3", "-c", FLOOD, &scene.vip, "40000"],
    );
    agent.id.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(flood.expect("flood").status.success());

    let lost = tracer.wait_for("a lost line", |l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["type"] == "lost" && v["ring"].as_u64() > Some(0))
    });
    let lost: serde_json::Value = serde_json::from_str(&lost).expect("json");
    let (_, emitted, lost_total) = scene.trace_status();
    assert!(lost_total >= lost["ring"].as_u64().expect("ring"), "{lost}");
    assert!(
        emitted + lost_total >= 40_000,
        "emitted {emitted}, lost {lost_total}"
    );
    // The events that fitted still came through, filtered.
    tracer.wait_event("a flood event", |e| e["before"]["dport"] == 9);
    let (status, stderr) = tracer.stop();
    assert!(status.success(), "{status} {stderr}");
    let table = scene.lab.netctl("n1", &["status"]).expect("status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!("{lost_total} lost (ring full)")),
        "{table}"
    );
    scene.lab.teardown().expect("teardown");
}

/// The external client host's address (the lab's `ext`).
const EXT: &str = "198.18.0.200";

/// Published ports: on the entry node n1 (no task there), a flow from the
/// external client to n1:18080 is forwarded to web.1 on n2 and its replies
/// reversed, named (the underlay interface, the port's service, the task,
/// the SNAT to n1's ingress address) and filtered by service, port and
/// address; on n2 the same port goes to the local task without SNAT; a
/// published port with no task is passed to the node with its reason.
#[test]
fn a_published_port_flow_is_traced_on_the_entry_node() {
    require_root!();
    let mut lab = Lab::cluster_with_web(2).expect("cluster");
    lab.netctl_json(
        "n1",
        &[
            "service",
            "update",
            "web",
            "--publish-add",
            "published=18080,target=8080",
        ],
    )
    .expect("publish web");
    lab.netctl_json(
        "n1",
        &[
            "service",
            "create",
            "empty",
            "--network",
            "appnet",
            "--publish",
            "published=18081,target=8080",
        ],
    )
    .expect("service empty");
    let (web, web_endpoint) = lab
        .attach_container_with(
            "n2",
            "web1",
            "appnet",
            &["--service", "web", "--name", "web.1"],
        )
        .expect("task");
    let _server = Server::start(&web, "web1");
    let web_ip = web_endpoint["ip"].as_str().expect("ip").to_owned();
    let n1 = lab.node("n1").expect("n1").addr.to_string();
    let ask = |lab: &Lab, port: &str| {
        let out = lab
            .exec(
                &lab.external_netns(),
                &["python3", "-c", CLIENT, "tcp", &n1, port, "1"],
            )
            .expect("client");
        task_of(String::from_utf8_lossy(&out.stdout).trim()).to_owned()
    };
    // The mesh works before anything is traced.
    let mut last = String::new();
    wait_until(Duration::from_secs(20), || {
        last = ask(&lab, "18080");
        (last == "web1").then_some(())
    })
    .unwrap_or_else(|_| panic!("n1:18080 never answered: {last}\n{}", lab.agent_logs(30)));

    let json = |filter: &[&str]| Tracer::json(&lab, "n1", filter);
    let mut by_service = json(&["--service", "web"]);
    let mut by_port = json(&["--port", "18080"]);
    let mut by_ip = json(&["--ip", EXT]);
    let mut closed = json(&["--verdict", "pass"]);
    let mut people = Tracer::start(&lab, "n1", &["trace", "--service", "web"]);

    assert_eq!(ask(&lab, "18080"), "web1");
    assert!(ask(&lab, "18081").contains("refused"));

    let n1_addr = n1.as_str();
    let web_addr = web_ip.as_str();
    for tracer in [&mut by_service, &mut by_port, &mut by_ip] {
        let forward = tracer.wait_event("the forward of the flow", |e| {
            e["verdict"] == "forward"
                && e["before"]["src"] == EXT
                && e["before"]["dst"] == n1_addr
                && e["before"]["dport"] == 18080
                && e["after"]["dst"] == web_addr
                && e["after"]["dport"] == 8080
        });
        assert_eq!(forward["service"], "web", "{forward}");
        assert_eq!(forward["network"], "appnet", "{forward}");
        assert_eq!(forward["endpoint"], "web.1", "{forward}");
        assert_eq!(forward["interface"], "eth0", "{forward}");
        assert_eq!(forward["task"], "remote", "{forward}");
        assert_eq!(forward["names"][web_addr], "web.1", "{forward}");
        assert_eq!(forward["names"][n1_addr], "node n1", "{forward}");
        let snat = forward["snat"].as_str().expect("snat address");
        assert!(snat.starts_with("10.10.0."), "{forward}");
        assert_eq!(forward["names"][snat], "node n1 ingress", "{forward}");
        let sport = forward["before"]["sport"].clone();
        let reverse = tracer.wait_event("the reverse of the flow", |e| {
            e["verdict"] == "reverse"
                && e["before"]["src"] == web_addr
                && e["before"]["sport"] == 8080
                && e["after"]["src"] == n1_addr
                && e["after"]["sport"] == 18080
                && e["after"]["dst"] == EXT
                && e["after"]["dport"] == sport
        });
        assert_eq!(reverse["service"], "web", "{reverse}");
        assert_eq!(reverse["endpoint"], "web.1", "{reverse}");
        assert_eq!(reverse["interface"], "eth0", "{reverse}");
    }
    // The port without a task: passed to the node, which refuses it.
    let pass = closed.wait_event("the closed port", |e| {
        e["before"]["dst"] == n1_addr && e["before"]["dport"] == 18081
    });
    assert_eq!(pass["reason"], "no-backend", "{pass}");
    assert_eq!(pass["service"], "empty", "{pass}");
    people.wait_for("a forward line", |l| {
        l.contains(" forward to remote task (SNAT to ")
            && l.contains("[web.1]")
            && l.contains("web.1/eth0 ")
            && l.ends_with("service=web")
    });

    // On n2, the task's own node: a forward to a local task, no SNAT.
    let mut on_n2 = Tracer::json(&lab, "n2", &["--port", "18080"]);
    let n2 = lab.node("n2").expect("n2").addr.to_string();
    let out = lab
        .exec(
            &lab.external_netns(),
            &["python3", "-c", CLIENT, "tcp", &n2, "18080", "1"],
        )
        .expect("client");
    assert_eq!(task_of(String::from_utf8_lossy(&out.stdout).trim()), "web1");
    let n2_addr = n2.as_str();
    let local = on_n2.wait_event("the forward to the local task", |e| {
        e["verdict"] == "forward" && e["before"]["dst"] == n2_addr && e["after"]["dst"] == web_addr
    });
    assert_eq!(local["node"], "n2", "{local}");
    assert_eq!(local["task"], "local", "{local}");
    assert_eq!(local["endpoint"], "web.1", "{local}");
    assert_eq!(local["service"], "web", "{local}");
    assert!(local.get("snat").is_none(), "{local}");
    on_n2.wait_event("the local task's reply", |e| {
        e["verdict"] == "reverse" && e["after"]["src"] == n2_addr && e["after"]["dst"] == EXT
    });

    // Filters: one more web flow later, the service and port tracers have
    // seen nothing of `empty`'s port.
    assert_eq!(ask(&lab, "18080"), "web1");
    for tracer in [&mut by_service, &mut by_port] {
        tracer.wait_event("a second flow", |e| {
            e["verdict"] == "forward" && e["before"]["dport"] == 18080
        });
        let events = tracer.events();
        assert!(
            events
                .iter()
                .all(|e| e["service"] == "web" && e["before"]["dport"] != 18081),
            "{}: other ports' events: {events:?}",
            tracer.what
        );
    }
    for tracer in [by_service, by_port, by_ip, closed, people, on_n2] {
        let (status, stderr) = tracer.stop();
        assert!(status.success(), "{status} {stderr}");
    }
    lab.teardown().expect("teardown");
}
