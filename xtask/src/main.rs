//! `cargo xtask`: the project's own commands.
//!
//! `setup` installs what a fresh machine lacks; `test` runs every test and
//! checks nothing was left behind; `demo` shows a cluster working; `lab`
//! builds a lab for people to explore; `bench` measures against anchors.

mod bench;
mod demo;
mod lab;
mod modules;
mod programs;
mod setup;
mod test;
mod workspace;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Xtask {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what this machine lacks: Debian packages, nightly rust-src,
    /// bpf-linker, a mounted bpffs. Idempotent.
    Setup,
    /// Run every test (unit and namespace) and fail if anything is left behind.
    Test {
        /// Extra arguments for `cargo test` (a test name filter, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bring up a small cluster, show it working, tear it down.
    Demo,
    /// A lab for people: `lab up --nodes N`, `lab down`.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
    /// List every external program the sources run, with its Debian
    /// package; fail when setup would not install one.
    Programs,
    /// Check that the module graph of every crate has no cycle among
    /// siblings; print each cycle with a `file:line` per edge.
    Modules {
        /// Also print the edges among the top-level modules of each crate.
        #[arg(long)]
        graph: bool,
    },
    /// Run benchmark NAME against its anchors; writes target/bench/NAME.json.
    Bench {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Xtask::parse().command {
        Command::Setup => setup::run().map(setup::Setup::keep),
        Command::Test { args } => test::run(&args),
        Command::Demo => demo::run(),
        Command::Lab { command } => lab::run(command),
        Command::Programs => programs::run(&setup::package_names()),
        Command::Modules { graph } => modules::run(graph),
        Command::Bench { name, args } => bench::run(&name, &args),
    }
}
