//! `cargo xtask bench NAME`: benchmarks, each measuring netagent and its
//! anchor side by side in one lab and one run, reported as ratios.

mod converge;
mod dns;
mod ingress;
mod kube_proxy;
mod lb;
mod overlay;
mod report;
mod tcp_load;

use anyhow::{bail, Result};

use crate::{setup, workspace};

const BENCHMARKS: &[&str] = &["overlay", "converge", "dns", "lb", "ingress"];

pub fn run(name: &str, args: &[String]) -> Result<()> {
    if !BENCHMARKS.contains(&name) {
        bail!(
            "unknown benchmark {name:?}: pick one of {}",
            BENCHMARKS.join(", ")
        );
    }
    let _setup = setup::run()?;
    workspace::require_root("cargo xtask bench")?;
    // Benchmarks measure the release build.
    workspace::cargo(&[
        "build",
        "--release",
        "-p",
        "netagent",
        "-p",
        "netctl",
        "--bins",
    ])?;
    std::env::set_var("NETAGENT_BIN_DIR", workspace::target_dir().join("release"));
    match name {
        "overlay" => overlay::run(args),
        "dns" => dns::run(args),
        "ingress" => ingress::run(args),
        "lb" => lb::run(args),
        _ => converge::run(args),
    }
}
