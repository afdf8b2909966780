//! VIP load balancing in eBPF at the client's veth: a service VIP spreads
//! TCP and UDP flows over tasks on other nodes, and the tasks see the real
//! client address (no SNAT).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

mod common;

use common::{
    flow::Flow,
    task_server::{every_answer, Server, CLIENT},
};
use netlab::{require_root, wait_until, Container, Lab};

/// Three nodes, network `appnet`, service `web` with a task (and server)
/// on n2 and on n3, a client on n1; TCP to the VIP already reaches both.
struct Scene {
    lab: Lab,
    client: Container,
    client_ip: String,
    /// The containers of web1 (n2) and web2 (n3).
    tasks: [Container; 2],
    /// Their endpoints, as `netctl endpoint attach` printed them.
    endpoints: [serde_json::Value; 2],
    vip: String,
    _servers: [Server; 2],
}

impl Scene {
    fn up() -> Self {
        let mut lab = Lab::cluster_with_web(3).expect("cluster");
        let (client, endpoint) = lab
            .attach_container_with("n1", "client", "appnet", &[])
            .expect("client");
        let client_ip = endpoint["ip"].as_str().expect("ip").to_owned();
        let task = |lab: &mut Lab, node: &str, n: u32| {
            let name = format!("web.{n}");
            lab.attach_container_with(
                node,
                &format!("web{n}"),
                "appnet",
                &["--service", "web", "--name", &name],
            )
            .expect("task")
        };
        let (web1, e1) = task(&mut lab, "n2", 1);
        let (web2, e2) = task(&mut lab, "n3", 2);
        let servers = [Server::start(&web1, "web1"), Server::start(&web2, "web2")];
        let service = lab
            .netctl_json("n1", &["service", "inspect", "web"])
            .expect("inspect");
        let vip = service["vips"][0]["addr"].as_str().expect("vip").to_owned();
        let scene = Scene {
            lab,
            client,
            client_ip,
            tasks: [web1, web2],
            endpoints: [e1, e2],
            vip,
            _servers: servers,
        };
        scene.spread("tcp", "8080");
        scene
    }

    /// Asks until both tasks have answered `proto` on the VIP.
    fn spread(&self, proto: &str, port: &str) {
        spread(
            &self.lab,
            &self.client,
            &self.client_ip,
            proto,
            &self.vip,
            port,
        );
    }

    /// A `proto` flow from the client to the VIP and the task it is pinned
    /// to (0: web1, 1: web2).
    fn pinned_flow(&self, proto: &str) -> (Flow, usize) {
        let port = if proto == "tcp" { "8081" } else { "9090" };
        let mut flow = Flow::start(&self.client.netns_path(), &self.vip, proto, port);
        let first = flow.ask();
        let pinned = match first.split(' ').next() {
            Some("web1") => 0,
            Some("web2") => 1,
            _ => panic!("first answer: {first}"),
        };
        (flow, pinned)
    }
}

/// The backends of `web` as `node`'s datapath holds them (`service
/// inspect`'s `datapath` field).
fn inspected_backends(lab: &Lab, node: &str) -> Vec<serde_json::Value> {
    let service = lab
        .netctl_json(node, &["service", "inspect", "web"])
        .expect("inspect");
    service["datapath"][0]["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The datapath's backends of `web` on n1: (ip, state).
fn datapath_backends(lab: &Lab) -> Vec<(String, String)> {
    inspected_backends(lab, "n1")
        .iter()
        .map(|b| {
            (
                b["ip"].as_str().unwrap_or_default().to_owned(),
                b["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The datapath's new-flow counters of `web` on `node`: ip -> connections.
fn connections(lab: &Lab, node: &str) -> BTreeMap<String, u64> {
    inspected_backends(lab, node)
        .iter()
        .map(|b| {
            (
                b["ip"].as_str().unwrap_or_default().to_owned(),
                b["connections"].as_u64().expect("connections"),
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
    let mut scene = Scene::up();
    scene.spread("udp", "9090");

    // A task reaching its own service always gets the other task.
    let web1_ip = scene.endpoints[0]["ip"].as_str().expect("ip").to_owned();
    let mut answers = ask(&scene.lab, &scene.tasks[0], "tcp", &scene.vip, "8080", 32);
    answers.extend(ask(
        &scene.lab,
        &scene.tasks[0],
        "udp",
        &scene.vip,
        "9090",
        32,
    ));
    assert!(
        every_answer(&answers, 64, |a| a == format!("web2 {web1_ip}")),
        "web1 to its own VIP: {answers:?}"
    );

    // The datapath's own view: two active backends in the table.
    let backends = datapath_backends(&scene.lab);
    assert_eq!(backends.len(), 2, "datapath view: {backends:?}");
    assert!(
        backends.iter().all(|(_, state)| state == "active"),
        "{backends:?}"
    );
    scene.lab.teardown().expect("teardown");
}

#[test]
fn an_unhealthy_task_drains_no_task_refuses_and_a_gone_task_loses_its_flows() {
    require_root!();
    let mut scene = Scene::up();
    let (mut flow, pinned) = scene.pinned_flow("udp");
    let other = 1 - pinned;
    let nodes = ["n2", "n3"];
    let field = |n: usize, key: &str| scene.endpoints[n][key].as_str().expect(key).to_owned();
    let (sick_id, sick_ip) = (field(pinned, "id"), field(pinned, "ip"));
    let other_id = field(other, "id");
    let lab = &scene.lab;
    lab.netctl(
        nodes[pinned],
        &["endpoint", "health", &sick_id, "unhealthy"],
    )
    .expect("health");
    wait_until(Duration::from_secs(10), || {
        datapath_backends(lab)
            .contains(&(sick_ip.clone(), "draining".to_owned()))
            .then_some(())
    })
    .unwrap_or_else(|_| panic!("never draining: {:?}", datapath_backends(lab)));

    // New flows all go to the healthy task; the open flow stays where it was.
    let healthy = format!("web{} ", other + 1);
    let answers = ask(lab, &scene.client, "tcp", &scene.vip, "8080", 16);
    assert!(
        every_answer(&answers, 16, |a| a.starts_with(&healthy)),
        "new flows after the drain: {answers:?}"
    );
    let again = flow.ask();
    assert!(
        again.starts_with(&format!("web{} ", pinned + 1)),
        "the open flow moved: {again}"
    );

    // No healthy task left: a new flow is refused at once (TCP RST, ICMP
    // port unreachable), not left to time out.
    lab.netctl(
        nodes[other],
        &["endpoint", "health", &other_id, "unhealthy"],
    )
    .expect("health");
    wait_until(Duration::from_secs(10), || {
        datapath_backends(lab)
            .iter()
            .all(|(_, state)| state == "draining")
            .then_some(())
    })
    .unwrap_or_else(|_| panic!("never all draining: {:?}", datapath_backends(lab)));
    let mut answers = ask(lab, &scene.client, "tcp", &scene.vip, "8080", 1);
    answers.extend(ask(lab, &scene.client, "udp", &scene.vip, "9090", 1));
    assert!(
        answers.len() == 2 && answers.iter().all(|a| a.contains("refused")),
        "with no backend: {answers:?}"
    );

    // The other task healthy again, the drained one gone: its open flow
    // moves to the task that is left instead of vanishing.
    lab.netctl(nodes[other], &["endpoint", "health", &other_id, "healthy"])
        .expect("health");
    lab.netctl(nodes[pinned], &["endpoint", "detach", &sick_id])
        .expect("detach");
    wait_until(Duration::from_secs(10), || {
        (datapath_backends(lab) == [(field(other, "ip"), "active".to_owned())]).then_some(())
    })
    .unwrap_or_else(|_| panic!("after the detach: {:?}", datapath_backends(lab)));
    let moved = flow.ask();
    assert!(moved.starts_with(&healthy), "flow of a gone task: {moved}");
    drop(flow);
    scene.lab.teardown().expect("teardown");
}

#[test]
fn flows_survive_an_agent_kill_and_restart() {
    require_root!();
    let mut scene = Scene::up();
    let (mut flow, pinned) = scene.pinned_flow("udp");
    let pinned = format!("web{} ", pinned + 1);

    // Agent down: the programs and pinned maps carry on alone.
    let status = scene
        .lab
        .signal_agent("n1", nix::sys::signal::Signal::SIGKILL)
        .expect("kill agent");
    assert!(!status.success());
    assert!(flow.ask().starts_with(&pinned), "open flow, agent down");
    scene.spread("tcp", "8080");

    // Agent back: it adopts the maps, rewrites the tables and flips the
    // service; open flows keep their backend.
    scene.lab.start_agent("n1").expect("restart");
    wait_until(Duration::from_secs(10), || {
        (datapath_backends(&scene.lab).len() == 2).then_some(())
    })
    .unwrap_or_else(|_| panic!("after restart: {:?}", datapath_backends(&scene.lab)));
    assert!(flow.ask().starts_with(&pinned), "open flow, agent back");
    scene.spread("tcp", "8080");
    scene.spread("udp", "9090");
    drop(flow);
    scene.lab.teardown().expect("teardown");
}

#[test]
fn three_hundred_connections_from_a_fourth_node_spread_over_three_tasks() {
    require_root!();
    let mut lab = Lab::cluster_with_web(4).expect("cluster");
    let mut servers = Vec::new();
    let mut task_ips = Vec::new();
    for n in 1..=3 {
        let name = format!("web.{n}");
        let (container, endpoint) = lab
            .attach_container_with(
                &format!("n{n}"),
                &format!("web{n}"),
                "appnet",
                &["--service", "web", "--name", &name],
            )
            .expect("task");
        servers.push(Server::start(&container, &format!("web{n}")));
        task_ips.push(endpoint["ip"].as_str().expect("ip").to_owned());
    }
    let (client, _) = lab
        .attach_container_with("n4", "client", "appnet", &[])
        .expect("client");
    let service = lab
        .netctl_json("n1", &["service", "inspect", "web"])
        .expect("inspect");
    let vip = service["vips"][0]["addr"].as_str().expect("vip").to_owned();
    // Every task answers before counting (servers up, backends programmed).
    wait_until(Duration::from_secs(20), || {
        let answers = ask(&lab, &client, "tcp", &vip, "8080", 24);
        let names: BTreeSet<String> = answers
            .iter()
            .filter(|l| !l.starts_with("ERR"))
            .filter_map(|l| l.split(' ').next().map(str::to_owned))
            .collect();
        (names.len() == 3).then_some(())
    })
    .unwrap_or_else(|_| panic!("not every task answered\n{}", lab.agent_logs(30)));

    let before = connections(&lab, "n4");
    let answers = ask(&lab, &client, "tcp", &vip, "8080", 300);
    let after = connections(&lab, "n4");
    let errors = answers.iter().filter(|l| l.starts_with("ERR")).count();
    assert_eq!(errors, 0, "refused or lost connections: {answers:?}");
    for n in 1..=3 {
        let share = answers
            .iter()
            .filter(|l| l.starts_with(&format!("web{n} ")))
            .count();
        assert!(
            (60..=138).contains(&share),
            "web{n} got {share} of 300 connections (want 20% to 46%)"
        );
        // The client's node counted each connection once, for its task.
        let ip = &task_ips[n - 1];
        let counted = after.get(ip).copied().unwrap_or(0) - before.get(ip).copied().unwrap_or(0);
        assert_eq!(
            counted, share as u64,
            "web{n} ({ip}): the datapath counted {counted} new flows, it answered {share}: \
             before {before:?}, after {after:?}"
        );
    }
    drop(servers);
    lab.teardown().expect("teardown");
}

#[test]
fn a_long_lived_tcp_connection_survives_adding_and_removing_other_tasks() {
    require_root!();
    let mut scene = Scene::up();
    let (mut flow, pinned) = scene.pinned_flow("tcp");
    let answer = format!("web{} {}", pinned + 1, scene.client_ip);
    assert_eq!(flow.ask(), answer);

    // A third task joins (on n1): the open connection keeps its task.
    let (web3, _) = scene
        .lab
        .attach_container_with(
            "n1",
            "web3",
            "appnet",
            &["--service", "web", "--name", "web.3"],
        )
        .expect("third task");
    let _server = Server::start(&web3, "web3");
    wait_until(Duration::from_secs(5), || {
        (datapath_backends(&scene.lab).len() == 3).then_some(())
    })
    .unwrap_or_else(|_| panic!("three backends: {:?}", datapath_backends(&scene.lab)));
    assert_eq!(flow.ask(), answer, "after a task was added");

    // The other original task leaves: still the same task.
    let (other_node, other_task) = if pinned == 0 {
        ("n3", "web.2")
    } else {
        ("n2", "web.1")
    };
    scene
        .lab
        .netctl_json(other_node, &["endpoint", "detach", other_task])
        .expect("detach");
    wait_until(Duration::from_secs(5), || {
        (datapath_backends(&scene.lab).len() == 2).then_some(())
    })
    .unwrap_or_else(|_| panic!("two backends: {:?}", datapath_backends(&scene.lab)));
    assert_eq!(flow.ask(), answer, "after another task was removed");
    drop(flow);
    scene.lab.teardown().expect("teardown");
}
