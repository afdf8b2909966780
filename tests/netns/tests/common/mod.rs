//! Helpers shared by the namespace tests: those that drive
//! `netagent::dataplane::overlay` directly against lab node namespaces, and
//! (`task_server`, `flow`) the service tests' servers and clients.
#![allow(dead_code)]

pub mod flow;
pub mod task_server;

use std::{net::Ipv4Addr, path::Path};

use netagent::{
    dataplane::overlay::{Attachment, OverlayConfig},
    model::{Mac, Network},
};
use netlab::Lab;
use serde_json::Value;

/// A network `10.<third>.0.0/24` with gateway `.1`.
pub fn network(name: &str, vni: u32, third: u8, internal: bool) -> Network {
    Network {
        name: name.into(),
        id: format!("net-{name}"),
        vni,
        subnet: format!("10.{third}.0.0/24").parse().expect("subnet"),
        gateway: Ipv4Addr::new(10, third, 0, 1),
        internal,
        mtu: None,
    }
}

/// The overlay configuration of lab node `node`: everything in its
/// namespace, sandboxes named after the lab prefix (so the sweep finds them).
pub fn config(lab: &Lab, node: &str) -> OverlayConfig {
    let node = lab.node(node).expect("node");
    OverlayConfig {
        netns_prefix: format!("{}-{}", lab.prefix(), node.name),
        owner: netagent::dataplane::sandbox::owner_mark(
            &lab.state_dir().join(&node.name).join("data"),
        ),
        underlay: "eth0".into(),
        vtep: node.addr,
        node_netns: Some(node.netns_path()),
    }
}

/// Runs `args` in `netns`: (success, stdout + stderr).
pub fn run(lab: &Lab, netns: &str, args: &[&str]) -> (bool, String) {
    let output = lab.exec(netns, args).expect("exec");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Runs `args` in `netns`, which must succeed; returns what it printed.
pub fn stdout(lab: &Lab, netns: &str, args: &[&str]) -> String {
    let (ok, out) = run(lab, netns, args);
    assert!(ok, "{} in {netns} failed: {out}", args.join(" "));
    out
}

/// `ip -j link show NAME` in `netns`, or None when the link does not exist.
pub fn link(lab: &Lab, netns: &str, name: &str) -> Option<Value> {
    let output = lab
        .exec(netns, &["ip", "-j", "link", "show", name])
        .expect("exec ip");
    if !output.status.success() {
        return None;
    }
    let links: Value = serde_json::from_slice(&output.stdout).expect("ip -j output");
    links.as_array().and_then(|l| l.first()).cloned()
}

/// The names of the links of `netns`.
pub fn link_names(lab: &Lab, netns: &str) -> Vec<String> {
    let links: Value =
        serde_json::from_str(&stdout(lab, netns, &["ip", "-j", "link", "show"])).expect("json");
    links
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect()
}

pub fn pings(lab: &Lab, from: &str, to: Ipv4Addr) -> bool {
    run(
        lab,
        from,
        &["ping", "-c", "1", "-W", "1", "-q", &to.to_string()],
    )
    .0
}

/// A container attachment with Docker's MAC for `ip`, as `eth0`.
pub fn endpoint(id: &str, ip: Ipv4Addr, container_netns: &Path) -> Attachment {
    Attachment {
        endpoint_id: id.into(),
        ip,
        mac: Mac::from_ipv4(ip),
        container_netns: container_netns.to_owned(),
        ifname: "eth0".into(),
    }
}

/// The sandbox namespace of network VNI `vni` on `node`.
pub fn sandbox(lab: &Lab, node: &str, vni: u64) -> String {
    format!("{}-{node}-{vni}", lab.prefix())
}

/// The VNI of overlay network `network`, as n1's `netctl` says.
pub fn vni_of(lab: &Lab, network: &str) -> u64 {
    lab.netctl_json("n1", &["overlay", "inspect", network])
        .expect("inspect")["vni"]
        .as_u64()
        .expect("vni")
}
