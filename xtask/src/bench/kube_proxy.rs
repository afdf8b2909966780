//! The load balancer bench's anchors: services written as kube-proxy
//! writes them for ClusterIPs, in its iptables mode (`iptables-restore`
//! input: KUBE-SERVICES -> KUBE-SVC-* with `-m statistic --mode random
//! --probability` -> KUBE-SEP-* DNAT) and its nftables mode (`nft -f`
//! input: a `service-ips` verdict map -> per-service chains with `numgen
//! random mod N vmap` -> endpoint chains with `dnat`). Only the ClusterIP
//! path is written (no NodePorts, firewall or reject rules); the masquerade
//! marking rules are kept, as they sit on the path of every new connection.

use std::{fmt::Write as _, net::Ipv4Addr};

/// One service: a VIP, one TCP port, its backends.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub backends: Vec<Ipv4Addr>,
}

/// kube-proxy's cluster CIDR here: clients inside it are not masqueraded.
const CLUSTER_CIDR: &str = "198.18.64.0/24";

/// kube-proxy names chains from a hash of what they stand for (it uses
/// SHA-256 and base32); 16 upper-case hex digits do the same job.
fn chain_hash(text: &str) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016X}")
}

fn svc_chain(s: &Service) -> String {
    format!("KUBE-SVC-{}", chain_hash(&s.name))
}

fn sep_chain(s: &Service, backend: Ipv4Addr) -> String {
    format!("KUBE-SEP-{}", chain_hash(&format!("{}/{backend}", s.name)))
}

/// The rules of one service's KUBE-SVC and KUBE-SEP chains (declared in
/// `chains`), as kube-proxy writes them.
fn iptables_service(s: &Service, chains: &mut String, rules: &mut String) {
    let svc = svc_chain(s);
    let (vip, port, name) = (s.vip, s.port, &s.name);
    let _ = writeln!(chains, ":{svc} - [0:0]");
    let _ = writeln!(
        rules,
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m tcp -p tcp -d {vip}/32 \
         --dport {port} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
    );
    let n = s.backends.len();
    for (i, &backend) in s.backends.iter().enumerate() {
        let sep = sep_chain(s, backend);
        let _ = writeln!(chains, ":{sep} - [0:0]");
        // Each rule takes 1/(remaining endpoints) of what reaches it.
        let statistic = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            rules,
            "-A {svc} -m comment --comment \"{name} -> {backend}:{port}\"{statistic} -j {sep}"
        );
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {name} -s {backend}/32 -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {name} -m tcp -p tcp -j DNAT \
             --to-destination {backend}:{port}"
        );
    }
}

/// The KUBE-SERVICES rule that sends a service's VIP to its chain.
fn iptables_entry(s: &Service, rules: &mut String) {
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {}/32 \
         --dport {} -j {}",
        s.name,
        s.vip,
        s.port,
        svc_chain(s)
    );
}

/// The whole nat table for `services` (in order: the measured service
/// last), for `iptables-restore` into an empty table.
pub fn iptables_full(services: &[Service]) -> String {
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n\
         :KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully\n",
    );
    for s in services {
        iptables_entry(s, &mut rules);
        iptables_service(s, &mut chains, &mut rules);
    }
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must \
         be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    format!("{chains}{rules}COMMIT\n")
}

/// What kube-proxy's partial sync sends (`iptables-restore --noflush`)
/// when `changed`'s endpoints went from `before` to its backends now:
/// KUBE-SERVICES whole (it always rewrites it), the changed service's
/// chains, and the deletion of endpoint chains that went.
pub fn iptables_change(services: &[Service], changed: &Service, before: &[Ipv4Addr]) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::new();
    for s in services {
        iptables_entry(s, &mut rules);
    }
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must \
         be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    iptables_service(changed, &mut chains, &mut rules);
    // A chain must be empty to go: declared (so flushed), then deleted.
    for &gone in before.iter().filter(|b| !changed.backends.contains(b)) {
        let sep = sep_chain(changed, gone);
        let _ = writeln!(chains, ":{sep} - [0:0]");
        let _ = writeln!(rules, "-X {sep}");
    }
    format!("{chains}{rules}COMMIT\n")
}

fn nft_service_chain(s: &Service) -> String {
    format!(
        "service-{}-{}-tcp-p{}",
        &chain_hash(&s.name)[..8],
        s.name,
        s.port
    )
}

fn nft_endpoint_chain(s: &Service, backend: Ipv4Addr) -> String {
    format!(
        "endpoint-{}-{}-tcp-p{}__{backend}_{}",
        &chain_hash(&format!("{}/{backend}", s.name))[..8],
        s.name,
        s.port,
        s.port
    )
}

/// An endpoint chain: mark hairpin traffic for masquerade, then DNAT.
fn nft_endpoint(s: &Service, backend: Ipv4Addr, out: &mut String) {
    let ep = nft_endpoint_chain(s, backend);
    let _ = writeln!(out, "add chain ip kube-proxy {ep}");
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {ep} ip saddr {backend} jump mark-for-masquerade"
    );
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {ep} meta l4proto tcp dnat to {backend}:{}",
        s.port
    );
}

/// The service chain's rules: masquerade marking for clients outside the
/// cluster, then a random pick among the endpoint chains.
fn nft_service_rules(s: &Service, out: &mut String) {
    let svc = nft_service_chain(s);
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {svc} ip daddr {} tcp dport {} ip saddr != {CLUSTER_CIDR} \
         jump mark-for-masquerade",
        s.vip, s.port
    );
    let verdicts: Vec<String> = s
        .backends
        .iter()
        .enumerate()
        .map(|(i, &b)| format!("{i} : goto {}", nft_endpoint_chain(s, b)))
        .collect();
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {svc} numgen random mod {} vmap {{ {} }}",
        s.backends.len(),
        verdicts.join(", ")
    );
}

/// One service's chains, as `nft -f` input (`add` commands, so that they
/// apply to an existing table).
fn nft_service(s: &Service, out: &mut String) {
    let _ = writeln!(out, "add chain ip kube-proxy {}", nft_service_chain(s));
    for &backend in &s.backends {
        nft_endpoint(s, backend, out);
    }
    nft_service_rules(s, out);
}

/// The whole `ip kube-proxy` table for `services`, for `nft -f`.
pub fn nft_full(services: &[Service]) -> String {
    let mut out = String::from(
        "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n\
         add chain ip kube-proxy mark-for-masquerade\n\
         add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n\
         add chain ip kube-proxy masquerading\n\
         add rule ip kube-proxy masquerading mark and 0x4000 == 0 return\n\
         add rule ip kube-proxy masquerading mark set mark xor 0x4000\n\
         add rule ip kube-proxy masquerading masquerade fully-random\n\
         add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; \
         comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }\n\
         add chain ip kube-proxy services\n\
         add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; }\n\
         add rule ip kube-proxy nat-prerouting jump services\n\
         add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n\
         add rule ip kube-proxy nat-output jump services\n\
         add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority srcnat ; }\n\
         add rule ip kube-proxy nat-postrouting jump masquerading\n",
    );
    for s in services {
        nft_service(s, &mut out);
        let _ = writeln!(
            out,
            "add element ip kube-proxy service-ips {{ {} . tcp . {} : goto {} }}",
            s.vip,
            s.port,
            nft_service_chain(s)
        );
    }
    out
}

/// What kube-proxy's nftables mode sends when `changed`'s endpoints went
/// from `before` to its backends now: the service chain flushed and
/// rewritten, new endpoint chains added, gone ones deleted, in one
/// transaction.
pub fn nft_change(changed: &Service, before: &[Ipv4Addr]) -> String {
    let mut out = format!("flush chain ip kube-proxy {}\n", nft_service_chain(changed));
    for &new in changed.backends.iter().filter(|b| !before.contains(b)) {
        nft_endpoint(changed, new, &mut out);
    }
    nft_service_rules(changed, &mut out);
    for &gone in before.iter().filter(|b| !changed.backends.contains(b)) {
        let _ = writeln!(
            out,
            "delete chain ip kube-proxy {}",
            nft_endpoint_chain(changed, gone)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(backends: &[[u8; 4]]) -> Service {
        Service {
            name: "svc0".into(),
            vip: Ipv4Addr::new(198, 18, 64, 250),
            port: 80,
            backends: backends.iter().map(|&b| Ipv4Addr::from(b)).collect(),
        }
    }

    #[test]
    fn iptables_splits_with_falling_probabilities() {
        let text = iptables_full(&[service(&[[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]])]);
        assert!(text.contains("--probability 0.3333333333"));
        assert!(text.contains("--probability 0.5000000000"));
        assert_eq!(text.matches("-j DNAT").count(), 3);
        assert!(text.ends_with("COMMIT\n"));
        // Chain names fit iptables' 28 characters.
        assert!(text.lines().filter_map(|l| l.strip_prefix(':')).all(|l| l
            .split(' ')
            .next()
            .unwrap()
            .len()
            <= 28));
    }

    #[test]
    fn nft_change_rewrites_the_service_chain_and_adds_only_new_endpoints() {
        let before = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)];
        let after = service(&[[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]]);
        let text = nft_change(&after, &before);
        assert!(text.starts_with("flush chain"));
        assert_eq!(text.matches("dnat to").count(), 1, "{text}");
        assert!(text.contains("numgen random mod 3 vmap"), "{text}");
        let back = nft_change(&service(&[[10, 0, 0, 1], [10, 0, 0, 2]]), &after.backends);
        assert!(back.contains("numgen random mod 2 vmap"), "{back}");
        assert_eq!(back.matches("delete chain").count(), 1, "{back}");
    }
}
