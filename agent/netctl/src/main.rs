//! `netctl`: the command line of netagent, over its local API.
//!
//! Each subcommand fetches documents from the agent and prints them, as a
//! table for people or as JSON (`--format json`) for scripts. It links only
//! `netagent-api`, never the agent itself.

mod cli;
mod cluster;
mod endpoint;
mod error;
mod node;
mod output;
mod overlay;
mod pcap;
mod service;
mod status;
mod table;
mod trace;

use clap::Parser;
use cli::Netctl;

fn main() -> std::process::ExitCode {
    let args = Netctl::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("netctl: cannot start the async runtime: {error} (out of memory or threads?): try again");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(cli::run(args, &mut stdout)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("netctl: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
