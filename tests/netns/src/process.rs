//! Processes the lab starts inside its namespaces, recorded by pid and start
//! time so that only those very processes are ever signalled, even by a sweep
//! in a later run after pids were reused.

use std::{
    fs::File,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// Whether this process may build labs (they need root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A process identity that survives pid reuse: (pid, start time in ticks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: i32,
    pub start_ticks: u64,
}

impl ProcessId {
    /// The identity of a running process, or `None` if it is gone.
    pub fn of(pid: i32) -> Option<Self> {
        stat_fields(pid).map(|(_, start_ticks)| Self { pid, start_ticks })
    }

    /// Whether this very process still runs (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        matches!(stat_fields(self.pid), Some((state, start)) if start == self.start_ticks && state != 'Z')
    }

    /// `pid start_ticks`, as written in a lab's records.
    pub fn to_record(self) -> String {
        format!("{} {}", self.pid, self.start_ticks)
    }

    pub fn from_record(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let pid = words.next()?.parse().ok()?;
        let start_ticks = words.next()?.parse().ok()?;
        Some(Self { pid, start_ticks })
    }

    /// Sends `signal` if this very process still runs.
    pub fn signal(&self, signal: Signal) {
        if self.is_alive() {
            let _ = kill(Pid::from_raw(self.pid), signal);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once the process is gone
    /// (or after a last short wait, if it will not die).
    pub fn terminate(&self, grace: Duration) {
        self.signal(Signal::SIGTERM);
        if wait_until(grace, || (!self.is_alive()).then_some(())).is_ok() {
            return;
        }
        self.signal(Signal::SIGKILL);
        let _ = wait_until(Duration::from_secs(2), || (!self.is_alive()).then_some(()));
    }
}

/// (state, start time) from `/proc/<pid>/stat`.
fn stat_fields(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 of stat is the start time; `rest` begins at field 3.
    let start_ticks = fields.get(19)?.parse().ok()?;
    Some((state, start_ticks))
}

/// How a process started by the lab behaves when its starter goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Gets SIGTERM when the thread that started it dies, even by SIGKILL:
    /// a killed test run leaves no process behind.
    TiedToStarter,
    /// Outlives the starter (`cargo xtask lab up`).
    Detached,
}

/// The mounts a process started by the lab sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mounts {
    /// The host's: `nsenter --net` alone keeps the mount namespace, so the
    /// bpffs the process pins into stays visible.
    Host,
    /// A private copy of the host's with no bpf filesystem mounted: a node
    /// without bpffs, made for this one process and never for the host.
    PrivateWithoutBpffs,
}

/// Unmounts every bpffs stacked on /sys/fs/bpf (inside the private mount
/// namespace `unshare` made), then runs the rest of the command line.
const UNMOUNT_BPFFS: &str = "while grep -q ' /sys/fs/bpf ' /proc/self/mounts; do \
     umount /sys/fs/bpf || exit 1; done; exec \"$@\"";

/// Starts `program args...` in network namespace `netns_path` through
/// `nsenter --net`, with `mounts`, output appended to `log`.
pub fn spawn_in_netns(
    netns_path: &Path,
    program: &Path,
    args: &[String],
    log: &Path,
    lifetime: Lifetime,
    mounts: Mounts,
) -> std::io::Result<Child> {
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut command = match mounts {
        Mounts::Host => Command::new("nsenter"),
        Mounts::PrivateWithoutBpffs => {
            // unshare and sh exec what follows: the pid stays the program's.
            let mut command = Command::new("unshare");
            command.args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                UNMOUNT_BPFFS,
                "sh",
                "nsenter",
            ]);
            command
        }
    };
    command
        .arg(format!("--net={}", netns_path.display()))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if lifetime == Lifetime::TiedToStarter {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork
        // and exec here.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    } else {
        command.process_group(0);
    }
    command.spawn()
}

/// Polls `check` every 20 ms until it yields a value or `deadline` passes.
/// The lab's only way to wait: there are no bare sleeps.
pub fn wait_until<T>(
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, Duration> {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if start.elapsed() >= deadline {
            return Err(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_round_trips() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        assert_eq!(ProcessId::from_record(&me.to_record()), Some(me));
        let reused = ProcessId {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(
            !reused.is_alive(),
            "a different start time is another process"
        );
    }

    #[test]
    fn wait_until_times_out() {
        let waited = wait_until(Duration::from_millis(50), || None::<()>).unwrap_err();
        assert!(waited >= Duration::from_millis(50));
        assert_eq!(wait_until(Duration::from_secs(1), || Some(7)), Ok(7));
    }
}
