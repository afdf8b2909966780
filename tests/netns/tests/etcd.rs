//! The lab's etcd, the store several managers share: three members in
//! three nodes form one cluster that takes writes through any member, goes
//! on with one member down, and refuses writes without a majority, which
//! is what the managers rely on.

use netlab::{require_root, Lab, LabSpec};

/// `etcdctl ARGS` from node `node` against `url`; its output, or its
/// error text.
fn etcdctl(lab: &Lab, node: &str, url: &str, args: &[&str]) -> Result<String, String> {
    let netns = lab.node(node).expect("node").netns.clone();
    let endpoints = format!("--endpoints={url}");
    let mut command = vec!["etcdctl", &endpoints, "--command-timeout=2s"];
    command.extend_from_slice(args);
    let output = lab.exec(&netns, &command).expect("etcdctl runs");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

#[test]
fn three_members_take_writes_with_one_down_and_refuse_them_with_two_down() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(3)).expect("lab");
    let urls = lab.start_etcd(&["n1", "n2", "n3"]).expect("etcd");

    // Written through one member, read through another.
    etcdctl(&lab, "n1", &urls[0], &["put", "networks/front", "4096"]).expect("put");
    let read = etcdctl(
        &lab,
        "n3",
        &urls[2],
        &["get", "networks/front", "--print-value-only"],
    );
    assert_eq!(read.as_deref(), Ok("4096"));

    // One member down: a majority is left, writes go on.
    lab.stop_etcd("n1");
    etcdctl(&lab, "n2", &urls[1], &["put", "networks/back", "4097"]).expect("put with 2 of 3");
    let read = etcdctl(
        &lab,
        "n3",
        &urls[2],
        &["get", "networks/back", "--print-value-only"],
    );
    assert_eq!(read.as_deref(), Ok("4097"));

    // Two down: no majority, the write is refused (within the command's
    // timeout), and nothing is written.
    lab.stop_etcd("n2");
    let refused = etcdctl(&lab, "n3", &urls[2], &["put", "networks/lost", "1"]);
    assert!(
        refused.is_err(),
        "a write without quorum went through: {refused:?}"
    );
    // A serializable read (the member's own copy, no quorum needed) shows
    // it was not committed.
    let local = etcdctl(
        &lab,
        "n3",
        &urls[2],
        &[
            "get",
            "networks/lost",
            "--consistency=s",
            "--print-value-only",
        ],
    );
    assert_eq!(local.as_deref(), Ok(""));
    lab.teardown().expect("teardown");
}
