//! etcd members inside lab nodes: the store several managers share. Each
//! member listens on its node's own address (clients on 2379, peers on
//! 2380), keeps its data inside the lab's state directory, and is started
//! and stopped by pid like every other lab process.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use crate::cmd::{self, CmdError};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// One member: its node's name and address.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub addr: Ipv4Addr,
}

/// Where clients reach `addr`'s member (`https` when it takes TLS).
pub fn client_url(addr: Ipv4Addr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}:{CLIENT_PORT}")
}

/// The lab's certificates for etcd with TLS: one CA, a certificate per
/// member (its node's address as subject), and one client certificate
/// that every client of the lab uses.
#[derive(Clone, Debug)]
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    fn member_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        )
    }
}

/// Makes the CA, the members' and the client's certificates in `dir`
/// (`openssl`; P-256 keys, valid one day).
pub fn make_certs(dir: &Path, members: &[Member]) -> Result<Certs, CmdError> {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let ca = path("ca.crt");
    let ca_key = path("ca.key");
    cmd::run(
        "openssl",
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=netlab etcd CA",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
        ],
    )?;
    let issue = |name: &str, extensions: &str| -> Result<(), CmdError> {
        let (key, csr, cert, ext) = (
            path(&format!("{name}.key")),
            path(&format!("{name}.csr")),
            path(&format!("{name}.crt")),
            path(&format!("{name}.ext")),
        );
        std::fs::write(&ext, extensions).map_err(|source| CmdError::Spawn {
            command: format!("write {ext}"),
            source,
        })?;
        cmd::run(
            "openssl",
            [
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        )?;
        cmd::run(
            "openssl",
            [
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        )
    };
    for member in members {
        issue(
            &member.name,
            &format!(
                "subjectAltName=IP:{}\nextendedKeyUsage=serverAuth,clientAuth\n",
                member.addr
            ),
        )?;
    }
    issue("client", "extendedKeyUsage=clientAuth\n")?;
    Ok(Certs {
        dir: dir.to_owned(),
        ca: dir.join("ca.crt"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    })
}

fn peer_url(addr: Ipv4Addr) -> String {
    format!("http://{addr}:{PEER_PORT}")
}

/// The command line of `member` in a new cluster of `members`, `token`
/// keeping it apart from any other lab's; with `certs`, clients must
/// present a certificate of the lab's CA.
pub fn args(
    member: &Member,
    members: &[Member],
    data_dir: &Path,
    token: &str,
    certs: Option<&Certs>,
) -> Vec<String> {
    let initial: Vec<String> = members
        .iter()
        .map(|m| format!("{}={}", m.name, peer_url(m.addr)))
        .collect();
    let client = client_url(member.addr, certs.is_some());
    let mut args = vec![
        format!("--name={}", member.name),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={}", peer_url(member.addr)),
        format!("--initial-advertise-peer-urls={}", peer_url(member.addr)),
        format!("--initial-cluster={}", initial.join(",")),
        "--initial-cluster-state=new".to_owned(),
        format!("--initial-cluster-token={token}"),
    ];
    if let Some(certs) = certs {
        let (cert, key) = certs.member_cert(&member.name);
        args.extend([
            format!("--cert-file={}", cert.display()),
            format!("--key-file={}", key.display()),
            format!("--trusted-ca-file={}", certs.ca.display()),
            "--client-cert-auth".to_owned(),
        ]);
    }
    args
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
            None,
        );
        assert!(args.contains(&"--listen-client-urls=http://198.18.0.12:2379".to_owned()));
        assert!(args.contains(
            &"--initial-cluster=n1=http://198.18.0.11:2380,n2=http://198.18.0.12:2380".to_owned()
        ));
        assert!(args.contains(&"--data-dir=/run/netlab/x/etcd-n2".to_owned()));
    }
}
