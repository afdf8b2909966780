//! `cargo xtask bench NAME`: benchmarks, each measuring netagent and its
//! anchor side by side in one lab and one run.

use anyhow::{bail, Result};

/// The benchmarks that exist so far.
const BENCHMARKS: &[&str] = &[];

pub fn run(name: &str, _args: &[String]) -> Result<()> {
    if BENCHMARKS.is_empty() {
        bail!("unknown benchmark {name:?}: none exist yet (they arrive with the overlay, DNS and load-balancing work)");
    }
    bail!(
        "unknown benchmark {name:?}: pick one of {}",
        BENCHMARKS.join(", ")
    )
}
