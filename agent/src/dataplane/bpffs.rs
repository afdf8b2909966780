//! The bpf filesystem the agent pins its maps on.
//!
//! A host without systemd as PID 1, a minimal VM or a container host may have
//! no bpffs mounted at `/sys/fs/bpf`. As Cilium's agent does, the agent then
//! mounts one itself, on the empty directory its `--bpffs` path would live
//! in, and never unmounts it: pins must outlive the agent, so that the data
//! plane keeps its state across restarts.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error(
        "{path} is not on a bpf filesystem and the agent cannot mount one there \
         ({reason}): run `mount -t bpf bpf {mount_point}` or pass --bpffs with a \
         directory on a bpf filesystem"
    )]
    CannotMount {
        path: PathBuf,
        mount_point: PathBuf,
        reason: String,
    },
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// The deepest ancestor of `path` (or `path` itself) that exists.
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|ancestor| ancestor.exists())
        .unwrap_or_else(|| Path::new("/"))
        .to_owned()
}

/// Makes sure `bpffs` can be created on a bpf filesystem: when its deepest
/// existing ancestor is on one, nothing to do; when that ancestor is an
/// empty directory on another filesystem (`/sys/fs/bpf` with nothing
/// mounted), a bpffs is mounted on it. A directory that holds anything is
/// never mounted over: that would hide its contents. Returns the mount
/// point when this call mounted one.
pub fn ensure_mounted(bpffs: &Path) -> Result<Option<PathBuf>, BpffsError> {
    let mount_point = existing_ancestor(bpffs);
    if is_bpffs(&mount_point) {
        return Ok(None);
    }
    let refuse = |reason: String| BpffsError::CannotMount {
        path: bpffs.to_owned(),
        mount_point: mount_point.clone(),
        reason,
    };
    // Two agents starting together on a bare host must not stack two
    // mounts (the first one's pins would vanish under the second): hold a
    // lock on the directory and look again. A second agent that waited
    // finds the mount by path.
    let directory = std::fs::File::open(&mount_point)
        .map_err(|error| refuse(format!("cannot open {}: {error}", mount_point.display())))?;
    let _lock = nix::fcntl::Flock::lock(directory, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| refuse(format!("cannot lock it: {}", errno.desc())))?;
    if is_bpffs(&mount_point) {
        return Ok(None);
    }
    let empty = std::fs::read_dir(&mount_point)
        .map_err(|error| refuse(format!("cannot read {}: {error}", mount_point.display())))?
        .next()
        .is_none();
    if !empty {
        return Err(refuse(format!(
            "{} is not empty, and a mount would hide what it holds",
            mount_point.display()
        )));
    }
    mount(
        Some("bpf"),
        &mount_point,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|errno| refuse(errno.desc().to_lowercase()))?;
    tracing::info!(
        mount_point = %mount_point.display(),
        "no bpf filesystem was mounted: mounted one (it stays after the agent stops)"
    );
    Ok(Some(mount_point))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_point_is_the_deepest_existing_ancestor() {
        let dir = std::env::temp_dir();
        let wanted = dir.join("netagent-bpffs-test/a/b");
        assert_eq!(existing_ancestor(&wanted), dir);
        assert_eq!(existing_ancestor(&dir), dir);
    }

    #[test]
    fn a_directory_that_holds_files_is_never_mounted_over() {
        // The crate's own directory is not empty and not a bpffs.
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let error = ensure_mounted(&here.join("pins")).expect_err("must refuse");
        let text = error.to_string();
        assert!(text.contains("is not empty"), "{text}");
        assert!(text.contains("mount -t bpf bpf"), "{text}");
    }
}
