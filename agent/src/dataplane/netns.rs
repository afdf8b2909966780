//! Network namespace switching, in one place.
//!
//! Rules: a tokio worker thread never calls `setns` (its namespace would leak
//! into every task scheduled on it later), and nothing forks or execs. Work
//! that must run inside a namespace runs on a dedicated, short-lived std
//! thread that enters the namespace, does one thing (typically: open a
//! netlink socket) and exits; the result (an fd) is handed back to async code.
//! A socket stays bound to the namespace it was created in, so the async side
//! then works through it from any thread.

// The kernel boundary: descriptors of sockets opened on a thread inside a namespace.
#![allow(unsafe_code)]

use std::{
    fs::File,
    io,
    os::fd::{AsFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
};

/// Where named namespaces live (as with `ip netns`).
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {}: {cause}", path.display())]
    Open { path: PathBuf, cause: io::Error },
    #[error("cannot enter network namespace {}: {cause}", path.display())]
    Enter { path: PathBuf, cause: io::Error },
    #[error("cannot create network namespace {}: {cause}", path.display())]
    Create { path: PathBuf, cause: io::Error },
    #[error("cannot delete network namespace {}: {cause}", path.display())]
    Delete { path: PathBuf, cause: io::Error },
    #[error("a namespace helper thread failed ({0}): report this bug with the agent's log (`journalctl -u netagent`)")]
    Thread(String),
    #[error("{0}")]
    Io(io::Error),
}

impl From<io::Error> for NetnsError {
    fn from(cause: io::Error) -> Self {
        Self::Io(cause)
    }
}

/// The path of named namespace `name`.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Opens a namespace file (`/run/netns/x`, `/proc/PID/ns/net`).
pub fn open(path: &Path) -> Result<OwnedFd, NetnsError> {
    File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            cause: source,
        })
}

/// Whether `path` is a live namespace (a mounted nsfs file), not a stale
/// plain file left by a crash between "create the file" and "mount on it".
pub fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Runs `work` on a dedicated std thread that first enters namespace `netns`
/// (`None`: stays in the agent's own namespace). The thread exits afterwards,
/// so the namespace switch dies with it; the async caller just awaits.
pub async fn run_in<T, F>(netns: Option<&Path>, work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetnsError> + Send + 'static,
{
    // Open the file here so that a bad path fails before any thread exists.
    let target = match netns {
        Some(path) => Some((path.to_owned(), open(path)?)),
        None => None,
    };
    on_thread(move || {
        if let Some((path, fd)) = target {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|errno| NetnsError::Enter {
                path,
                cause: errno.into(),
            })?;
        }
        work()
    })
    .await
}

/// Runs `work` on a fresh std thread and awaits its result without blocking
/// the executor.
async fn on_thread<T, F>(work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetnsError> + Send + 'static,
{
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            // The receiver may be gone (caller cancelled): nothing to do then.
            let _ = tx.send(work());
        })
        .map_err(|error| NetnsError::Thread(error.to_string()))?;
    rx.await
        .map_err(|_| NetnsError::Thread("the thread ended without an answer".into()))?
}

/// Opens a `NETLINK_ROUTE` socket inside `netns` and returns it as an fd.
pub async fn route_socket_in(netns: Option<&Path>) -> Result<OwnedFd, NetnsError> {
    run_in(netns, || {
        let socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        // SAFETY: into_raw_fd hands over sole ownership of the fd.
        Ok(unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(socket)) })
    })
    .await
}

/// Creates the named namespace `/run/netns/<name>` without forking: a
/// dedicated thread unshares its network namespace and bind-mounts
/// `/proc/thread-self/ns/net` onto the file, which keeps the namespace alive
/// after the thread exits.
pub async fn create_named(name: &str) -> Result<PathBuf, NetnsError> {
    let path = named_path(name);
    let target = path.clone();
    on_thread(move || {
        let fail = |source: io::Error| NetnsError::Create {
            path: target.clone(),
            cause: source,
        };
        std::fs::create_dir_all(NETNS_RUN_DIR).map_err(fail)?;
        make_run_dir_shared();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(fail)?;
        let result = unshare(CloneFlags::CLONE_NEWNET)
            .and_then(|()| {
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
            })
            .map_err(io::Error::from);
        if let Err(source) = result {
            // No namespace without its mount: remove the empty file.
            let _ = std::fs::remove_file(&target);
            return Err(fail(source));
        }
        Ok(())
    })
    .await?;
    Ok(path)
}

/// As `ip netns add` does: make /run/netns a shared mount point so that an
/// unmount propagates to other mount namespaces and frees the namespace
/// sooner. Best effort; failures only cost that propagation.
fn make_run_dir_shared() {
    let shared = || {
        mount(
            None::<&str>,
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    if shared().is_ok() {
        return;
    }
    // EINVAL: not a mount point yet; make it one, then retry.
    let bound = mount(
        Some(NETNS_RUN_DIR),
        NETNS_RUN_DIR,
        Some("none"),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    );
    if let Err(error) = bound.and_then(|()| shared()) {
        tracing::debug!(%error, "could not make {NETNS_RUN_DIR} a shared mount point");
    }
}

/// Deletes named namespace `name` (lazy unmount, then unlink). A namespace
/// that does not exist is not an error.
pub fn delete_named(name: &str) -> Result<(), NetnsError> {
    let path = named_path(name);
    if let Err(errno) = umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: not mounted (stale file); ENOENT: already gone.
        if errno != nix::errno::Errno::EINVAL && errno != nix::errno::Errno::ENOENT {
            return Err(NetnsError::Delete {
                path,
                cause: errno.into(),
            });
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Delete {
            path,
            cause: source,
        }),
    }
}

/// Names of the named namespaces under /run/netns.
pub fn list_named() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect()
}
