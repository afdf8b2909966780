//! Service discovery: the embedded DNS at 127.0.0.11 in every container,
//! queried with real clients (dig, drill, getent) (issue 4).

use std::time::Duration;

use netlab::{require_root, threads_named, wait_until, Container, Lab, StoppedThread};

/// Three agents in one cluster, network `appnet`, service `web` (vip) and
/// `cache` (dnsrr).
fn cluster() -> Lab {
    let lab = Lab::cluster_with_web(3).expect("cluster");
    lab.netctl_json(
        "n1",
        &[
            "service",
            "create",
            "cache",
            "--network",
            "appnet",
            "--endpoint-mode",
            "dnsrr",
        ],
    )
    .expect("cache");
    lab
}

/// Attaches container `name` on `node` to `network` with extra flags.
fn attach(
    lab: &mut Lab,
    node: &str,
    name: &str,
    network: &str,
    extra: &[&str],
) -> (Container, String) {
    let (container, endpoint) = lab
        .attach_container_with(node, name, network, extra)
        .expect("attach");
    let ip = endpoint["ip"].as_str().expect("ip").to_owned();
    (container, ip)
}

/// Task `SERVICE.N` of `service` in container `<service><n>` on `node`.
fn task(lab: &mut Lab, node: &str, service: &str, n: u32) -> String {
    let name = format!("{service}.{n}");
    attach(
        lab,
        node,
        &format!("{service}{n}"),
        "appnet",
        &["--service", service, "--name", &name],
    )
    .1
}

/// `dig +short` answers (sorted) from inside `container`.
fn dig(lab: &Lab, container: &Container, args: &[&str]) -> Vec<String> {
    let mut full = vec!["dig", "+short", "+time=2", "+tries=1"];
    full.extend_from_slice(args);
    let out = lab.exec(&container.netns, &full).expect("dig");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.starts_with(';'))
        .collect();
    lines.sort();
    lines
}

/// The status (NOERROR, SERVFAIL, ...) of a query from inside `container`.
fn status(lab: &Lab, container: &Container, args: &[&str]) -> String {
    let mut full = vec!["dig", "+time=6", "+tries=1"];
    full.extend_from_slice(args);
    let out = lab.exec(&container.netns, &full).expect("dig");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_owned()
}

fn eventually(
    lab: &Lab,
    container: &Container,
    args: &[&str],
    mut want: Vec<String>,
    within: Duration,
) {
    want.sort();
    wait_until(within, || (dig(lab, container, args) == want).then_some(())).unwrap_or_else(|_| {
        panic!(
            "{} asked {args:?}: got {:?}, want {want:?}\n{}",
            container.name,
            dig(lab, container, args),
            lab.agent_logs(20)
        )
    });
}

/// [`cluster`] with container `client` on n1, once it resolves `web` to
/// the VIP (returned).
fn cluster_with_client() -> (Lab, Container, String) {
    let mut lab = cluster();
    let (client, _) = attach(&mut lab, "n1", "client", "appnet", &[]);
    let vip = vip_of(&lab, "web");
    eventually(
        &lab,
        &client,
        &["web"],
        vec![vip.clone()],
        Duration::from_secs(2),
    );
    (lab, client, vip)
}

fn vip_of(lab: &Lab, service: &str) -> String {
    let service = lab
        .netctl_json("n1", &["service", "inspect", service])
        .expect("inspect");
    service["vips"][0]["addr"].as_str().expect("vip").to_owned()
}

#[test]
fn services_tasks_aliases_and_ptr_across_nodes() {
    require_root!();
    let mut lab = cluster();
    let (client, _) = attach(&mut lab, "n1", "client", "appnet", &[]);
    let (_w1, ip1) = attach(
        &mut lab,
        "n2",
        "web1",
        "appnet",
        &["--service", "web", "--name", "web.1", "--alias", "www"],
    );
    let ip2 = task(&mut lab, "n3", "web", 2);
    let cip1 = task(&mut lab, "n2", "cache", 1);
    let cip2 = task(&mut lab, "n3", "cache", 2);
    let vip = vip_of(&lab, "web");
    let within = Duration::from_secs(2);

    eventually(&lab, &client, &["web"], vec![vip.clone()], within);
    eventually(&lab, &client, &["WEB"], vec![vip.clone()], within);
    eventually(
        &lab,
        &client,
        &["tasks.web"],
        vec![ip1.clone(), ip2.clone()],
        within,
    );
    eventually(
        &lab,
        &client,
        &["cache"],
        vec![cip1.clone(), cip2.clone()],
        within,
    );
    eventually(
        &lab,
        &client,
        &["tasks.cache"],
        vec![cip1.clone(), cip2.clone()],
        within,
    );
    eventually(&lab, &client, &["www"], vec![ip1.clone()], within);
    eventually(&lab, &client, &["web.appnet"], vec![vip.clone()], within);
    // A name that only has IPv4: NOERROR and no AAAA, never forwarded.
    assert_eq!(status(&lab, &client, &["web", "AAAA"]), "NOERROR");
    assert!(dig(&lab, &client, &["web", "AAAA"]).is_empty());
    // PTR for a task address and for the VIP.
    let ptr = dig(&lab, &client, &["-x", &ip2]);
    assert!(
        ptr.iter().any(|name| name.starts_with("web.2")),
        "PTR of {ip2}: {ptr:?}"
    );
    let ptr = dig(&lab, &client, &["-x", &vip]);
    assert!(
        ptr.iter().any(|name| name.starts_with("web")),
        "PTR of the VIP: {ptr:?}"
    );

    // Other clients: drill over TCP, and glibc's getent.
    let out = lab
        .exec(&client.netns, &["drill", "-t", "tasks.web", "@127.0.0.11"])
        .expect("drill");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&ip1) && text.contains(&ip2),
        "drill over TCP: {text}"
    );
    let out = lab
        .exec(&client.netns, &["getent", "hosts", "web.1"])
        .expect("getent");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&ip1),
        "getent hosts web.1"
    );
    let out = lab
        .exec(&client.netns, &["getent", "hosts", "www"])
        .expect("getent");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&ip1),
        "getent hosts www"
    );
    lab.teardown().expect("teardown");
}

#[test]
fn a_container_sees_only_the_names_of_its_networks() {
    require_root!();
    let mut lab = cluster();
    lab.netctl_json(
        "n1",
        &["overlay", "create", "other", "--subnet", "10.20.0.0/24"],
    )
    .expect("other");
    let (app_client, _) = attach(&mut lab, "n1", "a", "appnet", &[]);
    let (other_client, _) = attach(&mut lab, "n1", "o", "other", &[]);
    let (_t, ip) = attach(&mut lab, "n2", "t", "appnet", &["--name", "secret.1"]);
    eventually(
        &lab,
        &app_client,
        &["secret.1"],
        vec![ip],
        Duration::from_secs(2),
    );
    // The other network's container has a working resolver of its own ...
    let (_u, other_ip) = attach(&mut lab, "n2", "u", "other", &["--name", "open.1"]);
    eventually(
        &lab,
        &other_client,
        &["open.1"],
        vec![other_ip],
        Duration::from_secs(2),
    );
    // ... which does not see appnet's names (nor gets them forwarded back).
    assert!(dig(&lab, &other_client, &["secret.1"]).is_empty());
    assert!(dig(&lab, &other_client, &["secret.1.appnet"]).is_empty());
    lab.teardown().expect("teardown");
}

#[test]
fn unknown_names_go_upstream_with_tcp_fallback_and_servfail_when_down() {
    require_root!();
    let mut lab = cluster();
    let (client, _) = attach(&mut lab, "n1", "client", "appnet", &[]);
    eventually(
        &lab,
        &client,
        &["example.org"],
        vec!["198.18.0.200".to_owned()],
        Duration::from_secs(5),
    );
    // 40 addresses do not fit a plain 512-byte UDP answer: truncation, then TCP.
    let many = dig(&lab, &client, &["+noedns", "many.lab"]);
    assert_eq!(many.len(), 40, "many.lab: {many:?}");
    // Cluster names still resolve from an internal network.
    lab.netctl_json("n1", &["overlay", "create", "private", "--internal"])
        .expect("internal");
    let (inside, _) = attach(&mut lab, "n1", "inside", "private", &[]);
    let (_p, pip) = attach(&mut lab, "n2", "p", "private", &["--name", "p.1"]);
    eventually(&lab, &inside, &["p.1"], vec![pip], Duration::from_secs(2));
    // Upstream down: SERVFAIL within the budget, never a hang.
    lab.stop_upstream_dns();
    assert_eq!(
        status(&lab, &client, &["nothing-here.example.org"]),
        "SERVFAIL"
    );
    lab.teardown().expect("teardown");
}

#[test]
fn detached_or_unhealthy_tasks_leave_answers_within_a_second() {
    require_root!();
    let mut lab = cluster();
    let (client, _) = attach(&mut lab, "n1", "client", "appnet", &[]);
    let ip1 = task(&mut lab, "n2", "web", 1);
    let ip2 = task(&mut lab, "n3", "web", 2);
    let both = [ip1.clone(), ip2.clone()];
    eventually(
        &lab,
        &client,
        &["tasks.web"],
        both.to_vec(),
        Duration::from_secs(2),
    );

    lab.netctl_json("n2", &["endpoint", "health", "web.1", "unhealthy"])
        .expect("unhealthy");
    eventually(
        &lab,
        &client,
        &["tasks.web"],
        vec![ip2.clone()],
        Duration::from_secs(1),
    );
    lab.netctl_json("n2", &["endpoint", "health", "web.1", "healthy"])
        .expect("healthy");
    eventually(
        &lab,
        &client,
        &["tasks.web"],
        both.to_vec(),
        Duration::from_secs(1),
    );

    lab.netctl_json("n3", &["endpoint", "detach", "web.2"])
        .expect("detach");
    eventually(
        &lab,
        &client,
        &["tasks.web"],
        vec![ip1.clone()],
        Duration::from_secs(1),
    );
    // A task on the client's own node: within 100 ms of the change, well
    // inside the 1 s deadline here.
    let ip3 = task(&mut lab, "n1", "web", 3);
    eventually(
        &lab,
        &client,
        &["tasks.web"],
        vec![ip1, ip3],
        Duration::from_secs(1),
    );
    lab.teardown().expect("teardown");
}

#[test]
fn a_container_can_bind_port_53_itself() {
    require_root!();
    let (mut lab, client, _) = cluster_with_client();
    let bind = lab
        .exec(
            &client.netns,
            &[
                "python3",
                "-c",
                "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 53)); t=socket.socket(); t.bind(('0.0.0.0', 53)); t.listen()",
            ],
        )
        .expect("python3");
    assert!(
        bind.status.success(),
        "the container could not bind port 53: {}",
        String::from_utf8_lossy(&bind.stderr)
    );
    // The resolver is not reachable from outside the container: not an open
    // resolver on any node address.
    let out = lab
        .exec(
            &lab.external_netns(),
            &["dig", "+time=1", "+tries=1", "@198.18.0.11", "web"],
        )
        .expect("dig");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("status: NOERROR"));
    lab.teardown().expect("teardown");
}

#[test]
fn bad_queries_get_rfc_answers_and_never_stall_the_resolver() {
    require_root!();
    let (mut lab, client, vip) = cluster_with_client();
    // Junk datagrams and a half-open TCP connection first.
    let junk = lab
        .exec(
            &client.netns,
            &[
                "python3",
                "-c",
                "import socket\n\
                 u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 for p in (b'\\x01', b'\\xff'*12, b'\\x00'*600): u.sendto(p, ('127.0.0.11', 53))\n\
                 t=socket.create_connection(('127.0.0.11', 53)); t.send(b'\\x00')",
            ],
        )
        .expect("python3");
    assert!(
        junk.status.success(),
        "{}",
        String::from_utf8_lossy(&junk.stderr)
    );
    assert_eq!(status(&lab, &client, &["+opcode=status", "web"]), "NOTIMP");
    assert_eq!(
        status(&lab, &client, &["version.bind", "CH", "TXT"]),
        "REFUSED"
    );
    // Still answering, over UDP and TCP.
    assert_eq!(dig(&lab, &client, &["web"]), vec![vip.clone()]);
    assert_eq!(dig(&lab, &client, &["+tcp", "web"]), vec![vip]);
    lab.teardown().expect("teardown");
}

/// A resolver thread that cannot run (here: stopped, as it would be behind
/// a CPU taken by another task) does not hold the answers: the node's other
/// resolver thread serves the queries meanwhile, whichever of the two it is.
#[test]
fn answers_go_on_while_a_resolver_thread_cannot_run() {
    require_root!();
    let (mut lab, client, vip) = cluster_with_client();
    let agent = lab
        .node("n1")
        .ok()
        .and_then(|node| node.agent())
        .map(|agent| agent.id.pid)
        .expect("the agent of n1");
    let threads = threads_named(agent, "dns-udp-");
    let cpus = std::thread::available_parallelism().map_or(1, |cpus| cpus.get());
    assert_eq!(
        threads.len(),
        cpus.min(2),
        "resolver threads on {cpus} CPUs: {threads:?}"
    );
    if threads.len() < 2 {
        // One CPU, one resolver thread: nothing to take over.
        lab.teardown().expect("teardown");
        return;
    }
    for (name, tid) in &threads {
        let stopped = StoppedThread::stop(*tid).expect("stopping a resolver thread");
        // Each dig asks from a new port, answered within its 2 s or not at all.
        for _ in 0..5 {
            assert_eq!(
                dig(&lab, &client, &["web"]),
                vec![vip.clone()],
                "with {name} stopped"
            );
        }
        drop(stopped);
    }
    assert_eq!(dig(&lab, &client, &["web"]), vec![vip]);
    lab.teardown().expect("teardown");
}
