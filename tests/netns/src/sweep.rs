//! Finding and removing what labs left behind: the sweep that runs before
//! every lab (for runs that were killed) and the leftover check of
//! `cargo xtask test`.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use crate::{
    cmd,
    names::{belongs_to, BPFFS_ROOT, ETC_NETNS, LAB_STATE_ROOT, PREFIX_MARK},
    process::ProcessId,
};

/// In a lab's state directory: `pid start_ticks` of the process that owns
/// the lab, or `persistent`.
pub const OWNER_FILE: &str = "owner";
/// In a lab's state directory: one `pid start_ticks` line per process started.
pub const PIDS_FILE: &str = "pids";

/// What a sweep removed.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub labs: Vec<String>,
    pub errors: Vec<String>,
}

/// The lab prefix a name starts with (`nl` + 6 hex digits), if any.
pub fn lab_prefix_of(name: &str) -> Option<&str> {
    let prefix = name.get(..PREFIX_MARK.len() + 6)?;
    let hex = &prefix[PREFIX_MARK.len()..];
    let rest = &name[prefix.len()..];
    (prefix.starts_with(PREFIX_MARK)
        && hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        && (rest.is_empty() || rest.starts_with('-')))
    .then_some(prefix)
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The mark agents put on their sandboxes' br0 (the alias
/// `netagent:<data dir>`), as `ip -o link` prints it.
const OWNER_MARK: &str = "alias netagent:";

/// The lab a sandbox namespace belongs to by its agent's mark: an agent
/// started with the default `--netns-prefix` names its sandboxes
/// `netagent-<node>-<vni>`, but its data directory is inside the lab's
/// state directory.
fn lab_of_mark(netns: &str) -> Option<String> {
    let output = cmd::run_output("ip", ["-n", netns, "-o", "link", "show", "dev", "br0"]).ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mark = text.split(OWNER_MARK).nth(1)?;
    let data_dir = mark
        .split(|c: char| c.is_whitespace() || c == '\\')
        .next()?;
    let inside = Path::new(data_dir).strip_prefix(LAB_STATE_ROOT).ok()?;
    let first = inside.components().next()?.as_os_str().to_str()?;
    lab_prefix_of(first).map(str::to_owned)
}

/// The lab namespace `netns` belongs to: by its name, or by its mark.
fn lab_of_namespace(netns: &str) -> Option<String> {
    match lab_prefix_of(netns) {
        Some(prefix) => Some(prefix.to_owned()),
        None => lab_of_mark(netns),
    }
}

fn state_dir(prefix: &str) -> PathBuf {
    Path::new(LAB_STATE_ROOT).join(prefix)
}

/// Whether lab `prefix` is still in use: persistent, or its owner runs.
fn is_live(prefix: &str, include_persistent: bool) -> bool {
    match std::fs::read_to_string(state_dir(prefix).join(OWNER_FILE)) {
        Ok(owner) if owner.trim() == "persistent" => !include_persistent,
        Ok(owner) => ProcessId::from_record(&owner).is_some_and(|id| id.is_alive()),
        Err(_) => false,
    }
}

/// Every lab prefix that has something on this machine.
fn known_prefixes() -> Vec<String> {
    let mut prefixes: Vec<String> = [
        Path::new(LAB_STATE_ROOT),
        Path::new(ETC_NETNS),
        Path::new(BPFFS_ROOT),
    ]
    .iter()
    .flat_map(|dir| dir_names(dir))
    .filter_map(|name| lab_prefix_of(&name).map(str::to_owned))
    .chain(
        dir_names(Path::new("/run/netns"))
            .iter()
            .filter_map(|name| lab_of_namespace(name)),
    )
    .collect();
    prefixes.sort();
    prefixes.dedup();
    prefixes
}

/// Removes every lab whose owner is gone (and persistent ones too with
/// `include_persistent`): its processes, namespaces, files and pins.
pub fn sweep(include_persistent: bool) -> SweepReport {
    let mut report = SweepReport::default();
    for prefix in known_prefixes() {
        if is_live(&prefix, include_persistent) {
            continue;
        }
        let pids = std::fs::read_to_string(state_dir(&prefix).join(PIDS_FILE)).unwrap_or_default();
        for id in pids.lines().filter_map(ProcessId::from_record) {
            id.terminate(std::time::Duration::from_secs(5));
        }
        report.errors.extend(remove_lab_objects(&prefix));
        report.labs.push(prefix);
    }
    report
}

/// Deletes the namespaces, `/etc/netns` entries, bpffs pins and state
/// directory of lab `prefix`; returns what could not be removed.
pub fn remove_lab_objects(prefix: &str) -> Vec<String> {
    let mut errors = Vec::new();
    for netns in dir_names(Path::new("/run/netns")) {
        if belongs_to(&netns, prefix) || lab_of_mark(&netns).as_deref() == Some(prefix) {
            if let Err(error) = cmd::run("ip", ["netns", "del", &netns]) {
                errors.push(error.to_string());
            }
        }
    }
    for dir in [Path::new(ETC_NETNS), Path::new(BPFFS_ROOT)] {
        for name in dir_names(dir) {
            if belongs_to(&name, prefix) {
                let path = dir.join(&name);
                if let Err(error) = std::fs::remove_dir_all(&path) {
                    errors.push(format!("removing {}: {error}", path.display()));
                }
            }
        }
    }
    let state = state_dir(prefix);
    if state.exists() {
        if let Err(error) = std::fs::remove_dir_all(&state) {
            errors.push(format!("removing {}: {error}", state.display()));
        }
    }
    // The parents the labs created go with the last lab (remove_dir fails,
    // harmlessly, while anything else is in them).
    for parent in [LAB_STATE_ROOT, ETC_NETNS] {
        let _ = std::fs::remove_dir(parent);
    }
    errors
}

/// What labs that are not running left on this machine.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub namespaces: Vec<String>,
    pub etc_netns: Vec<String>,
    pub pins: Vec<String>,
    pub state_dirs: Vec<String>,
    pub processes: Vec<String>,
    /// Lab addresses in the root namespace: a breach of the lab's safety rule.
    pub root_addresses: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        *self == Leftovers::default()
    }
}

impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (what, items) in [
            ("namespaces", &self.namespaces),
            ("/etc/netns entries", &self.etc_netns),
            ("bpffs pins", &self.pins),
            ("lab state directories", &self.state_dirs),
            ("processes", &self.processes),
            ("lab addresses in the root namespace", &self.root_addresses),
        ] {
            if !items.is_empty() {
                writeln!(f, "{what}: {}", items.join(", "))?;
            }
        }
        Ok(())
    }
}

/// Everything that belongs to a lab no live process owns (persistent labs
/// excluded), plus any lab address in the root namespace.
pub fn leftovers() -> Leftovers {
    let stale = |name: &String| lab_prefix_of(name).is_some_and(|prefix| !is_live(prefix, false));
    let stale_in = |dir: &Path| -> Vec<String> {
        dir_names(dir)
            .into_iter()
            .filter(|name| stale(name))
            .collect()
    };
    let mut processes = Vec::new();
    for prefix in known_prefixes()
        .iter()
        .filter(|prefix| !is_live(prefix, false))
    {
        let pids = std::fs::read_to_string(state_dir(prefix).join(PIDS_FILE)).unwrap_or_default();
        for id in pids.lines().filter_map(ProcessId::from_record) {
            if id.is_alive() {
                processes.push(format!("pid {} of lab {prefix}", id.pid));
            }
        }
    }
    let namespaces = dir_names(Path::new("/run/netns"))
        .into_iter()
        .filter(|name| lab_of_namespace(name).is_some_and(|prefix| !is_live(&prefix, false)))
        .collect();
    Leftovers {
        namespaces,
        etc_netns: stale_in(Path::new(ETC_NETNS)),
        pins: stale_in(Path::new(BPFFS_ROOT)),
        state_dirs: stale_in(Path::new(LAB_STATE_ROOT)),
        processes,
        root_addresses: root_lab_addresses(),
    }
}

/// Addresses of the root namespace inside the lab range 198.18.0.0/15.
fn root_lab_addresses() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifaddr| {
            let ip = ifaddr.address?.as_sockaddr_in()?.ip();
            in_lab_range(ip).then(|| format!("{ip} on {}", ifaddr.interface_name))
        })
        .collect()
}

fn in_lab_range(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 198 && (b == 18 || b == 19)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_prefixes_are_recognised_exactly() {
        assert_eq!(lab_prefix_of("nl0a1b2c-n1"), Some("nl0a1b2c"));
        assert_eq!(lab_prefix_of("nl0a1b2c"), Some("nl0a1b2c"));
        assert_eq!(lab_prefix_of("nl0a1b2cd"), None);
        assert_eq!(lab_prefix_of("nlzzzzzz-n1"), None);
        assert_eq!(lab_prefix_of("netagent"), None);
        assert_eq!(lab_prefix_of("nl"), None);
    }

    #[test]
    fn lab_range_is_the_benchmark_range() {
        assert!(in_lab_range(Ipv4Addr::new(198, 18, 0, 11)));
        assert!(in_lab_range(Ipv4Addr::new(198, 19, 255, 1)));
        assert!(!in_lab_range(Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!in_lab_range(Ipv4Addr::new(10, 0, 0, 1)));
    }
}
