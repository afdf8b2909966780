//! VIP load balancing in eBPF at the client's veth: a service VIP spreads
//! TCP and UDP flows over tasks on other nodes, and the tasks see the real
//! client address (no SNAT).

use std::{
    collections::BTreeSet,
    io::{BufRead, Write},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::Duration,
};

use netlab::{require_root, wait_until, Container, Lab, LabSpec};

/// Answers on TCP 8080 and UDP 9090 with "<name> <client address>".
const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1]
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 9090))
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(f"{name} {addr[0]}".encode(), addr)
threading.Thread(target=udp, daemon=True).start()
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 8080))
t.listen(64)
while True:
    c, addr = t.accept()
    c.sendall(f"{name} {addr[0]}".encode())
    c.close()
"#;

/// Makes `count` fresh connections (tcp) or sockets (udp) to host:port and
/// prints one answer per line ("ERR" when none came).
const CLIENT: &str = r#"
import socket, sys
proto, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for _ in range(count):
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=2)
            print(s.recv(200).decode())
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.sendto(b"x", (host, port))
            print(s.recvfrom(200)[0].decode())
        s.close()
    except Exception as e:
        print("ERR", e)
"#;

/// One UDP socket for its whole life: every input line sends a datagram and
/// prints the answer, so that the flow stays the same 5-tuple.
const UDP_FLOW: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
for line in sys.stdin:
    try:
        s.sendto(b"x", (sys.argv[1], 9090))
        print(s.recvfrom(200)[0].decode(), flush=True)
    except Exception as e:
        print("ERR", e, flush=True)
"#;

/// A long-lived UDP flow from a container; killed (by pid) on drop.
struct UdpFlow {
    child: Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl UdpFlow {
    fn start(container: &Container, vip: &str) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", container.netns_path().display()))
            .args(["--", "python3", "-c", UDP_FLOW, vip])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("udp flow");
        let stdout = child.stdout.take().expect("stdout");
        UdpFlow {
            child,
            lines: std::io::BufReader::new(stdout).lines(),
        }
    }

    /// Sends one datagram; the answer (or "ERR ...").
    fn ask(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "go").expect("write");
        stdin.flush().expect("flush");
        self.lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| "ERR closed".into())
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A backend server started in a container; killed (by pid) on drop.
struct Server(Child);

impl Server {
    fn start(container: &Container, name: &str) -> Self {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", container.netns_path().display()))
            .args(["--", "python3", "-c", SERVER, name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; the server dies with the test.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        Server(command.spawn().expect("server"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn attach(lab: &mut Lab, node: &str, name: &str, extra: &[&str]) -> (Container, String) {
    let (container, endpoint) = attach_endpoint(lab, node, name, extra);
    (container, endpoint["ip"].as_str().expect("ip").to_owned())
}

fn attach_endpoint(
    lab: &mut Lab,
    node: &str,
    name: &str,
    extra: &[&str],
) -> (Container, serde_json::Value) {
    let container = lab.add_container(name).expect("container");
    let path = container.netns_path().display().to_string();
    let mut args = vec![
        "endpoint",
        "attach",
        "--network",
        "appnet",
        "--netns",
        &path,
    ];
    args.extend_from_slice(extra);
    let endpoint = lab.netctl_json(node, &args).expect("attach");
    (container, endpoint)
}

/// Three nodes, network `appnet`, service `web`.
fn cluster() -> Lab {
    let mut lab = Lab::up(LabSpec::nodes(3)).expect("lab");
    lab.start_agents().expect("agents");
    lab.form_cluster().expect("cluster");
    lab.netctl_json(
        "n1",
        &["overlay", "create", "appnet", "--subnet", "10.10.0.0/24"],
    )
    .expect("network");
    lab.netctl_json("n1", &["service", "create", "web", "--network", "appnet"])
        .expect("web");
    lab
}

fn vip_of(lab: &Lab) -> String {
    let service = lab
        .netctl_json("n1", &["service", "inspect", "web"])
        .expect("inspect");
    service["vips"][0]["addr"].as_str().expect("vip").to_owned()
}

/// The datapath's backends of `web` on n1: (ip, state).
fn datapath_backends(lab: &Lab) -> Vec<(String, String)> {
    let service = lab
        .netctl_json("n1", &["service", "inspect", "web"])
        .expect("inspect");
    service["datapath"][0]["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|b| {
            (
                b["ip"].as_str().unwrap_or_default().to_owned(),
                b["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The answers of `count` requests from `client` to vip:port.
fn ask(
    lab: &Lab,
    client: &Container,
    proto: &str,
    vip: &str,
    port: &str,
    count: u32,
) -> Vec<String> {
    let count = count.to_string();
    let out = lab
        .exec(
            &client.netns,
            &["python3", "-c", CLIENT, proto, vip, port, &count],
        )
        .expect("client");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Asks until both backends have answered (within a deadline); every answer
/// must carry the client's own address.
fn spread(lab: &Lab, client: &Container, client_ip: &str, proto: &str, vip: &str, port: &str) {
    let mut last = Vec::new();
    let seen = wait_until(Duration::from_secs(20), || {
        last = ask(lab, client, proto, vip, port, 16);
        let ok: Vec<&String> = last.iter().filter(|l| !l.starts_with("ERR")).collect();
        for line in &ok {
            assert!(
                line.ends_with(&format!(" {client_ip}")),
                "{proto}: the backend saw another client address: {line}"
            );
        }
        let names: BTreeSet<&str> = ok.iter().filter_map(|l| l.split(' ').next()).collect();
        (ok.len() == last.len() && names.len() == 2).then_some(names.len())
    });
    assert!(
        seen.is_ok(),
        "{proto} to {vip}:{port}: last answers {last:?}\n{}",
        lab.agent_logs(30)
    );
}

#[test]
fn vip_spreads_tcp_and_udp_over_tasks_on_other_nodes() {
    require_root!();
    let mut lab = cluster();
    let (client, client_ip) = attach(&mut lab, "n1", "client", &[]);
    let (web1, web1_ip) = attach(
        &mut lab,
        "n2",
        "web1",
        &["--service", "web", "--name", "web.1"],
    );
    let (web2, _) = attach(
        &mut lab,
        "n3",
        "web2",
        &["--service", "web", "--name", "web.2"],
    );
    let _servers = [Server::start(&web1, "web1"), Server::start(&web2, "web2")];
    let vip = vip_of(&lab);

    spread(&lab, &client, &client_ip, "tcp", &vip, "8080");
    spread(&lab, &client, &client_ip, "udp", &vip, "9090");

    // A task reaching its own service always gets the other task.
    let mut answers = ask(&lab, &web1, "tcp", &vip, "8080", 32);
    answers.extend(ask(&lab, &web1, "udp", &vip, "9090", 32));
    assert!(
        answers.iter().all(|a| a == &format!("web2 {web1_ip}")),
        "web1 to its own VIP: {answers:?}"
    );

    // The datapath's own view: two active backends in the table.
    let service = lab
        .netctl_json("n1", &["service", "inspect", "web"])
        .expect("inspect");
    let backends = service["datapath"][0]["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(backends.len(), 2, "datapath view: {service}");
    assert!(backends.iter().all(|b| b["state"] == "active"), "{service}");
    lab.teardown().expect("teardown");
}

#[test]
fn an_unhealthy_task_drains_and_no_task_refuses_at_once() {
    require_root!();
    let mut lab = cluster();
    let (client, client_ip) = attach(&mut lab, "n1", "client", &[]);
    let (web1, e1) = attach_endpoint(&mut lab, "n2", "web1", &["--service", "web"]);
    let (web2, e2) = attach_endpoint(&mut lab, "n3", "web2", &["--service", "web"]);
    let _servers = [Server::start(&web1, "web1"), Server::start(&web2, "web2")];
    let vip = vip_of(&lab);
    spread(&lab, &client, &client_ip, "tcp", &vip, "8080");

    // An open UDP flow, pinned to one backend.
    let mut flow = UdpFlow::start(&client, &vip);
    let first = flow.ask();
    let pinned = first.split(' ').next().unwrap_or_default().to_owned();
    assert!(pinned.starts_with("web"), "first answer: {first}");
    let ((sick_node, sick), (other_node, other), healthy_name) = if pinned == "web1" {
        (("n2", &e1), ("n3", &e2), "web2")
    } else {
        (("n3", &e2), ("n2", &e1), "web1")
    };
    let id = |e: &serde_json::Value| e["id"].as_str().expect("id").to_owned();
    let ip = |e: &serde_json::Value| e["ip"].as_str().expect("ip").to_owned();
    lab.netctl(sick_node, &["endpoint", "health", &id(sick), "unhealthy"])
        .expect("health");
    wait_until(Duration::from_secs(10), || {
        datapath_backends(&lab)
            .contains(&(ip(sick), "draining".to_owned()))
            .then_some(())
    })
    .unwrap_or_else(|_| panic!("never draining: {:?}", datapath_backends(&lab)));

    // New flows all go to the healthy task; the open flow stays where it was.
    let answers = ask(&lab, &client, "tcp", &vip, "8080", 16);
    assert!(
        answers.iter().all(|a| a.starts_with(healthy_name)),
        "new flows after the drain: {answers:?}"
    );
    let again = flow.ask();
    assert!(
        again.starts_with(&pinned),
        "the open flow moved: {again} (was {pinned})"
    );

    // No healthy task left: a new connection is refused at once (RST), not
    // left to time out.
    lab.netctl(other_node, &["endpoint", "health", &id(other), "unhealthy"])
        .expect("health");
    wait_until(Duration::from_secs(10), || {
        datapath_backends(&lab)
            .iter()
            .all(|(_, state)| state == "draining")
            .then_some(())
    })
    .unwrap_or_else(|_| panic!("never all draining: {:?}", datapath_backends(&lab)));
    let answers = ask(&lab, &client, "tcp", &vip, "8080", 1);
    assert!(
        answers.iter().all(|a| a.contains("refused")),
        "with no backend: {answers:?}"
    );
    drop(flow);
    lab.teardown().expect("teardown");
}

#[test]
fn flows_survive_an_agent_kill_and_restart() {
    require_root!();
    let mut lab = cluster();
    let (client, client_ip) = attach(&mut lab, "n1", "client", &[]);
    let (web1, _) = attach(&mut lab, "n2", "web1", &["--service", "web"]);
    let (web2, _) = attach(&mut lab, "n3", "web2", &["--service", "web"]);
    let _servers = [Server::start(&web1, "web1"), Server::start(&web2, "web2")];
    let vip = vip_of(&lab);
    spread(&lab, &client, &client_ip, "tcp", &vip, "8080");
    let mut flow = UdpFlow::start(&client, &vip);
    let first = flow.ask();
    let pinned = first.split(' ').next().unwrap_or_default().to_owned();
    assert!(pinned.starts_with("web"), "first answer: {first}");

    // Agent down: the programs and pinned maps carry on alone.
    let status = lab
        .signal_agent("n1", nix::sys::signal::Signal::SIGKILL)
        .expect("kill agent");
    assert!(!status.success());
    assert!(flow.ask().starts_with(&pinned), "open flow, agent down");
    spread(&lab, &client, &client_ip, "tcp", &vip, "8080");

    // Agent back: it adopts the maps, rewrites the tables and flips the
    // service; open flows keep their backend.
    lab.start_agent("n1").expect("restart");
    wait_until(Duration::from_secs(10), || {
        (datapath_backends(&lab).len() == 2).then_some(())
    })
    .unwrap_or_else(|_| panic!("after restart: {:?}", datapath_backends(&lab)));
    assert!(flow.ask().starts_with(&pinned), "open flow, agent back");
    spread(&lab, &client, &client_ip, "tcp", &vip, "8080");
    spread(&lab, &client, &client_ip, "udp", &vip, "9090");
    drop(flow);
    lab.teardown().expect("teardown");
}
