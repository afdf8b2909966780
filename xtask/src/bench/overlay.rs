//! `cargo xtask bench overlay`: iperf3 TCP, one stream, container to
//! container across two nodes, through (a) netagent's overlay, (b) the two
//! node namespaces talking directly over the underlay, (c) the same kernel
//! topology built by hand with `ip link` and `bridge fdb` (veth, bridge,
//! vxlan, static FDB). Rounds alternate between the three so that noise hits
//! them alike; the table reports medians and ratios.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use netlab::{Lab, LabSpec};

use super::report::{self, TableRow};

const ROUNDS: usize = 3;
const SECONDS: &str = "4";

pub fn run(_args: &[String]) -> Result<()> {
    let mut lab = Lab::up(LabSpec::nodes(2)).context("building the lab")?;
    let result = measure(&mut lab);
    let torn = lab.teardown();
    result.and_then(|()| torn.context("tearing down"))
}

/// An iperf3 server, stopped by pid on drop.
struct Server(Child);

impl Server {
    fn start(netns: &str, bind: &str) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "iperf3", "-s", "-B", bind])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("iperf3 -s (run `cargo xtask setup`)")?;
        Ok(Server(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Bits per second of one iperf3 run from `netns` to `server`.
fn iperf(lab: &Lab, netns: &str, server: &str) -> Result<f64> {
    // The server may need a moment to listen: retry the connection briefly.
    let output = netlab::wait_until(Duration::from_secs(5), || {
        let out = lab
            .exec(netns, &["iperf3", "-c", server, "-t", SECONDS, "-J"])
            .ok()?;
        out.status.success().then_some(out)
    })
    .map_err(|_| anyhow::anyhow!("iperf3 from {netns} to {server} failed"))?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 from {netns} to {server} failed: {}", json["error"]))
}

fn ip(lab: &Lab, netns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["ip"];
    full.extend_from_slice(args);
    let out = lab.exec(netns, &full)?;
    if !out.status.success() {
        bail!(
            "ip {} in {netns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Builds, in node namespace `node`, what netagent builds, by hand: a
/// sandbox-like bridge with a vxlan (VNI 9999, port 4790) and a veth into a
/// fresh container namespace at `addr`, with a static FDB entry to `peer`.
fn hand_built(
    lab: &mut Lab,
    node: &str,
    name: &str,
    addr: &str,
    peer_vtep: &str,
    peer_mac: &str,
) -> Result<String> {
    let container = lab.add_container(name)?;
    let node_netns = lab.node(node)?.netns.clone();
    let local = lab.node(node)?.addr.to_string();
    ip(lab, &node_netns, &["link", "add", "hbbr", "type", "bridge"])?;
    ip(
        lab,
        &node_netns,
        &[
            "link",
            "add",
            "hbvx",
            "type",
            "vxlan",
            "id",
            "9999",
            "dstport",
            "4790",
            "local",
            &local,
            "dev",
            "eth0",
            "nolearning",
            "proxy",
        ],
    )?;
    ip(
        lab,
        &node_netns,
        &["link", "set", "hbvx", "mtu", "1450", "master", "hbbr", "up"],
    )?;
    ip(lab, &node_netns, &["link", "set", "hbbr", "up"])?;
    ip(
        lab,
        &node_netns,
        &[
            "link",
            "add",
            "hbve",
            "mtu",
            "1450",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &container.netns,
        ],
    )?;
    ip(
        lab,
        &node_netns,
        &["link", "set", "hbve", "master", "hbbr", "up"],
    )?;
    let mac = format!("02:99:00:00:00:{}", &addr[addr.len() - 1..]);
    ip(
        lab,
        &container.netns,
        &["link", "set", "eth0", "address", &mac, "mtu", "1450", "up"],
    )?;
    ip(
        lab,
        &container.netns,
        &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
    )?;
    let out = lab.exec(
        &node_netns,
        &[
            "bridge",
            "fdb",
            "append",
            peer_mac,
            "dev",
            "hbvx",
            "dst",
            peer_vtep,
            "self",
            "permanent",
        ],
    )?;
    if !out.status.success() {
        bail!(
            "bridge fdb append: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // As netagent does: a static bridge entry towards the vxlan port and a
    // permanent neighbour the vxlan device answers ARP from (proxy).
    let peer_ip = if addr.ends_with(".1") {
        "10.99.0.2"
    } else {
        "10.99.0.1"
    };
    for args in [
        vec![
            "bridge", "fdb", "add", peer_mac, "dev", "hbvx", "master", "static",
        ],
        vec![
            "ip",
            "neigh",
            "add",
            peer_ip,
            "lladdr",
            peer_mac,
            "dev",
            "hbvx",
            "nud",
            "permanent",
        ],
    ] {
        let out = lab.exec(&node_netns, &args)?;
        if !out.status.success() {
            bail!(
                "{}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(container.netns)
}

fn measure(lab: &mut Lab) -> Result<()> {
    lab.start_agents()?;
    lab.form_cluster()?;
    lab.netctl_json(
        "n1",
        &["overlay", "create", "benchnet", "--subnet", "10.10.0.0/24"],
    )?;
    let c1 = lab.attach_container("n1", "c1", "benchnet")?.0.netns;
    let (c2, ip2) = lab.attach_container("n2", "c2", "benchnet")?;
    let c2 = c2.netns;
    let hb1 = hand_built(
        lab,
        "n1",
        "hb1",
        "10.99.0.1",
        "198.18.0.12",
        "02:99:00:00:00:2",
    )?;
    let hb2 = hand_built(
        lab,
        "n2",
        "hb2",
        "10.99.0.2",
        "198.18.0.11",
        "02:99:00:00:00:1",
    )?;
    let n1 = lab.node("n1")?.netns.clone();
    let n2 = lab.node("n2")?.netns.clone();
    let n2_addr = lab.node("n2")?.addr.to_string();

    let _servers = [
        Server::start(&c2, &ip2)?,
        Server::start(&n2, &n2_addr)?,
        Server::start(&hb2, "10.99.0.2")?,
    ];
    let (mut ours, mut underlay, mut by_hand) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        println!("round {round}/{ROUNDS}");
        ours.push(iperf(lab, &c1, &ip2)?);
        underlay.push(iperf(lab, &n1, &n2_addr)?);
        by_hand.push(iperf(lab, &hb1, "10.99.0.2")?);
    }
    let (ours_m, underlay_m, hand_m) = (
        report::median(ours.clone()),
        report::median(underlay.clone()),
        report::median(by_hand.clone()),
    );
    let gbps = |bps: f64| format!("{:.2} Gbit/s", bps / 1e9);
    let rows = vec![
        TableRow::new("netagent overlay (median)", gbps(ours_m)),
        TableRow::new("hand-built vxlan (median)", gbps(hand_m)),
        TableRow::new("underlay direct (median)", gbps(underlay_m)),
        TableRow::new(
            "overlay / hand-built (target >= 0.98)",
            format!("{:.3}", ours_m / hand_m),
        ),
        TableRow::new(
            "overlay / underlay (target >= 0.70)",
            format!("{:.3}", ours_m / underlay_m),
        ),
    ];
    report::write(
        "overlay",
        &rows,
        serde_json::json!({"ours_bps": ours, "hand_built_bps": by_hand, "underlay_bps": underlay}),
    )
}
