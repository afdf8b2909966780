//! `netctl`: the command line of netagent.

use clap::Parser;
use netagent::cli::{self, Netctl};

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
