//! The foundation: agents start in node namespaces, answer netctl, load and
//! attach their eBPF programs, and stop or restart cleanly.

use std::time::Duration;

use netlab::{require_root, wait_until, Lab, LabSpec};
use nix::sys::signal::Signal;
use serde_json::Value;

/// The counters of `ifname` as `netctl status --format json` shows them.
fn counters(lab: &Lab, node: &str, ifname: &str) -> Value {
    let status = lab.netctl_json(node, &["status"]).expect("netctl status");
    status["interfaces"]
        .as_array()
        .and_then(|ifaces| ifaces.iter().find(|i| i["ifname"] == ifname))
        .cloned()
        .unwrap_or_else(|| panic!("no counters for {ifname} on {node}: {status}"))
}

fn rx_packets(lab: &Lab, node: &str) -> u64 {
    counters(lab, node, "eth0")["rx_packets"]
        .as_u64()
        .expect("rx_packets is a number")
}

fn ping(lab: &Lab, from_netns: &str, to: &str, count: u32) {
    let output = lab
        .exec(
            from_netns,
            &[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.05",
                "-W",
                "2",
                to,
            ],
        )
        .expect("run ping");
    assert!(
        output.status.success(),
        "ping {to} from {from_netns} failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn three_agents_answer_netctl_with_their_datapath() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(3)).expect("lab");
    lab.start_agents().expect("agents");
    for node in ["n1", "n2", "n3"] {
        let status = lab.netctl_json(node, &["status"]).expect("status");
        assert_eq!(status["node_name"], node);
        assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            status["advertise_addr"],
            lab.node(node).unwrap().addr.to_string()
        );
        let programs = status["programs"].as_array().expect("programs");
        for (name, direction) in [("count_ingress", "ingress"), ("count_egress", "egress")] {
            let program = programs
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{name} not loaded on {node}: {status}"));
            assert_eq!(program["ifname"], "eth0");
            assert_eq!(program["direction"], direction);
            assert!(program["prog_id"].as_u64().unwrap_or(0) > 0);
        }
        // The table output names the node and the programs too.
        let table = lab.netctl(node, &["status"]).expect("netctl");
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(
            text.contains(node) && text.contains("count_ingress"),
            "{text}"
        );
    }
    lab.teardown().expect("clean teardown");
}

#[test]
fn counters_move_with_traffic_and_stay_without() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(3)).expect("lab");
    lab.start_agent("n1").expect("agent");
    let n2 = lab.node("n2").unwrap().netns.clone();
    let n1_addr = lab.node("n1").unwrap().addr.to_string();
    let n3_addr = lab.node("n3").unwrap().addr.to_string();

    // Resolve n3's MAC first, so the switch knows where n2 <-> n3 frames go
    // and floods nothing to n1 afterwards.
    ping(&lab, &n2, &n3_addr, 1);

    let before = rx_packets(&lab, "n1");
    ping(&lab, &n2, &n1_addr, 5);
    let after = wait_until(Duration::from_secs(5), || {
        let now = rx_packets(&lab, "n1");
        (now >= before + 5).then_some(now)
    })
    .unwrap_or_else(|_| {
        panic!(
            "n1 counted {} of 5 echo requests",
            rx_packets(&lab, "n1") - before
        )
    });

    // Traffic that does not cross n1's interface does not move its counter:
    // 5 requests and 5 replies between n2 and n3 leave it where it was. (A
    // stray frame, like an ARP probe, may still arrive meanwhile: allow one.)
    ping(&lab, &n2, &n3_addr, 5);
    let now = rx_packets(&lab, "n1");
    assert!(
        now <= after + 1,
        "n1 counted packets it never saw ({before} -> {after} -> {now})"
    );
    lab.teardown().expect("clean teardown");
}

#[test]
fn restarted_agent_adopts_its_datapath_and_counts_kept() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(2)).expect("lab");
    lab.start_agent("n1").expect("agent");
    let n2 = lab.node("n2").unwrap().netns.clone();
    let n1_addr = lab.node("n1").unwrap().addr.to_string();
    ping(&lab, &n2, &n1_addr, 3);
    let before = rx_packets(&lab, "n1");

    let status = lab.signal_agent("n1", Signal::SIGKILL).expect("kill agent");
    assert!(!status.success());
    // The programs stay attached while the agent is down, and keep counting
    // into the pinned map.
    ping(&lab, &n2, &n1_addr, 4);
    lab.start_agent("n1").expect("restart");
    let counted = rx_packets(&lab, "n1");
    assert!(
        counted >= before + 4,
        "packets sent while the agent was down were not counted: {before} -> {counted}"
    );
    // The restarted agent replaced its programs in place: still one filter
    // per direction, not a second one next to the first.
    let filters = lab
        .exec(
            &lab.node("n1").unwrap().netns,
            &["tc", "filter", "show", "dev", "eth0", "ingress"],
        )
        .expect("tc");
    let text = String::from_utf8_lossy(&filters.stdout);
    let filters = text
        .lines()
        .filter(|line| line.contains("count_ingress"))
        .count();
    assert_eq!(filters, 1, "{text}");
    lab.teardown().expect("clean teardown");
}

#[test]
fn sigterm_stops_the_agent_cleanly_and_netctl_says_so() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(1)).expect("lab");
    lab.start_agent("n1").expect("agent");
    let socket = lab.node("n1").unwrap().agent().unwrap().socket.clone();

    let status = lab.signal_agent("n1", Signal::SIGTERM).expect("stop");
    assert!(status.success(), "netagent exited with {status} on SIGTERM");
    assert!(!socket.exists(), "the API socket outlived the agent");

    let output = lab.netctl("n1", &["status"]).expect("netctl");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.contains(&socket.display().to_string()), "{stderr}");

    // A killed agent leaves its socket file behind: netctl tells the
    // difference between no socket and nobody answering.
    lab.start_agent("n1").expect("restart");
    lab.signal_agent("n1", Signal::SIGKILL).expect("kill");
    let output = lab.netctl("n1", &["status"]).expect("netctl");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("not running") && stderr.contains(&socket.display().to_string()),
        "{stderr}"
    );
    lab.teardown().expect("clean teardown");
}

#[test]
fn bpffs_elsewhere_is_refused_and_leaves_nothing() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(1)).expect("lab");
    let not_bpffs = lab.state_dir().join("not-bpffs");
    let command = lab.agent_command("n1").expect("command");
    let node = lab.node("n1").unwrap();
    // Same flags as the lab's, but --bpffs on tmpfs.
    let mut args: Vec<String> = command
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .collect();
    let at = args
        .iter()
        .position(|a| a == "--bpffs")
        .expect("--bpffs flag");
    args[at + 1] = not_bpffs.display().to_string();
    let output = std::process::Command::new("nsenter")
        .arg(format!("--net={}", node.netns_path().display()))
        .args(&args[1..])
        .output()
        .expect("run netagent");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not on a bpf filesystem"), "{stderr}");
    assert!(
        !not_bpffs.join("maps").exists(),
        "left a pin directory behind"
    );
    let filters = lab
        .exec(
            &node.netns,
            &["tc", "filter", "show", "dev", "eth0", "ingress"],
        )
        .expect("tc");
    assert!(filters.stdout.is_empty(), "left a filter behind");
    lab.teardown().expect("clean teardown");
}

#[test]
fn an_agent_on_a_node_without_bpffs_mounts_one_and_comes_up() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(1)).expect("lab");
    // Only the agent's own mount namespace lacks a bpffs; the host keeps its.
    lab.start_agent_without_bpffs("n1")
        .expect("the agent comes up on a node without a bpf filesystem");
    let status = lab.netctl_json("n1", &["status"]).expect("netctl status");
    let programs = status["programs"].as_array().cloned().unwrap_or_default();
    assert!(
        programs.iter().any(|p| p["name"] == "count_ingress"),
        "no datapath program attached: {status}"
    );
    let agent = lab.node("n1").unwrap().agent().expect("agent");
    let log = std::fs::read_to_string(&agent.log).expect("agent log");
    assert!(
        log.contains("no bpf filesystem was mounted: mounted one"),
        "the agent did not say that it mounted a bpffs:\n{log}"
    );
    // The pins went to the agent's own bpffs, not the host's.
    let host_pins = agent.bpffs.join("maps");
    assert!(
        !host_pins.exists(),
        "pins appeared on the host's bpffs: {}",
        host_pins.display()
    );
    lab.teardown().expect("clean teardown");
}
