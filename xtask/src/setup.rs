//! `cargo xtask setup`: installs what a fresh machine lacks, and nothing
//! that is already there. Every step checks first, so a second run takes a
//! few seconds.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Debian packages the build, the tests, the demo and the benchmarks use.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip, tc and bridge for the lab and the checks"),
    ("iputils-ping", "ping in tests and the demo"),
    ("procps", "sysctl in lab namespaces"),
    (
        "util-linux",
        "nsenter, to start agents inside node namespaces",
    ),
    (
        "llvm-22-dev",
        "bpf-linker links the eBPF programs with LLVM 22",
    ),
    ("libpolly-22-dev", "bpf-linker's LLVM link dependencies"),
    ("libzstd-dev", "bpf-linker's LLVM link dependencies"),
    ("zlib1g-dev", "bpf-linker's LLVM link dependencies"),
    ("protobuf-compiler", "etcd-client's gRPC code generation"),
    ("libprotobuf-dev", "etcd-client's well-known protobuf types"),
    ("dnsmasq-base", "the lab's upstream DNS server"),
    (
        "etcd-server",
        "the lab's etcd members, the store of several managers",
    ),
    (
        "etcd-client",
        "etcdctl, reading and writing the lab's etcd in tests",
    ),
    ("openssl", "the lab's certificates for etcd with TLS"),
    (
        "bind9-dnsutils",
        "dig, in tests and the lab's readiness checks",
    ),
    ("ldnsutils", "drill, a second DNS client for tests"),
    ("iperf3", "throughput benchmarks"),
    ("dnsperf", "the DNS benchmark"),
    ("python3", "small socket probes in tests"),
    ("nftables", "masquerade and the nftables anchor"),
    ("iptables", "the iptables anchor"),
    ("tcpdump", "reading pcap files and debugging the lab"),
    ("bpftool", "reading pinned maps and programs in tests"),
    ("curl", "HTTP clients in tests and the demo"),
    ("netcat-openbsd", "TCP and UDP probes in tests"),
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

const BPFFS: &str = "/sys/fs/bpf";
/// What the kernel puts in every new bpf filesystem (bpf_preload): not ours
/// to keep, but no sign of use either.
const BPFFS_PRELOAD: &[&str] = &["maps.debug", "progs.debug"];

/// What this setup changed that the machine did not have: undone on drop
/// (after tests, the demo or a benchmark) unless kept.
pub struct Setup {
    mounted_bpffs: bool,
}

impl Setup {
    /// Leaves everything in place (`cargo xtask setup`, `lab up`).
    pub fn keep(mut self) {
        self.mounted_bpffs = false;
    }
}

impl Drop for Setup {
    /// Unmounts the bpf filesystem this run mounted, once nothing but the
    /// kernel's preload entries is left on it.
    fn drop(&mut self) {
        if !self.mounted_bpffs {
            return;
        }
        let entries: Vec<String> = std::fs::read_dir(BPFFS)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if entries
            .iter()
            .all(|name| BPFFS_PRELOAD.contains(&name.as_str()))
        {
            if let Err(error) = run_checked(Command::new("umount").arg(BPFFS)) {
                eprintln!("setup: could not unmount the bpf filesystem it mounted: {error:#}");
            }
        }
    }
}

/// The names of the packages setup installs.
pub fn package_names() -> Vec<&'static str> {
    PACKAGES.iter().map(|(package, _)| *package).collect()
}

pub fn run() -> Result<Setup> {
    install_packages()?;
    check_programs()?;
    install_rust_src()?;
    install_bpf_linker()?;
    let mounted_bpffs = mount_bpffs()?;
    println!("setup: everything is in place");
    Ok(Setup { mounted_bpffs })
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn run_checked(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", package])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout == b"installed")
}

fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(package, _)| *package)
        .filter(|package| !is_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !netlab::is_root() {
        bail!(
            "missing Debian packages: {}; run `sudo cargo xtask setup`",
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    run_checked(Command::new("apt-get").args(["update", "-q"]))?;
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
}

/// Every program the repository runs is on this machine now: a package
/// whose programs moved, or a wrong entry in the table, fails here, before
/// a test fails on it.
fn check_programs() -> Result<()> {
    let missing = crate::programs::missing_on_this_machine();
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|(program, package)| format!("{program} (from {package})"))
        .collect();
    bail!(
        "programs the tests run are missing after setup: {}; fix their packages in \
         xtask/src/programs.rs and xtask/src/setup.rs",
        list.join(", ")
    )
}

fn install_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup is needed for the eBPF build (nightly toolchain)")?;
    if !installed.status.success() {
        println!("setup: installing the nightly toolchain");
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if String::from_utf8_lossy(&installed.stdout).contains("rust-src") {
        return Ok(());
    }
    println!("setup: adding rust-src to nightly (the eBPF build compiles core)");
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn install_bpf_linker() -> Result<()> {
    if succeeds("bpf-linker", &["--version"]) {
        return Ok(());
    }
    println!("setup: building bpf-linker against LLVM 22 (about a minute)");
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run_checked(
        Command::new("cargo")
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                "bpf-linker",
                "--version",
                "0.13.0",
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )?;
    if !succeeds("bpf-linker", &["--version"]) {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// The agents pin maps under /sys/fs/bpf; containers often start without a
/// bpffs mounted there. Whether this call mounted it.
fn mount_bpffs() -> Result<bool> {
    if is_bpffs(BPFFS) {
        return Ok(false);
    }
    if !netlab::is_root() {
        bail!("/sys/fs/bpf is not a bpf filesystem; run `sudo cargo xtask setup` to mount one");
    }
    println!("setup: mounting a bpf filesystem on /sys/fs/bpf");
    run_checked(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    Ok(true)
}

fn is_bpffs(path: &str) -> bool {
    Command::new("stat")
        .args(["-f", "-c", "%T", path])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "bpf_fs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_the_repository_runs_is_installed_by_setup() {
        let uses = crate::programs::scan(&crate::workspace::root());
        // The scan must see the repository's own programs, or it checks
        // nothing.
        for known in ["ip", "bpftool", "dig", "dnsmasq", "nsenter"] {
            assert!(
                uses.iter().any(|u| u.program == known),
                "the scan no longer finds `{known}`"
            );
        }
        let packages = package_names();
        let problems = crate::programs::problems(&uses, &packages);
        assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    }
}
