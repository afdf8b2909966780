//! Node drain (`netctl node update --availability drain|active`): a drained
//! node's tasks get no new connection through any node's published port
//! (ingress routing mesh), through the VIP, or through its host-mode port,
//! within 5 s; their open connections keep working; `active` brings them
//! back. Bad requests are one-line refusals that change nothing.

use std::{collections::BTreeSet, time::Duration};

mod common;

use common::{
    flow::Flow,
    task_server::{start_web_tasks, task_of, Server, CLIENT},
};
use netlab::{require_root, wait_until, Container, Lab};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Three nodes, network `appnet`; service `web` (vip) publishes 18080 →
/// 8080 and 18081 → 8081 (ingress) and 28080 → 8080 (host); task web1 on
/// n2, web2 on n3; a client container on n1.
struct Scene {
    lab: Lab,
    client: Container,
    vip: String,
    _servers: Vec<Server>,
}

impl Scene {
    fn up() -> Self {
        let mut lab = Lab::cluster_with_appnet(3).expect("cluster");
        let service = lab
            .netctl_json(
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
                    "published=28080,target=8080,mode=host",
                ],
            )
            .expect("service");
        let vip = service["vips"][0]["addr"].as_str().expect("vip").to_owned();
        let servers = start_web_tasks(&mut lab, &["n2", "n3"]);
        let (client, _) = lab
            .attach_container("n1", "client", "appnet")
            .expect("client");
        Scene {
            lab,
            client,
            vip,
            _servers: servers,
        }
    }

    fn addr(&self, node: &str) -> String {
        self.lab.node(node).expect("node").addr.to_string()
    }

    /// The tasks that answered `count` fresh TCP connections from `netns`
    /// to host:port ("ERR ..." lines as they are).
    fn answers(&self, netns: &str, host: &str, port: &str, count: u32) -> BTreeSet<String> {
        let count = count.to_string();
        let out = self
            .lab
            .exec(netns, &["python3", "-c", CLIENT, "tcp", host, port, &count])
            .expect("client");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| task_of(line).to_owned())
            .collect()
    }

    /// Who answers new connections: each node's published port from the
    /// external client, then the VIP from the client container.
    fn new_connections_reach(&self) -> Vec<BTreeSet<String>> {
        let ext = self.lab.external_netns();
        let mut seen: Vec<BTreeSet<String>> = NODES
            .iter()
            .map(|node| self.answers(&ext, &self.addr(node), "18080", 8))
            .collect();
        seen.push(self.answers(&self.client.netns, &self.vip, "8080", 8));
        seen
    }

    /// What n3's host-mode port answers a new connection.
    fn host_port_of_n3(&self) -> BTreeSet<String> {
        self.answers(&self.lab.external_netns(), &self.addr("n3"), "28080", 1)
    }

    /// A TCP flow from namespace `netns` to host:port that reached web2.
    fn flow_to_web2(&self, netns: &str, host: &str, port: &str) -> Flow {
        let path = std::path::Path::new("/run/netns").join(netns);
        for _ in 0..40 {
            let mut flow = Flow::start(&path, host, "tcp", port);
            if flow.ask().starts_with("web2 ") {
                return flow;
            }
        }
        panic!("no flow to {host}:{port} reached web2");
    }

    /// Polls who answers new connections, through each node's published
    /// port, the VIP, then n3's host-mode port, until `ok`; panics with the
    /// last answers and the agents' logs after `deadline`.
    fn wait_for(&self, deadline: Duration, when: &str, ok: impl Fn(&[BTreeSet<String>]) -> bool) {
        let mut last = Vec::new();
        wait_until(deadline, || {
            last = self.new_connections_reach();
            last.push(self.host_port_of_n3());
            ok(&last).then_some(())
        })
        .unwrap_or_else(|_| panic!("{when}: {last:?}\n{}", self.lab.agent_logs(30)));
    }

    /// `netctl node update ARGS n3` through the manager n1: the new record.
    fn update_n3(&self, args: &[&str]) -> serde_json::Value {
        let full = [&["node", "update"], args, &["n3"]].concat();
        self.lab
            .netctl_json("n1", &full)
            .unwrap_or_else(|e| panic!("node update {args:?}: {e}"))
    }

    fn node(&self, name: &str) -> serde_json::Value {
        self.lab
            .netctl_json("n1", &["node", "inspect", name])
            .expect("inspect")
    }
}

/// Every path reaches both tasks; n3's host-mode port, its own.
fn all_active(seen: &[BTreeSet<String>]) -> bool {
    let both = BTreeSet::from(["web1", "web2"].map(str::to_owned));
    seen[..4].iter().all(|s| *s == both) && seen[4] == BTreeSet::from(["web2".to_owned()])
}

#[test]
fn a_drained_node_gets_no_new_connections_within_five_seconds_and_keeps_its_open_ones() {
    require_root!();
    let mut scene = Scene::up();
    scene.wait_for(Duration::from_secs(20), "before the drain", all_active);
    // Open connections to web2 (on n3): from outside through n1's
    // published port, and from the client through the VIP.
    let ext = scene.lab.external_netns();
    let mut mesh_flow = scene.flow_to_web2(&ext, &scene.addr("n1"), "18081");
    let mut vip_flow = scene.flow_to_web2(&scene.client.netns, &scene.vip, "8081");

    // Drain n3 (through the manager, n1), with a label.
    let drained = scene.update_n3(&["--availability", "drain", "--label-add", "rack=r3"]);
    assert_eq!(drained["availability"], "drain", "{drained}");
    scene.wait_for(Duration::from_secs(5), "5 s after the drain", |seen| {
        let only_web1 = BTreeSet::from(["web1".to_owned()]);
        let refused = !seen[4].is_empty() && seen[4].iter().all(|a| a.contains("refused"));
        seen[..4].iter().all(|s| *s == only_web1) && refused
    });
    assert!(mesh_flow.ask().starts_with("web2 "), "open mesh flow");
    assert!(vip_flow.ask().starts_with("web2 "), "open VIP flow");

    // Every node shows it; inspect has the label.
    let nodes = scene
        .lab
        .netctl_json("n2", &["node", "ls"])
        .expect("node ls");
    for node in nodes.as_array().expect("list") {
        let want = if node["name"] == "n3" {
            "drain"
        } else {
            "active"
        };
        assert_eq!(node["availability"], want, "{node}");
    }
    let n3 = scene.node("n3");
    assert_eq!(n3["labels"]["rack"], "r3", "{n3}");

    // One-line refusals, nothing changed.
    let refused = |node: &str, args: &[&str], expect: &str| {
        let mut full = vec!["node", "update"];
        full.extend_from_slice(args);
        let out = scene.lab.netctl(node, &full).expect("netctl");
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    };
    refused(
        "n1",
        &["--availability", "pause", "n3"],
        "use active or drain",
    );
    refused("n1", &["--availability", "active", "n9"], "no node");
    refused(
        "n1",
        &["--availability", "active", "--label-add", "=x", "n3"],
        "label key",
    );
    refused(
        "n1",
        &["--availability", "active", "--label-rm", "zone", "n3"],
        "has no label",
    );
    refused("n1", &["n3"], "nothing to change");
    // A worker's request goes to the managers, which refuse it.
    refused(
        "n2",
        &["--availability", "active", "n3"],
        "this node is a worker",
    );
    assert_eq!(scene.node("n3"), n3, "a refused update changed n3");

    // Active again, without its label: new connections reach web2 again
    // everywhere.
    let active = scene.update_n3(&["--availability", "active", "--label-rm", "rack"]);
    assert_eq!(active["availability"], "active", "{active}");
    assert!(active["labels"].get("rack").is_none(), "{active}");
    scene.wait_for(Duration::from_secs(10), "after active", all_active);
    assert!(mesh_flow.ask().starts_with("web2 "), "open mesh flow");

    // For the report: when the managers wrote each change and when each
    // node's load balancer applied it.
    eprintln!("{}", drain_log_lines(&scene.lab));
    drop((mesh_flow, vip_flow));
    scene.lab.teardown().expect("teardown");
}

/// The agents' log lines about node updates and their datapath.
fn drain_log_lines(lab: &Lab) -> String {
    lab.agent_logs(100_000)
        .lines()
        .filter(|l| {
            l.starts_with("---")
                || l.contains("node updated")
                || l.contains("load balancing follows")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
