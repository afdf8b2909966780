//! `cargo xtask lab up|down`: a lab that stays up for people to explore.

use anyhow::{Context, Result};
use clap::Subcommand;
use netlab::{Lab, LabSpec};

use crate::{setup, workspace};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab with N nodes, each running netagent, and leave it up.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Tear down every lab `lab up` built (and any a crashed run left).
    Down,
}

pub fn run(command: LabCommand) -> Result<()> {
    workspace::require_root("cargo xtask lab")?;
    match command {
        LabCommand::Up { nodes } => up(nodes),
        LabCommand::Down => down(),
    }
}

fn up(nodes: usize) -> Result<()> {
    // The lab stays up, and with it the bpf filesystem its agents pin into.
    setup::run()?.keep();
    let bin_dir = workspace::build_binaries()?;
    std::env::set_var("NETAGENT_BIN_DIR", &bin_dir);
    let mut lab = Lab::up(LabSpec {
        persistent: true,
        ..LabSpec::nodes(nodes)
    })
    .context("building the lab")?;
    if let Err(error) = lab.start_agents() {
        let _ = lab.teardown();
        return Err(error).context("starting the agents");
    }
    println!("lab {} is up:", lab.prefix());
    for node in lab.nodes() {
        let agent = node.agent().context("agent not started")?;
        println!(
            "  {}  netns {:<12} addr {:<14} netctl --host {}",
            node.name,
            node.netns,
            node.addr,
            agent.host()
        );
    }
    println!("  external client: netns {}", lab.external_netns());
    println!("  upstream DNS:    {} (dnsmasq)", lab.upstream_dns());
    let first = &lab.nodes()[0];
    if let Some(agent) = first.agent() {
        println!("\ntry:");
        println!(
            "  {}/netctl --host {} status",
            bin_dir.display(),
            agent.host()
        );
        println!(
            "  ip netns exec {} ping -c1 {}",
            lab.external_netns(),
            first.addr
        );
        println!("  less {}", agent.log.display());
    }
    println!("\ntear it down with: cargo xtask lab down");
    Ok(())
}

fn down() -> Result<()> {
    let report = netlab::sweep(true);
    for prefix in &report.labs {
        println!("removed lab {prefix}");
    }
    if report.labs.is_empty() {
        println!("no lab to remove");
    }
    if !report.errors.is_empty() {
        anyhow::bail!(
            "some of it could not be removed: {}",
            report.errors.join("; ")
        );
    }
    Ok(())
}
