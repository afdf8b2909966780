//! Published ports, from the lab's external client host (`ext`): the
//! ingress routing mesh answers on every node and reaches tasks on any node;
//! host mode answers only where a task runs; what the task sees as the
//! client address is what docs/operations.md says.

use std::{collections::BTreeSet, time::Duration};

mod common;

use common::task_server::{every_answer, start_web_tasks, Server, CLIENT};
use netlab::{require_root, wait_until, Lab};

/// The external client's address (the lab's `ext` host).
const EXT: &str = "198.18.0.200";

/// Three nodes, network `appnet` (10.10.0.0/24), service `web` publishing
/// 18080/tcp → 8080, 18081/tcp → 8081 and 19090/udp → 9090 (ingress mode),
/// tasks web1 on n2 and web2 on n3; n1 runs no task.
struct Scene {
    lab: Lab,
    _servers: Vec<Server>,
}

impl Scene {
    fn up() -> Self {
        let mut lab = Lab::cluster_with_appnet(3).expect("cluster");
        lab.netctl_json(
            "n1",
            &[
                "service",
                "create",
                "web",
                "--network",
                "appnet",
                "--publish",
                "published=18080,target=8080",
                "--publish",
                "published=18081,target=8081",
                "--publish",
                "published=19090,target=9090,protocol=udp",
            ],
        )
        .expect("service");
        let servers = start_web_tasks(&mut lab, &["n2", "n3"]);
        Scene {
            lab,
            _servers: servers,
        }
    }

    fn addr(&self, node: &str) -> String {
        self.lab.node(node).expect("node").addr.to_string()
    }
}

/// The answers of `count` requests from the external client to host:port.
fn ask(lab: &Lab, proto: &str, host: &str, port: &str, count: u32) -> Vec<String> {
    let count = count.to_string();
    let out = lab
        .exec(
            &lab.external_netns(),
            &["python3", "-c", CLIENT, proto, host, port, &count],
        )
        .expect("client");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Asks node `node` until every answer arrives and both tasks have
/// answered; returns the last answers.
fn both_tasks_answer(scene: &Scene, node: &str, proto: &str, port: &str) -> Vec<String> {
    let host = scene.addr(node);
    let mut last = Vec::new();
    let done = wait_until(Duration::from_secs(20), || {
        last = ask(&scene.lab, proto, &host, port, 16);
        let names: BTreeSet<&str> = last.iter().filter_map(|l| l.split(' ').next()).collect();
        (!names.contains("ERR") && names.len() == 2).then_some(())
    });
    assert!(
        done.is_ok(),
        "{proto} {node}:{port}: last answers {last:?}\n{}",
        scene.lab.agent_logs(30)
    );
    last
}

/// What a task on node `task_node` must see as the client when the client
/// reached node `entry`: the client itself when the task is local, else an
/// address of the overlay (the entry node's ingress address).
fn check_client_address(answers: &[String], entry: &str) {
    let local_task = match entry {
        "n2" => Some("web1"),
        "n3" => Some("web2"),
        _ => None,
    };
    for line in answers {
        let (task, seen) = line.split_once(' ').expect("answer");
        if Some(task) == local_task {
            assert_eq!(seen, EXT, "local task behind {entry}: {line}");
        } else {
            assert!(
                seen.starts_with("10.10.0.") && seen != EXT,
                "remote task behind {entry} must see {entry}'s ingress address: {line}"
            );
        }
    }
}

#[test]
fn every_node_answers_and_reaches_tasks_on_every_node() {
    require_root!();
    let mut scene = Scene::up();
    let mut ingress_addrs = BTreeSet::new();
    for node in ["n1", "n2", "n3"] {
        let answers = both_tasks_answer(&scene, node, "tcp", "18080");
        check_client_address(&answers, node);
        let answers = both_tasks_answer(&scene, node, "udp", "19090");
        check_client_address(&answers, node);
        // A remote task sees one address per entry node.
        let seen: BTreeSet<String> = answers
            .iter()
            .filter_map(|l| l.split_once(' ').map(|(_, a)| a.to_owned()))
            .filter(|a| a != EXT)
            .collect();
        assert_eq!(seen.len(), 1, "{node}: {answers:?}");
        ingress_addrs.extend(seen);
    }
    assert_eq!(
        ingress_addrs.len(),
        3,
        "ingress addresses: {ingress_addrs:?}"
    );

    // The agent of n1 killed: the data plane keeps answering; restarted, it
    // adopts what is there.
    let status = scene
        .lab
        .signal_agent("n1", nix::sys::signal::Signal::SIGKILL)
        .expect("kill agent");
    assert!(!status.success());
    both_tasks_answer(&scene, "n1", "tcp", "18080");
    scene.lab.start_agent("n1").expect("restart");
    both_tasks_answer(&scene, "n1", "tcp", "18080");
    both_tasks_answer(&scene, "n1", "udp", "19090");
    scene.lab.teardown().expect("teardown");
}

#[test]
fn a_dead_node_gets_no_new_connections_within_five_seconds() {
    require_root!();
    let mut scene = Scene::up();
    both_tasks_answer(&scene, "n1", "tcp", "18080");
    // n3 dies (its agent is killed: gossip stops; its task would still
    // answer, so only the mesh can keep connections away from it).
    let status = scene
        .lab
        .signal_agent("n3", nix::sys::signal::Signal::SIGKILL)
        .expect("kill agent");
    assert!(!status.success());
    let host = scene.addr("n1");
    let mut last = Vec::new();
    let gone = wait_until(Duration::from_secs(5), || {
        last = ask(&scene.lab, "tcp", &host, "18080", 8);
        every_answer(&last, 8, |l| l.starts_with("web1 ")).then_some(())
    });
    assert!(gone.is_ok(), "after 5 s: {last:?}");
    scene.lab.teardown().expect("teardown");
}

#[test]
fn host_mode_answers_only_on_task_nodes_and_bad_ports_are_refused() {
    require_root!();
    let mut lab = Lab::cluster_with_appnet(3).expect("cluster");
    lab.netctl_json(
        "n1",
        &[
            "service",
            "create",
            "api",
            "--network",
            "appnet",
            "--endpoint-mode",
            "dnsrr",
            "--publish",
            "published=28080,target=8080,mode=host",
        ],
    )
    .expect("service");
    let (container, _) = lab
        .attach_container_with("n2", "api1", "appnet", &["--service", "api"])
        .expect("task");
    let _server = Server::start(&container, "api1");
    let addr = |node: &str| lab.node(node).expect("node").addr.to_string();

    // The task's node answers, with the client's own address seen.
    let mut last = Vec::new();
    wait_until(Duration::from_secs(20), || {
        last = ask(&lab, "tcp", &addr("n2"), "28080", 4);
        every_answer(&last, 4, |l| l == format!("api1 {EXT}")).then_some(())
    })
    .unwrap_or_else(|_| panic!("n2:28080: {last:?}\n{}", lab.agent_logs(30)));
    // The others do not open the port.
    for node in ["n1", "n3"] {
        let answers = ask(&lab, "tcp", &addr(node), "28080", 2);
        assert!(
            every_answer(&answers, 2, |l| l.contains("refused")),
            "{node}:28080 must be closed: {answers:?}"
        );
    }

    // One-line refusals.
    let refused = |args: &[&str], expect: &str| {
        let out = lab.netctl("n1", args).expect("netctl");
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
    };
    refused(
        &[
            "service",
            "create",
            "other",
            "--network",
            "appnet",
            "--publish",
            "published=28080,target=1",
        ],
        "already used by service api",
    );
    refused(
        &[
            "service",
            "create",
            "rr",
            "--network",
            "appnet",
            "--endpoint-mode",
            "dnsrr",
            "--publish",
            "published=7000,target=7000",
        ],
        "dnsrr services cannot publish in ingress mode",
    );
    lab.netctl_json("n1", &["overlay", "create", "backroom", "--internal"])
        .expect("internal network");
    refused(
        &[
            "service",
            "create",
            "hidden",
            "--network",
            "backroom",
            "--publish",
            "published=7001,target=7001",
        ],
        "its network backroom is internal",
    );

    // `service update` moves the port: the old one closes, the new one opens.
    lab.netctl_json(
        "n1",
        &[
            "service",
            "update",
            "api",
            "--publish-rm",
            "28080",
            "--publish-add",
            "published=28081,target=8080,mode=host",
        ],
    )
    .expect("update");
    wait_until(Duration::from_secs(10), || {
        let old = ask(&lab, "tcp", &addr("n2"), "28080", 1);
        let new = ask(&lab, "tcp", &addr("n2"), "28081", 1);
        (every_answer(&old, 1, |l| l.contains("refused"))
            && every_answer(&new, 1, |l| l == format!("api1 {EXT}")))
        .then_some(())
    })
    .unwrap_or_else(|_| panic!("after the update\n{}", lab.agent_logs(20)));
    lab.teardown().expect("teardown");
}

/// From one client port: a request to the published UDP port of `node`,
/// retried from other ports until the task on that node (`local`) answers;
/// then, from the same port, a request straight to that task's address,
/// and one more to the published port. Prints the source address of each
/// of the last two answers ("ERR ..." if none).
const SAME_PORT_DIRECT: &str = r#"
import socket, sys
node, local, task = sys.argv[1], sys.argv[2], sys.argv[3]
for port in range(40100, 40160):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(2)
    try:
        s.sendto(b"x", (node, 19090))
        data, _ = s.recvfrom(200)
    except Exception:
        s.close()
        continue
    if not data.decode().startswith(local + " "):
        s.close()
        continue
    try:
        s.sendto(b"x", (task, 9090))
        data, addr = s.recvfrom(200)
        print(f"{addr[0]}:{addr[1]}")
        s.sendto(b"x", (node, 19090))
        data, addr = s.recvfrom(200)
        print(f"{addr[0]}:{addr[1]}")
    except Exception as e:
        print("ERR", e)
    sys.exit(0)
print("ERR the local task never answered")
"#;

/// A direct UDP flow that reuses the client port of a published-port flow
/// to the same task gets its replies from the task's own address: the
/// published flow's reverse entry does not rewrite them. The published
/// port, asked again from that port, still answers from itself.
#[test]
fn a_direct_udp_flow_reusing_a_published_flows_port_is_not_rewritten() {
    require_root!();
    let mut scene = Scene::up();
    both_tasks_answer(&scene, "n2", "udp", "19090");
    let web1 = scene
        .lab
        .netctl_json("n2", &["endpoint", "ls"])
        .expect("endpoints")
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["name"] == "web.1")
        .and_then(|e| e["ip"].as_str())
        .expect("web.1 address")
        .to_owned();
    // The client reaches the overlay through n2, as the ingress benchmark's
    // direct case does.
    let n2 = scene.addr("n2");
    let out = scene
        .lab
        .exec(
            &scene.lab.external_netns(),
            &["ip", "route", "add", "10.10.0.0/24", "via", &n2],
        )
        .expect("ip route");
    assert!(out.status.success(), "{out:?}");
    let out = scene
        .lab
        .exec(
            &scene.lab.external_netns(),
            &["python3", "-c", SAME_PORT_DIRECT, &n2, "web1", &web1],
        )
        .expect("client");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(answer, format!("{web1}:9090\n{n2}:19090"), "{out:?}");
    scene.lab.teardown().expect("teardown");
}

/// `python3 -c UPLOAD host port size`: one connection that sends `size`
/// bytes and waits until the task's kernel has acknowledged them all (the
/// send queue is empty), then prints the task's first answer (port 8081:
/// "<task> <client address>" per chunk read), or "ERR <why>".
const UPLOAD: &str = r#"
import fcntl, socket, struct, sys, termios, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"x" * size)
    deadline = time.monotonic() + 5
    while struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]:
        if time.monotonic() > deadline:
            raise TimeoutError("not all acknowledged")
        time.sleep(0.01)
    print("web" + s.recv(200).decode().split("web")[1])
except Exception as e:
    print("ERR", e)
"#;

/// `python3 -c DATAGRAM host port size [nodf]`: one `size`-byte UDP
/// datagram (DF set, as Linux sends them, unless `nodf`: then a router
/// whose next hop is smaller fragments it); prints the answer or
/// "ERR <why>".
const DATAGRAM: &str = r#"
import socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if sys.argv[4:] == ["nodf"]:
        # IP_MTU_DISCOVER (10) = IP_PMTUDISC_DONT (0): Python names neither.
        s.setsockopt(socket.IPPROTO_IP, 10, 0)
    s.settimeout(2)
    s.connect((host, port))
    s.send(b"x" * size)
    print(s.recv(200).decode())
except Exception as e:
    print("ERR", e)
"#;

/// Packets `link` in `netns` has received and sent.
fn packets(lab: &Lab, netns: &str, link: &str) -> (u64, u64) {
    let out = common::stdout(lab, netns, &["ip", "-j", "-s", "link", "show", link]);
    let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    let count = |dir: &str| {
        links[0]["stats64"][dir]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no {dir} packets in {out}"))
    };
    (count("rx"), count("tx"))
}

/// n1 runs no task, so each of its published-port flows goes to another
/// node: `ingress_in` sends it over VXLAN itself, n1's sandbox vxlan0
/// sends none of it, even TCP streams (GSO aggregates of segments as large
/// as the overlay carries, 1450 bytes: 1500 on the underlay) and the
/// largest UDP datagram that fits. One byte more takes the sandbox path
/// and is still answered. The task still sees n1's ingress address.
/// (Only what vxlan0 sends is counted for TCP: the tasks' small answers may
/// come back as GSO aggregates, which take the sandbox path.)
#[test]
fn large_requests_reach_remote_tasks_straight_from_the_underlay() {
    require_root!();
    let mut scene = Scene::up();
    both_tasks_answer(&scene, "n1", "tcp", "18080");
    let sandbox = common::sandbox(&scene.lab, "n1", common::vni_of(&scene.lab, "appnet"));
    let host = scene.addr("n1");
    // Ready: both tasks answer small datagrams with vxlan0 silent both
    // ways (INGRESS_REMOTE knows both tasks).
    let mut last = (Vec::new(), 0, 0);
    let ready = wait_until(Duration::from_secs(20), || {
        let before = packets(&scene.lab, &sandbox, "vxlan0");
        let answers = ask(&scene.lab, "udp", &host, "19090", 16);
        let after = packets(&scene.lab, &sandbox, "vxlan0");
        let names: BTreeSet<&str> = answers.iter().filter_map(|l| l.split(' ').next()).collect();
        let done = !names.contains("ERR") && names.len() == 2 && after == before;
        last = (answers.clone(), after.0 - before.0, after.1 - before.1);
        done.then_some(())
    });
    assert!(
        ready.is_ok(),
        "small datagrams (answers, vxlan0 received, sent): {last:?}"
    );

    let before = packets(&scene.lab, &sandbox, "vxlan0");
    for _ in 0..4 {
        let out = scene
            .lab
            .exec(
                &scene.lab.external_netns(),
                &["python3", "-c", UPLOAD, &host, "18081", "200000"],
            )
            .expect("client");
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(answer.starts_with("web"), "{answer:?}");
        check_client_address(&[answer], "n1");
    }
    let after = packets(&scene.lab, &sandbox, "vxlan0");
    // Each upload is more than 140 segments.
    assert_eq!(after.1, before.1, "n1's vxlan0 sent TCP uploads' packets");

    // 1422 bytes of payload: 1450 with the UDP and IPv4 headers.
    let datagram = |size: &str, extra: &[&str]| {
        let before = packets(&scene.lab, &sandbox, "vxlan0");
        let mut args = vec!["python3", "-c", DATAGRAM, &host, "19090", size];
        args.extend_from_slice(extra);
        let out = scene
            .lab
            .exec(&scene.lab.external_netns(), &args)
            .expect("client");
        let after = packets(&scene.lab, &sandbox, "vxlan0");
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (answer, after.0 - before.0, after.1 - before.1)
    };
    let (answer, received, sent) = datagram("1422", &[]);
    assert!(answer.starts_with("web"), "{answer:?}");
    check_client_address(&[answer], "n1");
    assert_eq!(
        (received, sent),
        (0, 0),
        "n1's vxlan0 received and sent packets for the largest datagram that fits"
    );
    // One byte more than the overlay carries: the sandbox forwards it (in
    // fragments, DF being clear) through vxlan0.
    let (answer, _, sent) = datagram("1423", &["nodf"]);
    assert!(answer.starts_with("web"), "{answer:?}");
    check_client_address(&[answer], "n1");
    assert!(
        sent > 0,
        "n1's vxlan0 sent nothing for a datagram too large for the fast path"
    );
    scene.lab.teardown().expect("teardown");
}
