//! VIP load balancing in eBPF at the client's veth: a service VIP spreads
//! TCP and UDP flows over tasks on other nodes, and the tasks see the real
//! client address (no SNAT).

use std::{
    collections::BTreeSet,
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
    (container, endpoint["ip"].as_str().expect("ip").to_owned())
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
    let (client, client_ip) = attach(&mut lab, "n1", "client", &[]);
    let (web1, _) = attach(
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
    let service = lab
        .netctl_json("n1", &["service", "inspect", "web"])
        .expect("inspect");
    let vip = service["vips"][0]["addr"].as_str().expect("vip").to_owned();

    spread(&lab, &client, &client_ip, "tcp", &vip, "8080");
    spread(&lab, &client, &client_ip, "udp", &vip, "9090");

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
