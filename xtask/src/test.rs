//! `cargo xtask test`: formatting, lints, unit tests and the namespace tests,
//! then a check that nothing was left behind.

use anyhow::{bail, Result};

use crate::{setup, workspace};

pub fn run(args: &[String]) -> Result<()> {
    setup::run()?;
    workspace::require_root("cargo xtask test")?;
    // Labs of earlier runs that were killed go first, so that what remains
    // afterwards can only be this run's.
    let swept = netlab::sweep(false);
    if !swept.labs.is_empty() {
        println!(
            "test: swept labs left by earlier runs: {}",
            swept.labs.join(", ")
        );
    }
    let before = netlab::leftovers();
    if !before.is_empty() {
        bail!("the machine is not clean before the tests:\n{before}");
    }

    workspace::cargo(&["fmt", "--all", "--check"])?;
    workspace::cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    workspace::build_binaries()?;

    // The namespace tests must not skip themselves for lack of root here.
    std::env::set_var("NETLAB_REQUIRED", "1");
    let mut test_args = vec!["test"];
    test_args.extend(args.iter().map(String::as_str));
    let tested = workspace::cargo(&test_args);

    let after = netlab::leftovers();
    if !after.is_empty() {
        netlab::sweep(false);
        bail!("the tests left things behind (now swept):\n{after}");
    }
    tested?;
    println!("test: all passed and nothing was left behind");
    Ok(())
}
