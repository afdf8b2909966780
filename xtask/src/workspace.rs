//! Running cargo on this workspace from xtask.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `cargo args...` in the workspace root, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds netagent and netctl (debug profile) and returns their directory.
pub fn build_binaries() -> Result<PathBuf> {
    cargo(&["build", "-p", "netagent", "--bins"])?;
    Ok(root().join("target").join("debug"))
}

/// Fails unless running as root.
pub fn require_root(what: &str) -> Result<()> {
    if !netlab::is_root() {
        bail!("{what} builds network namespaces and needs root: run it with sudo");
    }
    Ok(())
}
