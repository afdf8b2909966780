//! Building, using and tearing down one lab.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::Duration,
};

use nix::sys::signal::Signal;

use crate::{
    cmd::{self, CmdError},
    etcd,
    names::{
        self, BPFFS_ROOT, ETC_NETNS, EXTERNAL_ADDR, LAB_STATE_ROOT, UNDERLAY_PREFIX_LEN,
        UPSTREAM_DNS_ADDR,
    },
    process::{self, Lifetime, Mounts, ProcessId},
    sweep,
};

/// How long an agent gets to answer its API after start.
const AGENT_START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("building the lab needs root")]
    NotRoot,
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("lab file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} not found: build it first (`cargo build`, or run `cargo xtask test`)")]
    MissingBinary(PathBuf),
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} did not come up within {secs}s; its log:\n{log}")]
    StartTimeout {
        what: String,
        secs: u64,
        log: String,
    },
    #[error("no node {0} in this lab")]
    NoNode(String),
    #[error("node {0} runs no agent")]
    NoAgent(String),
    #[error("netctl {args} on {node} failed: {stderr}")]
    Netctl {
        node: String,
        args: String,
        stderr: String,
    },
    #[error("netctl {args} on {node} printed invalid JSON: {error}")]
    NetctlJson {
        node: String,
        args: String,
        error: serde_json::Error,
    },
    #[error("teardown left errors: {}", .0.join("; "))]
    Teardown(Vec<String>),
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    pub nodes: usize,
    /// Keep everything after this process exits (`cargo xtask lab up`);
    /// `cargo xtask lab down` removes it.
    pub persistent: bool,
    /// Start agents without `--netns-prefix`, as an operator would: their
    /// sandboxes are `netagent-<node>-<vni>`, found by the sweep through
    /// their mark (the agent's data directory, inside the lab).
    pub default_netns_prefix: bool,
}

impl LabSpec {
    pub fn nodes(nodes: usize) -> Self {
        Self {
            nodes,
            persistent: false,
            default_netns_prefix: false,
        }
    }

    /// Agents with the default `--netns-prefix`.
    pub fn with_default_netns_prefix(mut self) -> Self {
        self.default_netns_prefix = true;
        self
    }
}

/// One node: a namespace on the underlay, maybe running an agent.
#[derive(Debug)]
pub struct Node {
    /// The name the agent gets (`n1`, `n2`, ...).
    pub name: String,
    /// The namespace (`<prefix>-n1`).
    pub netns: String,
    pub addr: Ipv4Addr,
    agent: Option<Agent>,
}

impl Node {
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }

    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }
}

/// A running netagent.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    pub id: ProcessId,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub bpffs: PathBuf,
}

impl Agent {
    /// `--host` for netctl.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

/// A container: a bare namespace, for the agent to attach to networks.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    pub netns: String,
}

impl Container {
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }
}

/// A lab; dropping it tears it down unless it is persistent.
pub struct Lab {
    prefix: String,
    state_dir: PathBuf,
    bin_dir: PathBuf,
    persistent: bool,
    default_netns_prefix: bool,
    nodes: Vec<Node>,
    dnsmasq: Option<(Child, ProcessId)>,
    /// etcd members, by node name (`start_etcd`).
    etcd: Vec<(String, Child, ProcessId)>,
    /// Servers and clients started in lab namespaces (`spawn_in`).
    processes: Vec<(Child, ProcessId)>,
    namespaces: Vec<String>,
    torn_down: bool,
}

pub fn netns_path(netns: &str) -> PathBuf {
    Path::new("/run/netns").join(netns)
}

/// The directory holding `netagent` and `netctl`: `NETAGENT_BIN_DIR`, or the
/// cargo profile directory this test or xtask binary was built into.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NETAGENT_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let parent = exe.parent().unwrap_or(Path::new("."));
    // Test binaries live in target/<profile>/deps.
    if parent.file_name().is_some_and(|name| name == "deps") {
        parent.parent().unwrap_or(parent).to_owned()
    } else {
        parent.to_owned()
    }
}

fn write_file(path: &Path, contents: &str) -> Result<(), LabError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| LabError::File {
            path: dir.to_owned(),
            source,
        })?;
    }
    std::fs::write(path, contents).map_err(|source| LabError::File {
        path: path.to_owned(),
        source,
    })
}

fn append_line(path: &Path, line: &str) -> Result<(), LabError> {
    use std::io::Write;
    std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| writeln!(file, "{line}"))
        .map_err(|source| LabError::File {
            path: path.to_owned(),
            source,
        })
}

impl Lab {
    /// Builds a lab: the underlay switch, the nodes, the external client host
    /// and the upstream DNS server. A failure half way tears down what was
    /// made before returning the error.
    pub fn up(spec: LabSpec) -> Result<Lab, LabError> {
        if !crate::process::is_root() {
            return Err(LabError::NotRoot);
        }
        // Whatever a killed run left behind goes first.
        sweep::sweep(false);
        let prefix = names::fresh_prefix();
        let state_dir = Path::new(LAB_STATE_ROOT).join(&prefix);
        let owner = if spec.persistent {
            "persistent".to_owned()
        } else {
            ProcessId::of(std::process::id() as i32)
                .map(ProcessId::to_record)
                .unwrap_or_default()
        };
        write_file(&state_dir.join(sweep::OWNER_FILE), &owner)?;
        let mut lab = Lab {
            prefix,
            state_dir,
            bin_dir: bin_dir(),
            persistent: spec.persistent,
            default_netns_prefix: spec.default_netns_prefix,
            nodes: Vec::new(),
            dnsmasq: None,
            etcd: Vec::new(),
            processes: Vec::new(),
            namespaces: Vec::new(),
            torn_down: false,
        };
        match lab.build(&spec) {
            Ok(()) => Ok(lab),
            Err(error) => {
                let _ = lab.teardown();
                Err(error)
            }
        }
    }

    fn build(&mut self, spec: &LabSpec) -> Result<(), LabError> {
        let switch = self.add_netns("sw")?;
        cmd::run(
            "ip",
            ["-n", &switch, "link", "add", "sw0", "type", "bridge"],
        )?;
        cmd::run("ip", ["-n", &switch, "link", "set", "sw0", "up"])?;
        // The switch stands for the physical network: no host netfilter on
        // the frames it carries (with br_netfilter loaded, each would pay IP
        // hooks and a route lookup). `-e`: fine where br_netfilter is absent.
        cmd::run(
            "ip",
            [
                "netns",
                "exec",
                &switch,
                "sysctl",
                "-qwe",
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ],
        )?;
        for index in 1..=spec.nodes {
            let name = format!("n{index}");
            let addr = names::node_addr(index);
            let netns = self.add_host(&name, addr)?;
            self.nodes.push(Node {
                name,
                netns,
                addr,
                agent: None,
            });
        }
        self.add_host("ext", EXTERNAL_ADDR)?;
        self.add_host("dns", UPSTREAM_DNS_ADDR)?;
        self.start_upstream_dns()
    }

    /// Creates namespace `<prefix>-<suffix>`: IPv6 off (so links stay quiet
    /// unless a test sends something), loopback up.
    fn add_netns(&mut self, suffix: &str) -> Result<String, LabError> {
        let netns = format!("{}-{suffix}", self.prefix);
        cmd::run("ip", ["netns", "add", &netns])?;
        self.namespaces.push(netns.clone());
        cmd::run(
            "ip",
            [
                "netns",
                "exec",
                &netns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        cmd::run("ip", ["-n", &netns, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// A host on the underlay: a namespace whose `eth0` is cabled to the
    /// switch, with `addr`, resolving through the lab's upstream DNS.
    fn add_host(&mut self, suffix: &str, addr: Ipv4Addr) -> Result<String, LabError> {
        let netns = self.add_netns(suffix)?;
        let switch = format!("{}-sw", self.prefix);
        cmd::run(
            "ip",
            [
                "-n", &switch, "link", "add", suffix, "type", "veth", "peer", "name", "eth0",
                "netns", &netns,
            ],
        )?;
        cmd::run(
            "ip",
            ["-n", &switch, "link", "set", suffix, "master", "sw0", "up"],
        )?;
        cmd::run(
            "ip",
            [
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/{UNDERLAY_PREFIX_LEN}"),
                "dev",
                "eth0",
            ],
        )?;
        cmd::run("ip", ["-n", &netns, "link", "set", "eth0", "up"])?;
        write_file(
            &Path::new(ETC_NETNS).join(&netns).join("resolv.conf"),
            &format!("nameserver {UPSTREAM_DNS_ADDR}\n"),
        )?;
        Ok(netns)
    }

    /// dnsmasq in `<prefix>-dns`: the lab's stand-in for the internet's
    /// resolvers. It knows a few names and nothing else; it never forwards.
    /// Its answers carry a TTL of 60 s, as real ones do (dnsmasq's default
    /// for its own names is 0, which no resolver may cache).
    fn start_upstream_dns(&mut self) -> Result<(), LabError> {
        let hosts = self.state_dir.join("upstream.hosts");
        // many.lab has 40 addresses: its answer does not fit 512 bytes, so
        // plain UDP queries for it come back truncated (the TCP path).
        let many: String = (1..=40)
            .map(|host| format!("198.18.1.{host} many.lab\n"))
            .collect();
        write_file(
            &hosts,
            &format!(
                "{EXTERNAL_ADDR} external.lab example.org www.example.org\n{UPSTREAM_DNS_ADDR} upstream.lab\n{many}"
            ),
        )?;
        let conf = self.state_dir.join("dnsmasq.conf");
        write_file(
            &conf,
            &format!(
                "no-resolv\nno-hosts\nno-poll\nbind-interfaces\nlisten-address={UPSTREAM_DNS_ADDR}\n\
                 port=53\nlocal-ttl=60\nuser=root\npid-file=\nlog-facility=-\naddn-hosts={}\n",
                hosts.display()
            ),
        )?;
        let log = self.state_dir.join("dnsmasq.log");
        let started = self.spawn_recorded(
            &format!("{}-dns", self.prefix),
            "dnsmasq",
            &[
                "--keep-in-foreground".to_owned(),
                format!("--conf-file={}", conf.display()),
            ],
            &log,
            "dnsmasq (install it with `cargo xtask setup`)",
        )?;
        self.dnsmasq = Some(started);
        let dns_netns = format!("{}-dns", self.prefix);
        process::wait_until(Duration::from_secs(10), || {
            let output = Command::new("ip")
                .args([
                    "netns", "exec", &dns_netns, "dig", "+short", "+time=1", "+tries=1",
                ])
                .arg(format!("@{UPSTREAM_DNS_ADDR}"))
                .arg("upstream.lab")
                .output()
                .ok()?;
            String::from_utf8_lossy(&output.stdout)
                .contains(&UPSTREAM_DNS_ADDR.to_string())
                .then_some(())
        })
        .map_err(|waited| LabError::StartTimeout {
            what: "the lab's dnsmasq".into(),
            secs: waited.as_secs(),
            log: std::fs::read_to_string(&log).unwrap_or_default(),
        })
    }

    /// Starts `program args...` inside namespace `netns` (a server for a test
    /// or the demo); the lab stops it at teardown, by pid.
    pub fn spawn_in(
        &mut self,
        netns: &str,
        program: &str,
        args: &[String],
    ) -> Result<(), LabError> {
        let log = self.state_dir.join(format!("{netns}-{program}.log"));
        let started =
            self.spawn_recorded(netns, program, args, &log, &format!("{program} in {netns}"))?;
        self.processes.push(started);
        Ok(())
    }

    /// Starts `program args...` in namespace `netns`, its output in `log`,
    /// and records it for the sweep; `what` names it in an error.
    fn spawn_recorded(
        &self,
        netns: &str,
        program: &str,
        args: &[String],
        log: &Path,
        what: &str,
    ) -> Result<(Child, ProcessId), LabError> {
        let child = process::spawn_in_netns(
            &netns_path(netns),
            Path::new(program),
            args,
            log,
            self.lifetime(),
            Mounts::Host,
        )
        .map_err(|source| LabError::Spawn {
            what: what.to_owned(),
            source,
        })?;
        let id = self.record_process(&child)?;
        Ok((child, id))
    }

    /// Starts one etcd member in each of `nodes`, forming one cluster, and
    /// returns its client URLs (in the order of `nodes`) once every member
    /// answers healthy.
    pub fn start_etcd(&mut self, nodes: &[&str]) -> Result<Vec<String>, LabError> {
        self.start_etcd_members(nodes, None)
    }

    /// `start_etcd` with TLS: clients reach the members over `https` and
    /// must present a certificate of the lab's CA (`--client-cert-auth`);
    /// also returns the certificates (made in the lab's state directory).
    pub fn start_etcd_with_tls(
        &mut self,
        nodes: &[&str],
    ) -> Result<(Vec<String>, etcd::Certs), LabError> {
        let members = self.etcd_members(nodes)?;
        let dir = self.state_dir.join("etcd-certs");
        std::fs::create_dir_all(&dir).map_err(|source| LabError::File {
            path: dir.clone(),
            source,
        })?;
        let certs = etcd::make_certs(&dir, &members)?;
        let urls = self.start_etcd_members(nodes, Some(&certs))?;
        Ok((urls, certs))
    }

    fn etcd_members(&self, nodes: &[&str]) -> Result<Vec<etcd::Member>, LabError> {
        nodes
            .iter()
            .map(|name| {
                self.node(name).map(|node| etcd::Member {
                    name: node.name.clone(),
                    addr: node.addr,
                })
            })
            .collect()
    }

    fn start_etcd_members(
        &mut self,
        nodes: &[&str],
        certs: Option<&etcd::Certs>,
    ) -> Result<Vec<String>, LabError> {
        let members = self.etcd_members(nodes)?;
        for member in &members {
            let netns = self.node(&member.name)?.netns.clone();
            let data_dir = self.state_dir.join(format!("etcd-{}", member.name));
            let log = self.state_dir.join(format!("etcd-{}.log", member.name));
            let (child, id) = self.spawn_recorded(
                &netns,
                "etcd",
                &etcd::args(member, &members, &data_dir, &self.prefix, certs),
                &log,
                "etcd (install it with `cargo xtask setup`)",
            )?;
            self.etcd.push((member.name.clone(), child, id));
        }
        for member in &members {
            self.wait_etcd_healthy(member, certs)?;
        }
        Ok(members
            .iter()
            .map(|m| etcd::client_url(m.addr, certs.is_some()))
            .collect())
    }

    /// Stops node `name`'s etcd member, as a switched-off manager's.
    pub fn stop_etcd(&mut self, name: &str) {
        if let Some(at) = self.etcd.iter().position(|(node, _, _)| node == name) {
            let (_, mut child, id) = self.etcd.remove(at);
            id.terminate(STOP_GRACE);
            let _ = child.try_wait();
        }
    }

    fn wait_etcd_healthy(
        &self,
        member: &etcd::Member,
        certs: Option<&etcd::Certs>,
    ) -> Result<(), LabError> {
        let netns = &self.node(&member.name)?.netns;
        let url = format!("{}/health", etcd::client_url(member.addr, certs.is_some()));
        let mut curl: Vec<String> = ["netns", "exec", netns, "curl", "-s", "-m", "1"]
            .map(str::to_owned)
            .into();
        if let Some(certs) = certs {
            for (flag, path) in [
                ("--cacert", &certs.ca),
                ("--cert", &certs.client_cert),
                ("--key", &certs.client_key),
            ] {
                curl.push(flag.to_owned());
                curl.push(path.display().to_string());
            }
        }
        curl.push(url);
        process::wait_until(Duration::from_secs(20), || {
            let output = Command::new("ip").args(&curl).output().ok()?;
            String::from_utf8_lossy(&output.stdout)
                .contains("\"health\":\"true\"")
                .then_some(())
        })
        .map_err(|waited| LabError::StartTimeout {
            what: format!("etcd on {}", member.name),
            secs: waited.as_secs(),
            log: std::fs::read_to_string(self.state_dir.join(format!("etcd-{}.log", member.name)))
                .unwrap_or_default(),
        })
    }

    /// Stops the lab's upstream DNS server (to test what happens when the
    /// upstream is down).
    pub fn stop_upstream_dns(&mut self) {
        if let Some((mut child, id)) = self.dnsmasq.take() {
            id.terminate(STOP_GRACE);
            let _ = child.try_wait();
        }
    }

    fn lifetime(&self) -> Lifetime {
        if self.persistent {
            Lifetime::Detached
        } else {
            Lifetime::TiedToStarter
        }
    }

    fn record_process(&self, child: &Child) -> Result<ProcessId, LabError> {
        let id = ProcessId::of(child.id() as i32).ok_or_else(|| LabError::Spawn {
            what: format!("process {}", child.id()),
            source: std::io::Error::other("exited at once"),
        })?;
        append_line(&self.state_dir.join(sweep::PIDS_FILE), &id.to_record())?;
        Ok(id)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `name` (`n1`, ...).
    pub fn node(&self, name: &str) -> Result<&Node, LabError> {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .ok_or_else(|| LabError::NoNode(name.to_owned()))
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut Node, LabError> {
        self.nodes
            .iter_mut()
            .find(|node| node.name == name)
            .ok_or_else(|| LabError::NoNode(name.to_owned()))
    }

    /// The external client host's namespace.
    pub fn external_netns(&self) -> String {
        format!("{}-ext", self.prefix)
    }

    /// The upstream DNS server's address.
    pub fn upstream_dns(&self) -> Ipv4Addr {
        UPSTREAM_DNS_ADDR
    }

    pub fn netagent_bin(&self) -> PathBuf {
        self.bin_dir.join("netagent")
    }

    pub fn netctl_bin(&self) -> PathBuf {
        self.bin_dir.join("netctl")
    }

    /// The agent's paths inside this lab: nothing collides with another
    /// agent or another lab.
    fn agent_args(&self, node: &Node) -> (Vec<String>, PathBuf, PathBuf, PathBuf) {
        let node_dir = self.state_dir.join(&node.name);
        let data_dir = node_dir.join("data");
        let run_dir = node_dir.join("run");
        let bpffs = Path::new(BPFFS_ROOT).join(&self.prefix).join(&node.name);
        let mut args = vec![
            "--node-name".into(),
            node.name.clone(),
            "--advertise-addr".into(),
            node.addr.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--run-dir".into(),
            run_dir.display().to_string(),
            "--bpffs".into(),
            bpffs.display().to_string(),
            "--upstream-dns".into(),
            UPSTREAM_DNS_ADDR.to_string(),
        ];
        if !self.default_netns_prefix {
            // Sandboxes carry the lab's prefix, so the sweep finds them by name.
            args.extend([
                "--netns-prefix".into(),
                format!("{}-{}", self.prefix, node.name),
            ]);
        }
        (args, data_dir, run_dir, bpffs)
    }

    /// The command line `start_agent` runs, for people to copy.
    pub fn agent_command(&self, node: &str) -> Result<String, LabError> {
        let node = self.node(node)?;
        let (args, ..) = self.agent_args(node);
        Ok(format!(
            "nsenter --net={} {} {}",
            node.netns_path().display(),
            self.netagent_bin().display(),
            args.join(" ")
        ))
    }

    /// Starts the agent of node `name` with `extra` flags, and waits until its
    /// API answers.
    pub fn start_agent_with(&mut self, name: &str, extra: &[&str]) -> Result<(), LabError> {
        self.start_agent_mounted(name, extra, Mounts::Host)
    }

    /// Starts the agent of node `name` in a private mount namespace where no
    /// bpf filesystem is mounted (a host without one), and waits until its
    /// API answers. Its pins live and die with that namespace.
    pub fn start_agent_without_bpffs(&mut self, name: &str) -> Result<(), LabError> {
        self.start_agent_mounted(name, &[], Mounts::PrivateWithoutBpffs)
    }

    fn start_agent_mounted(
        &mut self,
        name: &str,
        extra: &[&str],
        mounts: Mounts,
    ) -> Result<(), LabError> {
        let bin = self.netagent_bin();
        if !bin.exists() {
            return Err(LabError::MissingBinary(bin));
        }
        let node = self.node(name)?;
        let (mut args, data_dir, run_dir, bpffs) = self.agent_args(node);
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let node_dir = self.state_dir.join(&node.name);
        std::fs::create_dir_all(&node_dir).map_err(|source| LabError::File {
            path: node_dir.clone(),
            source,
        })?;
        let log = node_dir.join("agent.log");
        let child = process::spawn_in_netns(
            &node.netns_path(),
            &bin,
            &args,
            &log,
            self.lifetime(),
            mounts,
        )
        .map_err(|source| LabError::Spawn {
            what: format!("netagent on {name}"),
            source,
        })?;
        let id = self.record_process(&child)?;
        let socket = run_dir.join("netagent.sock");
        self.node_mut(name)?.agent = Some(Agent {
            child,
            id,
            socket,
            log: log.clone(),
            data_dir,
            run_dir,
            bpffs,
        });
        let waited = process::wait_until(AGENT_START_DEADLINE, || {
            let output = self.netctl(name, &["status"]).ok()?;
            output.status.success().then_some(())
        });
        waited.map_err(|waited| LabError::StartTimeout {
            what: format!("netagent on {name}"),
            secs: waited.as_secs(),
            log: std::fs::read_to_string(&log).unwrap_or_default(),
        })
    }

    pub fn start_agent(&mut self, name: &str) -> Result<(), LabError> {
        self.start_agent_with(name, &[])
    }

    /// Starts an agent on every node.
    pub fn start_agents(&mut self) -> Result<(), LabError> {
        let names: Vec<String> = self.nodes.iter().map(|node| node.name.clone()).collect();
        names.iter().try_for_each(|name| self.start_agent(name))
    }

    /// Sends `signal` to node `name`'s agent and waits until it has exited,
    /// returning its exit status. The agent counts as stopped afterwards.
    pub fn signal_agent(
        &mut self,
        name: &str,
        signal: Signal,
    ) -> Result<std::process::ExitStatus, LabError> {
        let node = self.node_mut(name)?;
        let mut agent = node
            .agent
            .take()
            .ok_or_else(|| LabError::NoAgent(name.to_owned()))?;
        agent.id.signal(signal);
        let waited = process::wait_until(STOP_GRACE, || agent.child.try_wait().ok().flatten());
        match waited {
            Ok(status) => Ok(status),
            Err(_) => {
                agent.id.signal(Signal::SIGKILL);
                agent.child.wait().map_err(|source| LabError::Spawn {
                    what: format!("waiting for netagent on {name}"),
                    source,
                })
            }
        }
    }

    /// Runs `netctl --host <node's agent> args...` and returns its output,
    /// whatever its exit status.
    pub fn netctl(&self, name: &str, args: &[&str]) -> Result<Output, LabError> {
        let node = self.node(name)?;
        let host = match node.agent() {
            Some(agent) => agent.host(),
            None => {
                let (_, _, run_dir, _) = self.agent_args(node);
                format!("unix://{}", run_dir.join("netagent.sock").display())
            }
        };
        Command::new(self.netctl_bin())
            .arg("--host")
            .arg(host)
            .args(args)
            .output()
            .map_err(|source| LabError::Spawn {
                what: format!("netctl (is it built? {})", self.netctl_bin().display()),
                source,
            })
    }

    /// `netctl --format json args...` on node `name`, parsed; fails unless
    /// netctl succeeds.
    pub fn netctl_json(&self, name: &str, args: &[&str]) -> Result<serde_json::Value, LabError> {
        let mut full = vec!["--format", "json"];
        full.extend_from_slice(args);
        let output = self.netctl(name, &full)?;
        if !output.status.success() {
            return Err(LabError::Netctl {
                node: name.to_owned(),
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        serde_json::from_slice(&output.stdout).map_err(|error| LabError::NetctlJson {
            node: name.to_owned(),
            args: args.join(" "),
            error,
        })
    }

    /// Forms a cluster: `cluster init` on the first node, then every other
    /// node joins with the worker token. Agents must be running.
    pub fn form_cluster(&self) -> Result<(), LabError> {
        let Some(first) = self.nodes.first() else {
            return Ok(());
        };
        self.netctl_json(&first.name, &["cluster", "init"])?;
        let token = self.netctl_json(&first.name, &["cluster", "join-token", "worker"])?;
        let token = token["token"].as_str().unwrap_or_default().to_owned();
        let manager = format!("{}:2377", first.addr);
        for node in &self.nodes[1..] {
            self.netctl_json(
                &node.name,
                &["cluster", "join", "--token", &token, &manager],
            )?;
        }
        Ok(())
    }

    /// A lab of `nodes` agents in one cluster with overlay network `appnet`
    /// (10.10.0.0/24).
    pub fn cluster_with_appnet(nodes: usize) -> Result<Lab, LabError> {
        let mut lab = Lab::up(LabSpec::nodes(nodes))?;
        lab.start_agents()?;
        lab.form_cluster()?;
        lab.netctl_json(
            "n1",
            &["overlay", "create", "appnet", "--subnet", "10.10.0.0/24"],
        )?;
        Ok(lab)
    }

    /// [`Lab::cluster_with_appnet`] with service `web` (vip) on `appnet`.
    pub fn cluster_with_web(nodes: usize) -> Result<Lab, LabError> {
        let lab = Lab::cluster_with_appnet(nodes)?;
        lab.netctl_json("n1", &["service", "create", "web", "--network", "appnet"])?;
        Ok(lab)
    }

    /// Runs `args` inside namespace `netns` (`ip netns exec`, which also
    /// applies `/etc/netns/<netns>/resolv.conf`).
    pub fn exec(&self, netns: &str, args: &[&str]) -> Result<Output, LabError> {
        Command::new("ip")
            .args(["netns", "exec", netns])
            .args(args)
            .output()
            .map_err(|source| LabError::Spawn {
                what: format!("{} in {netns}", args.join(" ")),
                source,
            })
    }

    /// Adds a container namespace `<prefix>-<name>`; its resolver will be the
    /// agent's embedded DNS at 127.0.0.11.
    pub fn add_container(&mut self, name: &str) -> Result<Container, LabError> {
        let netns = self.add_netns(name)?;
        write_file(
            &Path::new(ETC_NETNS).join(&netns).join("resolv.conf"),
            "nameserver 127.0.0.11\noptions ndots:0\n",
        )?;
        Ok(Container {
            name: name.to_owned(),
            netns,
        })
    }

    /// Adds container `name` and attaches it on `node` to `network`
    /// (`netctl endpoint attach`); returns the container and its address.
    pub fn attach_container(
        &mut self,
        node: &str,
        name: &str,
        network: &str,
    ) -> Result<(Container, String), LabError> {
        let (container, endpoint) =
            self.attach_container_with(node, name, network, &["--name", name])?;
        let ip = endpoint["ip"].as_str().unwrap_or_default().to_owned();
        Ok((container, ip))
    }

    /// As `attach_container`, with `extra` flags for `netctl endpoint
    /// attach`; returns the container and the endpoint as netctl printed it.
    pub fn attach_container_with(
        &mut self,
        node: &str,
        name: &str,
        network: &str,
        extra: &[&str],
    ) -> Result<(Container, serde_json::Value), LabError> {
        let container = self.add_container(name)?;
        let path = container.netns_path().display().to_string();
        let mut args = vec!["endpoint", "attach", "--network", network, "--netns", &path];
        args.extend_from_slice(extra);
        let endpoint = self.netctl_json(node, &args)?;
        Ok((container, endpoint))
    }

    /// The last `lines` lines of every agent's log, for failure reports.
    pub fn agent_logs(&self, lines: usize) -> String {
        let mut report = String::new();
        for node in &self.nodes {
            let log = self.state_dir.join(&node.name).join("agent.log");
            if let Ok(text) = std::fs::read_to_string(&log) {
                let all: Vec<&str> = text.lines().collect();
                let tail = &all[all.len().saturating_sub(lines)..];
                report.push_str(&format!(
                    "--- {} agent log ---\n{}\n",
                    node.name,
                    tail.join("\n")
                ));
            }
        }
        report
    }

    /// Tears everything down, in the reverse order of building: agents,
    /// containers, dnsmasq, namespaces, files, pins, records. Carries on past
    /// errors and reports them all.
    pub fn teardown(&mut self) -> Result<(), LabError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        for (mut child, id) in self.processes.drain(..).rev() {
            id.terminate(STOP_GRACE);
            let _ = child.try_wait();
        }
        for node in self.nodes.iter_mut().rev() {
            if let Some(mut agent) = node.agent.take() {
                agent.id.terminate(STOP_GRACE);
                let _ = agent.child.try_wait();
            }
        }
        // The agents (managers) used the store: it goes after them.
        for (_, mut child, id) in self.etcd.drain(..).rev() {
            id.terminate(STOP_GRACE);
            let _ = child.try_wait();
        }
        self.stop_upstream_dns();
        for netns in self.namespaces.drain(..).rev() {
            if let Err(error) = cmd::run("ip", ["netns", "del", &netns]) {
                errors.push(error.to_string());
            }
            let etc = Path::new(ETC_NETNS).join(&netns);
            if etc.exists() {
                if let Err(error) = std::fs::remove_dir_all(&etc) {
                    errors.push(format!("removing {}: {error}", etc.display()));
                }
            }
        }
        // Namespaces the agents made (sandboxes) carry the prefix too.
        errors.extend(sweep::remove_lab_objects(&self.prefix));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(LabError::Teardown(errors))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.persistent || self.torn_down {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "lab {} failed; agent logs:\n{}",
                self.prefix,
                self.agent_logs(40)
            );
        }
        if let Err(error) = self.teardown() {
            eprintln!("lab {}: {error}", self.prefix);
        }
    }
}
