//! Cluster formation and overlay networks across nodes (issue 3).

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{sandbox, vni_of};
use netlab::{require_root, wait_until, Container, Lab, LabSpec};
use nix::sys::signal::Signal;
use serde_json::Value;

const SUBNET: &str = "10.10.0.0/24";

/// A lab with `nodes` agents in one cluster and network `appnet`.
fn cluster(nodes: usize) -> Lab {
    let mut lab = Lab::up(LabSpec::nodes(nodes)).expect("lab");
    lab.start_agents().expect("agents");
    lab.form_cluster().expect("cluster");
    lab.netctl_json("n1", &["overlay", "create", "appnet", "--subnet", SUBNET])
        .expect("overlay create");
    lab
}

/// Attaches a new container on `node` to `network`; returns it and its IP.
fn attach(lab: &mut Lab, node: &str, name: &str, network: &str) -> (Container, String) {
    lab.attach_container(node, name, network).expect("attach")
}

fn pings(lab: &Lab, from: &Container, to: &str) -> bool {
    lab.exec(&from.netns, &["ping", "-c", "1", "-W", "1", to])
        .map(|out| out.status.success())
        .unwrap_or(false)
}

fn assert_reaches(lab: &Lab, from: &Container, to: &str) {
    wait_until(Duration::from_secs(5), || {
        pings(lab, from, to).then_some(())
    })
    .unwrap_or_else(|_| panic!("{} cannot ping {to}\n{}", from.name, lab.agent_logs(30)));
}

/// A TCP listener on `port` inside `container`; killed by pid on drop.
struct Listener(Child);

impl Listener {
    fn start(container: &Container, port: u16) -> Self {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &container.netns,
                "nc",
                "-l",
                "-k",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nc -l");
        Listener(child)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tcp_connects(lab: &Lab, from: &Container, ip: &str, port: u16) -> bool {
    lab.exec(&from.netns, &["nc", "-z", "-w", "1", ip, &port.to_string()])
        .map(|out| out.status.success())
        .unwrap_or(false)
}

/// The permanent FDB entries of vxlan0 in a sandbox, as text lines.
fn fdb(lab: &Lab, netns: &str) -> String {
    lab.exec(netns, &["bridge", "fdb", "show", "dev", "vxlan0"])
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

fn neighbours(lab: &Lab, netns: &str) -> String {
    lab.exec(netns, &["ip", "neigh", "show", "dev", "vxlan0"])
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

fn netctl_error(lab: &Lab, node: &str, args: &[&str]) -> String {
    let out = lab.netctl(node, args).expect("netctl");
    assert!(!out.status.success(), "netctl {} succeeded", args.join(" "));
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    stderr
}

#[test]
fn three_nodes_join_and_containers_reach_each_other() {
    require_root!();
    let mut lab = cluster(3);
    let nodes = wait_until(Duration::from_secs(10), || {
        let nodes = lab.netctl_json("n1", &["node", "ls"]).ok()?;
        let ready = nodes
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "ready")
            .count();
        (ready == 3).then_some(nodes)
    })
    .unwrap_or_else(|_| panic!("not all nodes ready\n{}", lab.agent_logs(30)));
    for field in ["name", "id", "role", "availability", "status", "addr"] {
        assert!(
            nodes[0].get(field).is_some(),
            "node ls lacks {field}: {nodes}"
        );
    }
    let network = lab
        .netctl_json("n2", &["overlay", "inspect", "appnet"])
        .expect("inspect");
    for field in ["name", "id", "vni", "subnet", "gateway"] {
        assert!(
            network.get(field).is_some(),
            "overlay lacks {field}: {network}"
        );
    }

    let (c1, ip1) = attach(&mut lab, "n1", "c1", "appnet");
    let (c2, ip2) = attach(&mut lab, "n2", "c2", "appnet");
    let (c3, ip3) = attach(&mut lab, "n3", "c3", "appnet");
    let all = [(&c1, &ip1), (&c2, &ip2), (&c3, &ip3)];
    for (from, _) in all {
        for (to, ip) in all {
            if from.name != to.name {
                assert_reaches(&lab, from, ip);
            }
        }
    }
    let _listener = Listener::start(&c3, 8080);
    wait_until(Duration::from_secs(5), || {
        tcp_connects(&lab, &c1, &ip3, 8080).then_some(())
    })
    .expect("TCP from c1 on n1 to c3 on n3");
    let endpoints = lab
        .netctl_json("n1", &["endpoint", "ls"])
        .expect("endpoint ls");
    let endpoints = endpoints.as_array().expect("array");
    assert_eq!(endpoints.len(), 3, "{endpoints:?}");
    for field in [
        "id", "name", "network", "service", "node", "ip", "mac", "health",
    ] {
        assert!(endpoints[0].get(field).is_some(), "endpoint lacks {field}");
    }
    // MAC 02:42:<ip>, as Docker does.
    let ep = endpoints
        .iter()
        .find(|e| e["ip"] == ip1.as_str())
        .expect("c1");
    let octets: Vec<u8> = ip1.split('.').map(|o| o.parse().unwrap()).collect();
    let mac = format!(
        "02:42:{:02x}:{:02x}:{:02x}:{:02x}",
        octets[0], octets[1], octets[2], octets[3]
    );
    assert_eq!(ep["mac"], mac.as_str());

    // Remote entries are static, never learned.
    let vni = vni_of(&lab, "appnet");
    let entries = fdb(&lab, &sandbox(&lab, "n1", vni));
    assert!(
        entries.contains("198.18.0.12") && entries.contains("198.18.0.13"),
        "{entries}"
    );
    for line in entries.lines().filter(|l| l.contains("dst")) {
        assert!(
            line.contains("permanent") || line.contains("static"),
            "learned entry: {line}"
        );
    }
    lab.teardown().expect("teardown");
}

#[test]
fn networks_stay_isolated() {
    require_root!();
    let mut lab = cluster(2);
    lab.netctl_json(
        "n1",
        &["overlay", "create", "other", "--subnet", "10.20.0.0/24"],
    )
    .expect("second network");
    let (a1, _) = attach(&mut lab, "n1", "a1", "appnet");
    let (_a2, ip_a2) = attach(&mut lab, "n2", "a2", "appnet");
    let (_b2, ip_b2) = attach(&mut lab, "n2", "b2", "other");
    assert_reaches(&lab, &a1, &ip_a2);
    assert!(
        !pings(&lab, &a1, &ip_b2),
        "appnet reached a container of another network"
    );
    // Out of the cluster through the node (masquerade) ...
    assert_reaches(&lab, &a1, "198.18.0.200");
    // ... unless the network is internal.
    lab.netctl_json("n1", &["overlay", "create", "private", "--internal"])
        .expect("internal network");
    let (p1, _) = attach(&mut lab, "n1", "p1", "private");
    assert!(
        !pings(&lab, &p1, "198.18.0.200"),
        "an internal network reached outside the cluster"
    );
    lab.teardown().expect("teardown");
}

#[test]
fn racing_attaches_on_three_nodes_never_share_an_address() {
    require_root!();
    let mut lab = cluster(3);
    let mut containers = Vec::new();
    for node in 1..=3 {
        for i in 1..=6 {
            let container = lab
                .add_container(&format!("r{node}x{i}"))
                .expect("container");
            containers.push((format!("n{node}"), container));
        }
    }
    let lab = &lab;
    let ips: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = containers
            .iter()
            .map(|(node, container)| {
                scope.spawn(move || {
                    let path = container.netns_path().display().to_string();
                    lab.netctl_json(
                        node,
                        &[
                            "endpoint",
                            "attach",
                            "--network",
                            "appnet",
                            "--netns",
                            &path,
                        ],
                    )
                    .expect("attach")["ip"]
                        .as_str()
                        .expect("ip")
                        .to_owned()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let distinct: std::collections::BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), ips.len(), "duplicate addresses: {ips:?}");
}

#[test]
fn detach_removes_remote_entries_everywhere_within_2s() {
    require_root!();
    let mut lab = cluster(3);
    let (c1, _) = attach(&mut lab, "n1", "c1", "appnet");
    let (_c2, _) = attach(&mut lab, "n2", "c2", "appnet");
    let (_c3, ip3) = attach(&mut lab, "n3", "c3", "appnet");
    assert_reaches(&lab, &c1, &ip3);
    let vni = vni_of(&lab, "appnet");
    let mac3 = {
        let eps = lab.netctl_json("n3", &["endpoint", "ls"]).expect("ls");
        eps.as_array()
            .unwrap()
            .iter()
            .find(|e| e["ip"] == ip3.as_str())
            .unwrap()["mac"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    lab.netctl_json("n3", &["endpoint", "detach", "c3"])
        .expect("detach");
    let start = Instant::now();
    for node in ["n1", "n2"] {
        let netns = sandbox(&lab, node, vni);
        wait_until(
            Duration::from_secs(2).saturating_sub(start.elapsed()),
            || {
                let gone =
                    !fdb(&lab, &netns).contains(&mac3) && !neighbours(&lab, &netns).contains(&ip3);
                gone.then_some(())
            },
        )
        .unwrap_or_else(|_| {
            panic!(
                "{node} still has c3's entries after 2 s: {}",
                fdb(&lab, &netns)
            )
        });
    }
    // n3 had only c3: its sandbox went with it.
    let sandboxes = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    assert!(!String::from_utf8_lossy(&sandboxes.stdout).contains(&sandbox(&lab, "n3", vni)));
    lab.teardown().expect("teardown");
}

/// Container c1 on n1 and one on `far`, both on appnet and reaching each
/// other; returns c1, the far container's address and n1's sandbox.
fn reachable_pair(lab: &mut Lab, far: &str) -> (Container, String, String) {
    let (c1, _) = attach(lab, "n1", "c1", "appnet");
    let (_, far_ip) = attach(lab, far, "cfar", "appnet");
    assert_reaches(lab, &c1, &far_ip);
    let vni = vni_of(lab, "appnet");
    (c1, far_ip, sandbox(lab, "n1", vni))
}

#[test]
fn agent_kill_and_restart_keeps_traffic_and_changes_nothing() {
    require_root!();
    let mut lab = cluster(2);
    let (c1, ip2, netns) = reachable_pair(&mut lab, "n2");
    let links_before = lab
        .exec(&netns, &["ip", "-o", "link"])
        .expect("links")
        .stdout;
    let fdb_before = fdb(&lab, &netns);

    lab.signal_agent("n1", Signal::SIGKILL).expect("kill");
    assert!(
        pings(&lab, &c1, &ip2),
        "traffic stopped while the agent was down"
    );
    lab.start_agent("n1").expect("restart");
    wait_until(Duration::from_secs(10), || {
        let nodes = lab.netctl_json("n1", &["node", "ls"]).ok()?;
        nodes
            .as_array()
            .map(|n| n.len() == 2)
            .unwrap_or(false)
            .then_some(())
    })
    .expect("cluster after restart");
    assert!(pings(&lab, &c1, &ip2));
    let links_after = lab
        .exec(&netns, &["ip", "-o", "link"])
        .expect("links")
        .stdout;
    assert_eq!(
        String::from_utf8_lossy(&links_before),
        String::from_utf8_lossy(&links_after),
        "the restart recreated links"
    );
    assert_eq!(fdb_before, fdb(&lab, &netns), "the restart changed the FDB");
    // Detach still works after the restart.
    lab.netctl_json("n1", &["endpoint", "detach", "c1"])
        .expect("detach after restart");
    lab.teardown().expect("teardown");
}

#[test]
fn killed_node_entries_leave_within_5s_and_come_back() {
    require_root!();
    let mut lab = cluster(3);
    let (c1, ip3, netns) = reachable_pair(&mut lab, "n3");

    lab.signal_agent("n3", Signal::SIGKILL).expect("kill n3");
    let gone = wait_until(Duration::from_secs(5), || {
        (!neighbours(&lab, &netns).contains(&ip3)).then_some(())
    });
    assert!(
        gone.is_ok(),
        "n3's endpoint still programmed on n1 after 5 s"
    );
    lab.start_agent("n3").expect("n3 back");
    wait_until(Duration::from_secs(10), || {
        neighbours(&lab, &netns).contains(&ip3).then_some(())
    })
    .expect("n3's endpoint back on n1");
    assert_reaches(&lab, &c1, &ip3);
    lab.teardown().expect("teardown");
}

/// The status `node ls` on `asking` gives `node`, or `None` once it is not
/// listed.
fn status_of(lab: &Lab, asking: &str, node: &str) -> Option<String> {
    let nodes = lab.netctl_json(asking, &["node", "ls"]).expect("node ls");
    nodes
        .as_array()
        .expect("a list of nodes")
        .iter()
        .find(|record| record["name"] == node)
        .map(|record| record["status"].as_str().unwrap_or_default().to_owned())
}

/// `node rm` forgets a node that is down; a node that is up, the node
/// asked itself, an unknown node and a worker asking are refused in one line.
#[test]
fn node_rm_forgets_a_down_node_and_refuses_the_others() {
    require_root!();
    let mut lab = cluster(3);
    attach(&mut lab, "n3", "c3", "appnet");
    wait_until(Duration::from_secs(10), || {
        (status_of(&lab, "n1", "n3").as_deref() == Some("ready")).then_some(())
    })
    .expect("n3 ready in node ls");
    let up = netctl_error(&lab, "n1", &["node", "rm", "n3"]);
    assert!(up.contains("not down"), "{up}");
    let own = netctl_error(&lab, "n1", &["node", "rm", "n1"]);
    assert!(own.contains("itself"), "{own}");
    let unknown = netctl_error(&lab, "n1", &["node", "rm", "n9"]);
    assert!(unknown.contains("n9"), "{unknown}");

    lab.signal_agent("n3", Signal::SIGKILL).expect("kill n3");
    for asking in ["n1", "n2"] {
        wait_until(Duration::from_secs(10), || {
            (status_of(&lab, asking, "n3").as_deref() == Some("down")).then_some(())
        })
        .expect("n3 down in node ls");
    }
    let worker = netctl_error(&lab, "n2", &["node", "rm", "n3"]);
    assert!(worker.contains("worker"), "{worker}");
    let removed = lab
        .netctl_json("n1", &["node", "rm", "n3"])
        .expect("node rm n3");
    assert_eq!(removed["name"], "n3");
    assert_eq!(status_of(&lab, "n1", "n3"), None, "n3 still listed");
    let again = netctl_error(&lab, "n1", &["node", "rm", "n3"]);
    assert!(again.contains("n3"), "{again}");
    lab.teardown().expect("teardown");
}

#[test]
fn wrong_tokens_and_foreign_gossip_are_refused() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(3)).expect("lab");
    lab.start_agents().expect("agents");
    lab.netctl_json("n1", &["cluster", "init"]).expect("init");
    let token = lab
        .netctl_json("n1", &["cluster", "join-token", "worker"])
        .expect("token")["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let error = netctl_error(
        &lab,
        "n2",
        &[
            "cluster",
            "join",
            "--token",
            "NATKN-1-00-bad",
            "198.18.0.11:2377",
        ],
    );
    assert!(error.contains("token"), "{error}");
    // A rotated token stops working at once.
    lab.netctl_json("n1", &["cluster", "join-token", "worker", "--rotate"])
        .expect("rotate");
    let error = netctl_error(
        &lab,
        "n2",
        &["cluster", "join", "--token", &token, "198.18.0.11:2377"],
    );
    assert!(error.contains("token"), "{error}");
    // A second init is refused.
    let error = netctl_error(&lab, "n1", &["cluster", "init"]);
    assert!(error.contains("already"), "{error}");

    // A datagram from outside the cluster is dropped and counted.
    let before = gossip_rejected(&lab);
    let sent = lab
        .exec(
            &lab.external_netns(),
            &["sh", "-c", "echo forged | nc -u -w1 198.18.0.11 7946"],
        )
        .expect("nc -u");
    assert!(sent.status.success());
    wait_until(Duration::from_secs(5), || {
        (gossip_rejected(&lab) > before).then_some(())
    })
    .expect("the forged gossip packet was not counted as rejected");
    lab.teardown().expect("teardown");
}

fn gossip_rejected(lab: &Lab) -> u64 {
    let status: Value = lab.netctl_json("n1", &["status"]).expect("status");
    status["gossip_rejected_packets"].as_u64().unwrap_or(0)
}

#[test]
fn bad_input_gets_one_line_and_leaves_nothing() {
    require_root!();
    let mut lab = cluster(2);
    let error = netctl_error(
        &lab,
        "n1",
        &["overlay", "create", "dup", "--subnet", "10.10.0.128/25"],
    );
    assert!(error.contains("overlap"), "{error}");
    let error = netctl_error(&lab, "n1", &["overlay", "create", "appnet"]);
    assert!(error.contains("appnet"), "{error}");
    let out = lab
        .netctl(
            "n1",
            &["overlay", "create", "bad", "--subnet", "10.300.0.0/24"],
        )
        .expect("netctl");
    assert!(!out.status.success());
    let nets = lab.netctl_json("n1", &["overlay", "ls"]).expect("ls");
    assert_eq!(
        nets.as_array().unwrap().len(),
        1,
        "a refused network was recorded: {nets}"
    );

    let c1 = lab.add_container("c1").expect("container");
    let path = c1.netns_path().display().to_string();
    let error = netctl_error(
        &lab,
        "n1",
        &["endpoint", "attach", "--network", "nope", "--netns", &path],
    );
    assert!(error.contains("nope"), "{error}");
    let error = netctl_error(
        &lab,
        "n1",
        &[
            "endpoint",
            "attach",
            "--network",
            "appnet",
            "--netns",
            "/run/netns/does-not-exist",
        ],
    );
    assert!(error.contains("/run/netns/does-not-exist"), "{error}");
    let error = netctl_error(
        &lab,
        "n1",
        &[
            "endpoint",
            "attach",
            "--network",
            "appnet",
            "--netns",
            &path,
            "--ip",
            "10.99.0.5",
        ],
    );
    assert!(error.contains("outside"), "{error}");
    lab.netctl_json(
        "n1",
        &[
            "endpoint",
            "attach",
            "--network",
            "appnet",
            "--netns",
            &path,
            "--ip",
            "10.10.0.77",
        ],
    )
    .expect("attach with --ip");
    let c2 = lab.add_container("c2").expect("container");
    let path2 = c2.netns_path().display().to_string();
    let error = netctl_error(
        &lab,
        "n2",
        &[
            "endpoint",
            "attach",
            "--network",
            "appnet",
            "--netns",
            &path2,
            "--ip",
            "10.10.0.77",
        ],
    );
    assert!(error.contains("10.10.0.77"), "{error}");
    // The refused attaches left no link in c2 and no sandbox on n2.
    let links = lab.exec(&c2.netns, &["ip", "-o", "link"]).expect("links");
    assert_eq!(
        String::from_utf8_lossy(&links.stdout).lines().count(),
        1,
        "stray link in c2"
    );
    let vni = vni_of(&lab, "appnet");
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&sandbox(&lab, "n2", vni)));
    let error = netctl_error(&lab, "n1", &["overlay", "rm", "appnet"]);
    assert!(error.contains("attached"), "{error}");
    lab.teardown().expect("teardown");
}

/// What an agent programmed in a sandbox: its links, FDB and neighbours.
fn sandbox_state(lab: &Lab, netns: &str) -> (String, String, String) {
    let links = lab
        .exec(netns, &["ip", "-o", "link"])
        .expect("links")
        .stdout;
    (
        String::from_utf8_lossy(&links).into_owned(),
        fdb(lab, netns),
        neighbours(lab, netns),
    )
}

/// The owner mark on a sandbox's br0 (its alias).
fn owner_mark(lab: &Lab, netns: &str) -> String {
    let out = lab
        .exec(netns, &["ip", "-j", "link", "show", "dev", "br0"])
        .expect("ip link");
    let links: Value = serde_json::from_slice(&out.stdout).expect("ip -j link");
    links[0]["ifalias"].as_str().unwrap_or_default().to_owned()
}

/// Two agents on one host with every path distinct but the default
/// `--netns-prefix`: each builds, adopts after a SIGKILL, and changes only
/// its own sandboxes; one told to use the other's names refuses them in one
/// line.
#[test]
fn agents_sharing_a_host_touch_only_their_own_sandboxes() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(2).with_default_netns_prefix()).expect("lab");
    lab.start_agents().expect("agents");
    lab.form_cluster().expect("cluster");
    lab.netctl_json("n1", &["overlay", "create", "appnet", "--subnet", SUBNET])
        .expect("overlay create");
    let (c1, _) = attach(&mut lab, "n1", "c1", "appnet");
    let (_c2, ip2) = attach(&mut lab, "n2", "c2", "appnet");
    assert_reaches(&lab, &c1, &ip2);
    let vni = vni_of(&lab, "appnet");
    let sandboxes = ["n1", "n2"].map(|node| format!("netagent-{node}-{vni}"));
    for (sandbox, node) in sandboxes.iter().zip(["n1", "n2"]) {
        let data_dir = lab.state_dir().join(node).join("data");
        assert_eq!(
            owner_mark(&lab, sandbox),
            format!("netagent:{}", data_dir.display()),
            "{sandbox} is not marked as {node}'s"
        );
    }
    let before = sandboxes.clone().map(|s| sandbox_state(&lab, &s));

    for node in ["n1", "n2"] {
        lab.signal_agent(node, Signal::SIGKILL).expect("kill");
        lab.start_agent(node).expect("restart");
        wait_until(Duration::from_secs(10), || {
            let nodes = lab.netctl_json(node, &["node", "ls"]).ok()?;
            (nodes.as_array()?.len() == 2).then_some(())
        })
        .expect("cluster after restart");
        assert_reaches(&lab, &c1, &ip2);
        let after = sandboxes.clone().map(|s| sandbox_state(&lab, &s));
        assert_eq!(before, after, "restarting {node}'s agent changed a sandbox");
    }

    // n1's agent given n2's names: n2's sandbox is refused, and untouched.
    lab.signal_agent("n1", Signal::SIGTERM).expect("stop n1");
    lab.start_agent_with("n1", &["--netns-prefix", "netagent-n2"])
        .expect("n1 with n2's prefix");
    let c3 = lab.add_container("c3").expect("container");
    let path = c3.netns_path().display().to_string();
    let refused = netctl_error(
        &lab,
        "n1",
        &[
            "endpoint",
            "attach",
            "--network",
            "appnet",
            "--netns",
            &path,
        ],
    );
    assert!(
        refused.contains("belongs to another agent") && refused.contains(&sandboxes[1]),
        "{refused}"
    );
    assert_eq!(
        sandbox_state(&lab, &sandboxes[1]),
        before[1],
        "n1's agent changed n2's sandbox"
    );
    lab.teardown().expect("teardown");
    for sandbox in &sandboxes {
        assert!(
            !std::path::Path::new("/run/netns").join(sandbox).exists(),
            "{sandbox} outlived the lab"
        );
    }
}
