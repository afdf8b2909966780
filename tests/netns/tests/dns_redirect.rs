//! The embedded resolver's sockets in a container namespace and the steering
//! of 127.0.0.11:53 to 127.0.0.11:P (eBPF sk_lookup, replies given port 53
//! back on lo), driven through
//! `netagent::dataplane::dns_redirect` against a lab container. A tiny
//! DNS-ish echo stands in for the resolver; queries never leave the
//! container namespace, and nothing is made in the root namespace.

use std::{net::Ipv4Addr, os::unix::fs::MetadataExt, path::Path, process::Command, time::Duration};

use netagent::dataplane::dns_redirect::{
    open_resolver_sockets, ProgramIds, ResolverSockets, LEGACY_TABLE, REPLY_PROGRAM, STEER_PROGRAM,
};
use netlab::{require_root, wait_until, Lab, LabSpec};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinHandle,
};

mod common;

use common::{run, stdout};

const DEADLINE: Duration = Duration::from_secs(5);

/// A DNS answer to `query`: its question, one A record `addr`.
fn answer(query: &[u8], addr: Ipv4Addr) -> Option<Vec<u8>> {
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(query[end]);
    }
    let question = query.get(12..end + 5)?;
    let mut reply = query.get(..2)?.to_vec();
    // QR RD RA, NOERROR; one question, one answer.
    reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    reply.extend_from_slice(question);
    // Name: pointer to the question; A IN, TTL 60, 4 bytes.
    reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    reply.extend_from_slice(&addr.octets());
    Some(reply)
}

/// Serves `addr` for every query on the resolver's sockets.
fn serve(
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    addr: Ipv4Addr,
) -> [JoinHandle<()>; 2] {
    let udp = tokio::net::UdpSocket::from_std(udp).expect("tokio udp");
    let tcp = tokio::net::TcpListener::from_std(tcp).expect("tokio tcp");
    let udp = tokio::spawn(async move {
        let mut buffer = [0u8; 512];
        while let Ok((len, from)) = udp.recv_from(&mut buffer).await {
            if let Some(reply) = answer(&buffer[..len], addr) {
                let _ = udp.send_to(&reply, from).await;
            }
        }
    });
    let tcp = tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            tokio::spawn(async move {
                while let Ok(len) = stream.read_u16().await {
                    let mut query = vec![0; usize::from(len)];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    let Some(reply) = answer(&query, addr) else {
                        return;
                    };
                    let _ = stream.write_u16(reply.len() as u16).await;
                    let _ = stream.write_all(&reply).await;
                }
            });
        }
    });
    [udp, tcp]
}

/// `dig +short` from inside `netns` to 127.0.0.11:53 (blocking, so off the
/// executor's back).
fn dig(lab: &Lab, netns: &str, tcp: bool) -> String {
    let transport = if tcp { "+tcp" } else { "+notcp" };
    let args = [
        "dig",
        "+time=1",
        "+tries=1",
        "+short",
        transport,
        "@127.0.0.11",
        "example.lab",
    ];
    tokio::task::block_in_place(|| run(lab, netns, &args).1.trim().to_owned())
}

/// Waits until dig over UDP and TCP both answer `want`.
fn assert_answers(lab: &Lab, netns: &str, want: Ipv4Addr) {
    for tcp in [false, true] {
        let mut last = String::new();
        let answered = wait_until(DEADLINE, || {
            last = dig(lab, netns, tcp);
            (last == want.to_string()).then_some(())
        });
        assert!(
            answered.is_ok(),
            "dig (tcp: {tcp}) in {netns}: want {want}, last answer {last:?}"
        );
    }
}

/// The tables of `netns`, one `table FAMILY NAME` a line.
fn tables(lab: &Lab, netns: &str) -> Vec<String> {
    tokio::task::block_in_place(|| stdout(lab, netns, &["nft", "list", "tables"]))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The names of the programs of the eBPF links that run the instance
/// `ids`, as `bpftool` shows them to an operator, with a check that the
/// sk_lookup one is attached to `path`'s namespace.
fn links(ids: ProgramIds, path: &Path) -> Vec<String> {
    let inode = std::fs::metadata(path).expect("netns inode").ino();
    let bpftool = |what: &str| -> serde_json::Value {
        let out = Command::new("bpftool")
            .args(["-j", what, "show"])
            .output()
            .expect("bpftool");
        assert!(out.status.success(), "bpftool {what} show failed: {out:?}");
        // A list, else an empty answer would pass for "no links".
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
        assert!(list.is_array(), "bpftool {what} show: not a list: {list}");
        list
    };
    let programs = bpftool("prog");
    let name_of = |id: &serde_json::Value| {
        programs
            .as_array()
            .into_iter()
            .flatten()
            .find(|prog| &prog["id"] == id)
            .and_then(|prog| prog["name"].as_str())
            .unwrap_or("?")
            .to_owned()
    };
    let mut names = Vec::new();
    for link in bpftool("link").as_array().into_iter().flatten() {
        let prog_id = &link["prog_id"];
        if prog_id == ids.steer {
            assert_eq!(link["netns_ino"], inode, "sk_lookup link elsewhere: {link}");
        } else if prog_id != ids.reply {
            continue;
        }
        names.push(name_of(prog_id));
    }
    names.sort();
    names
}

/// Whether a process in `netns` can bind port 53 on `addr` (UDP and TCP).
fn can_bind_53(lab: &Lab, netns: &str, addr: &str) -> (bool, String) {
    let script = format!(
        "import socket\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('{addr}', 53))\n\
         t = socket.socket(socket.AF_INET, socket.SOCK_STREAM); t.bind(('{addr}', 53)); t.listen()\n"
    );
    tokio::task::block_in_place(|| run(lab, netns, &["python3", "-c", &script]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_to_127_0_0_11_reach_the_resolver_and_port_53_stays_free() {
    require_root!();
    let mut lab = Lab::up(LabSpec::nodes(1)).expect("lab");
    let c1 = lab.add_container("c1").expect("c1");
    let path = c1.netns_path();
    // The agent brings lo up itself.
    stdout(&lab, &c1.netns, &["ip", "link", "set", "lo", "down"]);
    // An earlier agent's DNAT to a port nobody serves: opening removes it.
    stdout(&lab, &c1.netns, &["nft", &format!(
        "add table ip {LEGACY_TABLE}; add chain ip {LEGACY_TABLE} output {{ type nat hook output priority -100; }}; \
         add rule ip {LEGACY_TABLE} output ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:9"
    )]);

    let ResolverSockets {
        udp,
        tcp,
        steering: first_steering,
    } = open_resolver_sockets(&path).await.expect("open");
    let first_port = udp.local_addr().expect("udp addr").port();
    assert_eq!(tcp.local_addr().expect("tcp addr").port(), first_port);
    assert_ne!(first_port, 53);
    assert_eq!(
        udp.local_addr().expect("udp addr").ip(),
        Ipv4Addr::new(127, 0, 0, 11)
    );
    let first = serve(udp, tcp, Ipv4Addr::new(192, 0, 2, 1));
    // dig takes the UDP answer only from 127.0.0.11:53.
    assert_answers(&lab, &c1.netns, Ipv4Addr::new(192, 0, 2, 1));
    // No NAT: no table at all (the earlier agent's is gone).
    assert!(tables(&lab, &c1.netns).is_empty());
    let first_ids = first_steering.program_ids();
    assert_eq!(links(first_ids, &path), [REPLY_PROGRAM, STEER_PROGRAM]);

    // The container's own processes can still bind port 53.
    for addr in ["0.0.0.0", "127.0.0.11"] {
        let (ok, out) = can_bind_53(&lab, &c1.netns, addr);
        assert!(ok, "binding {addr}:53 in the container failed: {out}");
    }

    // Opening again (a restarted resolver): the newest sockets answer, with
    // the old steering still attached and once it is gone.
    let ResolverSockets {
        udp,
        tcp,
        steering: second_steering,
    } = open_resolver_sockets(&path).await.expect("open again");
    let second_port = udp.local_addr().expect("udp addr").port();
    assert_ne!(second_port, first_port);
    let second = serve(udp, tcp, Ipv4Addr::new(192, 0, 2, 2));
    assert_answers(&lab, &c1.netns, Ipv4Addr::new(192, 0, 2, 2));
    drop(first_steering);
    assert!(links(first_ids, &path).is_empty());
    assert_answers(&lab, &c1.netns, Ipv4Addr::new(192, 0, 2, 2));
    let second_ids = second_steering.program_ids();
    assert_eq!(links(second_ids, &path), [REPLY_PROGRAM, STEER_PROGRAM]);

    // Dropping the steering detaches it: nothing left, queries to :53 go
    // unanswered.
    drop(second_steering);
    assert!(links(second_ids, &path).is_empty());
    let after = dig(&lab, &c1.netns, false);
    assert!(
        !after.contains("192.0.2."),
        "answered after removal: {after}"
    );

    // A missing namespace: an error, nothing made.
    let missing = Path::new("/run/netns").join(format!("{}-missing", lab.prefix()));
    let error = open_resolver_sockets(&missing)
        .await
        .err()
        .expect("missing netns");
    assert!(
        error
            .to_string()
            .contains("cannot open container namespace"),
        "{error}"
    );

    for task in first.iter().chain(&second) {
        task.abort();
    }
    lab.teardown().expect("teardown");
}
