//! etcd members inside lab nodes: the store several managers share. Each
//! member listens on its node's own address (clients on 2379, peers on
//! 2380), keeps its data inside the lab's state directory, and is started
//! and stopped by pid like every other lab process.

use std::{net::Ipv4Addr, path::Path};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// One member: its node's name and address.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub addr: Ipv4Addr,
}

/// Where clients reach `addr`'s member.
pub fn client_url(addr: Ipv4Addr) -> String {
    format!("http://{addr}:{CLIENT_PORT}")
}

fn peer_url(addr: Ipv4Addr) -> String {
    format!("http://{addr}:{PEER_PORT}")
}

/// The command line of `member` in a new cluster of `members`, `token`
/// keeping it apart from any other lab's.
pub fn args(member: &Member, members: &[Member], data_dir: &Path, token: &str) -> Vec<String> {
    let initial: Vec<String> = members
        .iter()
        .map(|m| format!("{}={}", m.name, peer_url(m.addr)))
        .collect();
    vec![
        format!("--name={}", member.name),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={}", client_url(member.addr)),
        format!("--advertise-client-urls={}", client_url(member.addr)),
        format!("--listen-peer-urls={}", peer_url(member.addr)),
        format!("--initial-advertise-peer-urls={}", peer_url(member.addr)),
        format!("--initial-cluster={}", initial.join(",")),
        "--initial-cluster-state=new".to_owned(),
        format!("--initial-cluster-token={token}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_know_each_other_by_their_node_addresses() {
        let members = [
            Member {
                name: "n1".into(),
                addr: Ipv4Addr::new(198, 18, 0, 11),
            },
            Member {
                name: "n2".into(),
                addr: Ipv4Addr::new(198, 18, 0, 12),
            },
        ];
        let args = args(
            &members[1],
            &members,
            Path::new("/run/netlab/x/etcd-n2"),
            "x",
        );
        assert!(args.contains(&"--listen-client-urls=http://198.18.0.12:2379".to_owned()));
        assert!(args.contains(
            &"--initial-cluster=n1=http://198.18.0.11:2380,n2=http://198.18.0.12:2380".to_owned()
        ));
        assert!(args.contains(&"--data-dir=/run/netlab/x/etcd-n2".to_owned()));
    }
}
