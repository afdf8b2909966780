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
    let output = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns,
            "etcdctl",
            &endpoints,
            "--command-timeout=2s",
        ])
        .args(args)
        .output()
        .expect("etcdctl runs");
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

/// Where the contract test reaches the lab's etcd, and the CA, certificate
/// and key it does so with (set by the test that starts it inside a node).
const URLS_VAR: &str = "NETLAB_ETCD_URLS";
const TLS_VAR: &str = "NETLAB_ETCD_TLS";

/// The control plane's store on the lab's etcd, over TLS with client
/// certificates, behaves as the managers rely on. The client must open its
/// connections inside a node's namespace, and no test thread may switch
/// namespace: the checks run in a second process of this test binary,
/// started inside n1.
#[test]
fn the_etcd_store_keeps_the_store_contract_over_tls() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(3)).expect("lab");
    let (urls, certs) = lab.start_etcd_with_tls(&["n1", "n2", "n3"]).expect("etcd");
    let netns = lab.node("n1").expect("n1").netns.clone();

    // A client without a certificate of the lab's CA is refused.
    let ca = certs.ca.display().to_string();
    let health = format!("{}/health", urls[0]);
    let anonymous = lab
        .exec(&netns, &["curl", "-s", "-m", "2", "--cacert", &ca, &health])
        .expect("curl runs");
    assert!(
        !String::from_utf8_lossy(&anonymous.stdout).contains("true"),
        "etcd answered a client without a certificate"
    );

    let exe = std::env::current_exe().expect("test binary");
    let urls_setting = format!("{URLS_VAR}={}", urls.join(","));
    let tls_setting = format!(
        "{TLS_VAR}={},{},{}",
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let exe = exe.to_string_lossy();
    let output = lab
        .exec(
            &netns,
            &[
                "env",
                &urls_setting,
                &tls_setting,
                &exe,
                "--exact",
                "etcd_store_contract_inside_a_node",
                "--include-ignored",
                "--test-threads=1",
            ],
        )
        .expect("the contract runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    lab.teardown().expect("teardown");
}

#[test]
#[ignore = "runs inside a lab node, started by the_etcd_store_keeps_the_store_contract_over_tls"]
fn etcd_store_contract_inside_a_node() {
    use std::time::Duration;

    use netagent::control::{
        etcd_store::{EtcdStore, EtcdTls},
        store::{Compare, Op, Store},
    };

    let setting = |name: &str| -> Vec<String> {
        std::env::var(name)
            .expect("started by the outer test")
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    let urls = setting(URLS_VAR);
    let read = |path: &String| std::fs::read_to_string(path).expect("certificate file");
    let tls = match setting(TLS_VAR).as_slice() {
        [ca, cert, key] => Some(EtcdTls {
            ca_pem: read(ca),
            cert_pem: read(cert),
            key_pem: read(key),
        }),
        other => panic!("{TLS_VAR} holds {other:?}"),
    };
    // Two managers, each through its own member.
    let one = EtcdStore::connect(&urls[..1], "netagent-test/", tls.as_ref()).expect("connect");
    let two = EtcdStore::connect(&urls[1..2], "netagent-test/", tls.as_ref()).expect("connect");
    let put = |key: &str, value: &str| Op::Put {
        key: key.into(),
        value: value.into(),
    };
    let absent = |key: &str| Compare {
        key: key.into(),
        mod_revision: 0,
    };

    assert_eq!(one.get("guard/networks").expect("get"), None);
    let mut events = two.watch();

    // A compare on an absent key holds once, as in the embedded store.
    let first = one
        .txn(&[absent("networks/a")], &[put("networks/a", "4096")])
        .expect("txn")
        .expect("committed");
    let stale = two
        .txn(&[absent("networks/a")], &[put("networks/a", "4097")])
        .expect("txn");
    assert_eq!(stale, None, "a stale compare must not commit");
    let read = two.get("networks/a").expect("get").expect("present");
    assert_eq!(
        (read.value.as_slice(), read.mod_revision),
        (&b"4096"[..], first)
    );

    // A compare on the revision read commits, through the other manager.
    let held = Compare {
        key: "networks/a".into(),
        mod_revision: first,
    };
    let second = two
        .txn(
            &[held],
            &[put("networks/a", "4098"), put("networks/b", "x")],
        )
        .expect("txn")
        .expect("committed");
    assert!(second > first);
    assert_eq!(one.revision().expect("revision"), second);

    // A prefix list: one revision, in key order, keys as the store names them.
    one.put("nodesx", b"not in nodes/").expect("put");
    one.put("nodes/b", b"2").expect("put");
    one.put("nodes/a", b"1").expect("put");
    let listed: Vec<String> = one
        .list("nodes/")
        .expect("list")
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(listed, ["nodes/a", "nodes/b"]);

    assert!(one.delete("nodes/a").expect("delete"));
    assert!(!one.delete("nodes/a").expect("delete"));
    assert_eq!(two.get("nodes/a").expect("get"), None);

    // Every change reached the other manager's watch, in order, once.
    let mut seen = Vec::new();
    let all_seen = netlab::wait_until(Duration::from_secs(10), || {
        while let Ok(event) = events.try_recv() {
            seen.push((event.key, event.deleted));
        }
        (seen.len() >= 7).then_some(())
    });
    assert!(all_seen.is_ok(), "the watch saw only {seen:?}");
    let expected = [
        ("networks/a", false),
        ("networks/a", false),
        ("networks/b", false),
        ("nodesx", false),
        ("nodes/b", false),
        ("nodes/a", false),
        ("nodes/a", true),
    ];
    let seen: Vec<(&str, bool)> = seen.iter().map(|(k, d)| (k.as_str(), *d)).collect();
    assert_eq!(seen, expected);
}
