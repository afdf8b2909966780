//! Threads of a process the lab started: found by name, and one held
//! stopped while a test checks what the rest of the process does meanwhile
//! (a thread that cannot run, as behind a busy CPU, without touching the
//! others).

use std::{fs, io, ptr};

/// `(name, thread id)` of the threads of process `pid` whose name starts
/// with `prefix`, sorted by name.
pub fn threads_named(pid: i32, prefix: &str) -> Vec<(String, i32)> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut found: Vec<(String, i32)> = tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid = task.file_name().to_str()?.parse().ok()?;
            let name = fs::read_to_string(task.path().join("comm")).ok()?;
            let name = name.trim_end();
            name.starts_with(prefix).then(|| (name.to_owned(), tid))
        })
        .collect();
    found.sort();
    found
}

/// One thread held stopped through ptrace while the rest of its process
/// runs on. Resumed when dropped, or by the kernel if this process ends
/// first (a tracer's exit detaches its tracees). ptrace ties the tracee to
/// the tracing thread: drop it on the thread that stopped it.
pub struct StoppedThread {
    tid: i32,
}

fn ptrace(request: libc::c_uint, tid: i32) -> io::Result<()> {
    // SAFETY: a request on a thread id that takes no address and no data.
    let result = unsafe {
        libc::ptrace(
            request,
            tid,
            ptr::null_mut::<libc::c_void>(),
            ptr::null_mut::<libc::c_void>(),
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl StoppedThread {
    /// Stops thread `tid` (only it: `PTRACE_SEIZE` does not stop anything,
    /// `PTRACE_INTERRUPT` stops the one thread) and returns once it is.
    pub fn stop(tid: i32) -> io::Result<Self> {
        ptrace(libc::PTRACE_SEIZE, tid)?;
        // From here on, dropping `stopped` detaches, on errors too.
        let stopped = StoppedThread { tid };
        ptrace(libc::PTRACE_INTERRUPT, tid)?;
        let mut status = 0;
        // SAFETY: waits for the stop of a thread this thread traces; the
        // status is written to a live int.
        if unsafe { libc::waitpid(tid, &mut status, libc::__WALL) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if !libc::WIFSTOPPED(status) {
            return Err(io::Error::other(format!(
                "thread {tid} did not stop (wait status {status:#x})"
            )));
        }
        Ok(stopped)
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        let _ = ptrace(libc::PTRACE_DETACH, self.tid);
    }
}
