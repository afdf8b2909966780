//! Every external program the repository runs, and the Debian package that
//! brings it.
//!
//! A program that only one machine happened to have (bpftool, once) makes CI
//! fail on a fresh machine while it passes on the author's. So the sources
//! are scanned for the programs they run (`scan`), and a unit test fails,
//! naming the program, its place and what to add, when one is missing from
//! [`PROGRAMS`] or its package is neither installed by setup nor part of a
//! minimal Debian system. `cargo xtask setup` then checks that each one is
//! really there.

use std::path::{Path, PathBuf};

/// Where a program comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Debian package; it must be in setup's list or in [`BASE_PACKAGES`].
    Package(&'static str),
    /// The Rust toolchain the build itself runs with (rustup, cargo).
    Toolchain,
}

/// The programs the repository runs, by name.
pub const PROGRAMS: &[(&str, Source)] = &[
    ("apt-get", Source::Package("apt")),
    ("bash", Source::Package("bash")),
    ("bpftool", Source::Package("bpftool")),
    ("bridge", Source::Package("iproute2")),
    ("cargo", Source::Toolchain),
    ("curl", Source::Package("curl")),
    ("dig", Source::Package("bind9-dnsutils")),
    ("dnsmasq", Source::Package("dnsmasq-base")),
    ("dnsperf", Source::Package("dnsperf")),
    ("dpkg-query", Source::Package("dpkg")),
    ("env", Source::Package("coreutils")),
    ("etcd", Source::Package("etcd-server")),
    ("etcdctl", Source::Package("etcd-client")),
    ("drill", Source::Package("ldnsutils")),
    ("getent", Source::Package("libc-bin")),
    ("ip", Source::Package("iproute2")),
    ("iperf3", Source::Package("iperf3")),
    ("iptables", Source::Package("iptables")),
    ("iptables-restore", Source::Package("iptables")),
    ("mount", Source::Package("mount")),
    ("nc", Source::Package("netcat-openbsd")),
    ("nft", Source::Package("nftables")),
    ("nsenter", Source::Package("util-linux")),
    ("openssl", Source::Package("openssl")),
    ("ping", Source::Package("iputils-ping")),
    ("python3", Source::Package("python3")),
    ("rustup", Source::Toolchain),
    ("sh", Source::Package("dash")),
    ("stat", Source::Package("coreutils")),
    ("sysctl", Source::Package("procps")),
    ("tc", Source::Package("iproute2")),
    ("tcpdump", Source::Package("tcpdump")),
    ("umount", Source::Package("mount")),
    ("unshare", Source::Package("util-linux")),
];

/// Packages of a minimal Debian system (`debootstrap --variant=minbase`:
/// the essential and required ones): always there, never installed.
pub const BASE_PACKAGES: &[&str] = &[
    "apt",
    "base-files",
    "bash",
    "coreutils",
    "dash",
    "debianutils",
    "diffutils",
    "dpkg",
    "findutils",
    "grep",
    "gzip",
    "hostname",
    "libc-bin",
    "login",
    "mount",
    "sed",
    "tar",
    "util-linux",
];

/// Calls whose first argument is the program: `Command::new("ip")`,
/// `cmd::run("ip", ...)`.
const PROGRAM_FIRST: &[&str] = &["Command::new(", "cmd::run(", "cmd::run_output("];

/// Calls whose argument list holds a slice that starts with the program:
/// `lab.exec(ns, &["dig", ...])`, `common::run(lab, ns, &["ip", ...])`.
const SLICE_RUNNERS: &[&str] = &[".exec(", "run(", "stdout(", "timed("];

/// `lab.spawn_in(ns, "dnsmasq", args)`: the program is the second argument.
const PROGRAM_SECOND: &[&str] = &[".spawn_in("];

/// One program found in the sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Use {
    pub program: String,
    pub file: PathBuf,
    pub line: usize,
}

/// The programs `text` runs, with their line numbers.
pub fn scan_text(text: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    for call in PROGRAM_FIRST {
        for (at, _) in text.match_indices(call) {
            let args = &text[at + call.len()..];
            if let Some(program) = leading_literal(args) {
                found.push((program, line_of(at)));
            }
        }
    }
    for call in PROGRAM_SECOND {
        for (at, _) in text.match_indices(call) {
            let args = &text[at + call.len()..];
            if let Some(second) = nth_argument(args, 1) {
                if let Some(program) = leading_literal(second) {
                    found.push((program, line_of(at)));
                }
            }
        }
    }
    for runner in SLICE_RUNNERS {
        for (at, _) in text.match_indices(runner) {
            // `run(` must be a whole name (`common::run(`, `run(`), not the
            // tail of another one (`cargo_run(`).
            let before = text[..at].chars().next_back();
            if !runner.starts_with('.') && before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let args = &text[at + runner.len()..];
            // `cmd::run("ip", [...])`: the program comes first, the slice
            // holds its arguments.
            if nth_argument(args, 0).and_then(leading_literal).is_some() {
                continue;
            }
            let slice = (0..4).find_map(|n| nth_argument(args, n).and_then(slice_literals));
            if let Some(program) = slice.and_then(|words| words.into_iter().next()) {
                found.push((program, line_of(at)));
            }
        }
    }
    // Inside any slice: `"--", "python3"` (nsenter, unshare),
    // `"netns", "exec", ns, "iperf3"` and `"bash", "-c", script`.
    for (at, _) in text.match_indices('[') {
        let Some(words) = slice_items(&text[at..]) else {
            continue;
        };
        for (i, word) in words.iter().enumerate() {
            let program = match word.as_deref() {
                Some("--") => words.get(i + 1),
                // `["bash", "-c", script, ...]`: the shell.
                Some("-c") if i == 1 => words.first(),
                Some("exec") if i > 0 && words[i - 1].as_deref() == Some("netns") => {
                    words.get(i + 2)
                }
                _ => None,
            };
            if let Some(Some(program)) = program {
                found.push((program.clone(), line_of(at)));
            }
        }
    }
    found.retain(|(program, _)| is_program_name(program));
    found.sort();
    found.dedup();
    found
}

/// A plausible program name (not a flag, a path built at run time, or text).
fn is_program_name(word: &str) -> bool {
    !word.is_empty()
        && !word.starts_with('-')
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
}

/// The string literal `text` starts with (after blanks and a `&`).
fn leading_literal(text: &str) -> Option<String> {
    let text = text.trim_start().trim_start_matches('&').trim_start();
    let rest = text.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_owned())
}

/// The text of argument `n` of the argument list `args` starts (the part
/// after the opening parenthesis), up to the comma or closing parenthesis
/// that ends it.
fn nth_argument(args: &str, n: usize) -> Option<&str> {
    let mut depth = 0usize;
    let mut index = 0;
    let mut start = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (at, c) in args.char_indices() {
        if in_string {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => {
                return (index == n).then(|| &args[start..at]);
            }
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                if index == n {
                    return Some(&args[start..at]);
                }
                index += 1;
                start = at + 1;
            }
            _ => {}
        }
    }
    None
}

/// The literals of a slice argument `&["a", "b", x]`, when it is one and
/// starts with a literal.
fn slice_literals(argument: &str) -> Option<Vec<String>> {
    let text = argument.trim_start().trim_start_matches('&').trim_start();
    if !text.starts_with('[') {
        return None;
    }
    let items = slice_items(text)?;
    match items.first() {
        Some(Some(_)) => Some(items.into_iter().flatten().collect()),
        _ => None,
    }
}

/// The items of the slice `text` starts with: `Some(literal)` for a string
/// literal, `None` for anything else.
fn slice_items(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('[')?;
    let mut items = Vec::new();
    let mut n = 0;
    while let Some(item) = nth_argument(inner, n) {
        let trimmed = item.trim();
        if trimmed.is_empty() {
            break;
        }
        let literal = trimmed
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
            .filter(|inside| !inside.contains('"'))
            .map(str::to_owned);
        items.push(literal);
        n += 1;
    }
    Some(items)
}

/// Every `.rs` file of the workspace, outside `target/`.
fn sources(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every program the workspace under `root` runs, and where.
pub fn scan(root: &Path) -> Vec<Use> {
    let mut uses = Vec::new();
    for file in sources(root) {
        // This file's own tests are samples, not programs the repository runs.
        if file.ends_with("xtask/src/programs.rs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let relative = file.strip_prefix(root).unwrap_or(&file).to_owned();
        for (program, line) in scan_text(&text) {
            uses.push(Use {
                program,
                file: relative.clone(),
                line,
            });
        }
    }
    uses
}

/// The source of `program`, if the table knows it.
pub fn source_of(program: &str) -> Option<Source> {
    PROGRAMS
        .iter()
        .find(|(name, _)| *name == program)
        .map(|(_, source)| *source)
}

/// What is wrong with the programs of `uses` given setup's `packages`: one
/// line per problem, each saying what to add where.
pub fn problems(uses: &[Use], packages: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    for used in uses {
        let place = format!("{}:{}", used.file.display(), used.line);
        match source_of(&used.program) {
            None => problems.push(format!(
                "{place} runs `{}`, which xtask/src/programs.rs does not know: add it to PROGRAMS \
                 with its Debian package (`dpkg -S $(command -v {})`), and the package to \
                 PACKAGES in xtask/src/setup.rs",
                used.program, used.program
            )),
            Some(Source::Package(package))
                if !packages.contains(&package) && !BASE_PACKAGES.contains(&package) =>
            {
                problems.push(format!(
                    "{place} runs `{}` from Debian's {package}, which setup does not install: \
                     add {package} to PACKAGES in xtask/src/setup.rs",
                    used.program
                ))
            }
            Some(_) => {}
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

/// `cargo xtask programs`: every program, its origin and where it is run;
/// fails on the problems the unit test would report, given setup's
/// `packages`.
pub fn run(packages: &[&str]) -> anyhow::Result<()> {
    let uses = scan(&crate::workspace::root());
    for (program, source) in PROGRAMS {
        let origin = match source {
            Source::Package(package) => format!("Debian {package}"),
            Source::Toolchain => "the Rust toolchain".to_owned(),
        };
        let places: Vec<String> = uses
            .iter()
            .filter(|u| u.program == *program)
            .map(|u| format!("{}:{}", u.file.display(), u.line))
            .collect();
        println!("{program:<18} {origin:<24} {}", places.join(" "));
    }
    let problems = problems(&uses, packages);
    if !problems.is_empty() {
        anyhow::bail!("\n{}", problems.join("\n"));
    }
    Ok(())
}

/// Where Debian puts programs: a program is checked there, not on PATH
/// (which may find a copy of another origin, such as pyenv's python3).
const DEBIAN_BIN_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The programs of [`PROGRAMS`] from Debian packages that this machine
/// lacks, with their packages.
pub fn missing_on_this_machine() -> Vec<(&'static str, &'static str)> {
    PROGRAMS
        .iter()
        .filter_map(|(program, source)| match source {
            Source::Package(package) => Some((*program, *package)),
            Source::Toolchain => None,
        })
        .filter(|(program, _)| {
            !DEBIAN_BIN_DIRS
                .iter()
                .any(|dir| Path::new(dir).join(program).exists())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn programs(text: &str) -> Vec<String> {
        scan_text(text).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn a_command_new_names_its_program() {
        assert_eq!(programs(r#"let c = Command::new("bpftool");"#), ["bpftool"]);
    }

    #[test]
    fn the_lab_helpers_name_their_programs() {
        let text = r#"
            cmd::run("ip", ["link", "add"]);
            lab.exec(&ctr.netns, &["dig", "+short", name]);
            common::run(lab, netns, &["nft", "list", "ruleset"]);
            lab.spawn_in(&ns, "dnsmasq", &args);
        "#;
        assert_eq!(programs(text), ["dig", "dnsmasq", "ip", "nft"]);
    }

    #[test]
    fn a_program_after_double_dash_or_netns_exec_is_found() {
        let text = r#"
            c.args(["--", "python3", "-c", SERVER]);
            c.args(["netns", "exec", netns, "iperf3", "-s"]);
            let args = vec!["bash", "-c", "dnsperf \"$@\"", "dnsperf"];
        "#;
        assert_eq!(programs(text), ["bash", "iperf3", "python3"]);
    }

    #[test]
    fn arguments_of_other_calls_are_not_programs() {
        let text = r#"
            lab.netctl("n1", &["overlay", "create", "appnet"]);
            dig(lab, c, &["web"]);
            cargo_run(&["build"]);
        "#;
        assert!(programs(text).is_empty(), "{:?}", programs(text));
    }

    #[test]
    fn an_unknown_program_is_reported_with_what_to_add() {
        let uses = [Use {
            program: "consul".into(),
            file: "tests/x.rs".into(),
            line: 3,
        }];
        let found = problems(&uses, &[]);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("tests/x.rs:3 runs `consul`"),
            "{found:?}"
        );
        assert!(found[0].contains("add it to PROGRAMS"), "{found:?}");
    }

    #[test]
    fn a_program_whose_package_setup_lacks_is_reported() {
        let uses = [Use {
            program: "bpftool".into(),
            file: "tests/x.rs".into(),
            line: 1,
        }];
        let found = problems(&uses, &["iproute2"]);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("add bpftool to PACKAGES"), "{found:?}");
        assert!(problems(&uses, &["bpftool"]).is_empty());
    }
}
