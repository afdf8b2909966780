//! `cargo xtask test`: formatting, lints, the module graph (no cycle), unit
//! tests and the namespace tests, then a check that nothing was left behind.

use anyhow::{bail, Result};

use crate::{modules, setup, workspace};

pub fn run(args: &[String]) -> Result<()> {
    let _setup = setup::run()?;
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
    modules::run(false)?;
    workspace::build_binaries()?;

    // The namespace tests must not skip themselves for lack of root here.
    std::env::set_var("NETLAB_REQUIRED", "1");
    let mut test_args = vec!["test", "--lib", "--bins", "--tests"];
    test_args.extend(args.iter().map(String::as_str));
    let tested = workspace::cargo_tests(&test_args);

    let after = netlab::leftovers();
    if !after.is_empty() {
        netlab::sweep(false);
        bail!("the tests left things behind (now swept):\n{after}");
    }
    let tally = tested?;
    // One closing line for the whole run: cargo's own end with the last
    // (often empty) test binary.
    println!(
        "test: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    if tally.failed > 0 || !tally.success {
        bail!("tests failed");
    }
    println!("test: nothing was left behind");
    Ok(())
}
