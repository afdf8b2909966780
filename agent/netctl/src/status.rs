//! `netctl status`.

use std::io::Write;

use netagent_api::{routes, types::Status, ApiClient};

use crate::{
    error::CliError,
    output::{print_json, Format},
    table::Table,
};

pub async fn run(client: &ApiClient, format: Format, out: &mut dyn Write) -> Result<(), CliError> {
    let status: Status = client.get(routes::STATUS).await?;
    match format {
        Format::Json => print_json(out, &status),
        Format::Table => write_table(&status, out),
    }
}

fn write_table(status: &Status, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(out, "Node:            {}", status.node_name)?;
    writeln!(out, "Version:         {}", status.version)?;
    writeln!(
        out,
        "Uptime:          {}",
        human_duration(status.uptime_secs)
    )?;
    writeln!(out, "Advertise addr:  {}", status.advertise_addr)?;
    writeln!(out, "BPF pins:        {}", status.bpffs)?;
    match (&status.cluster_id, status.role) {
        (Some(id), Some(role)) => writeln!(out, "Cluster:         {id} ({role})")?,
        _ => writeln!(out, "Cluster:         none (netctl cluster init | join)")?,
    }
    if let Some(rejected) = status.gossip_rejected_packets {
        writeln!(out, "Gossip rejected: {rejected} packets")?;
    }
    match &status.trace {
        Some(trace) => writeln!(
            out,
            "Trace:           {} tracer(s) ({} for every packet), {} events, {} lost (ring full)",
            trace.tracers, trace.all_packets, trace.emitted, trace.lost
        )?,
        None => writeln!(out, "Trace:           unavailable (see the agent's log)")?,
    }
    writeln!(out)?;
    writeln!(out, "Datapath programs:")?;
    let mut programs = Table::new(["PROGRAM", "KIND", "INTERFACE", "DIRECTION", "PROG ID"]);
    for p in &status.programs {
        programs.row([
            p.name.clone(),
            p.kind.clone(),
            p.ifname.clone(),
            p.direction.to_string(),
            p.prog_id.to_string(),
        ]);
    }
    programs.write(out)?;
    writeln!(out)?;
    writeln!(out, "Interface counters:")?;
    let mut counters = Table::new([
        "INTERFACE",
        "RX PACKETS",
        "RX BYTES",
        "TX PACKETS",
        "TX BYTES",
    ]);
    for c in &status.interfaces {
        counters.row([
            c.ifname.clone(),
            c.rx_packets.to_string(),
            c.rx_bytes.to_string(),
            c.tx_packets.to_string(),
            c.tx_bytes.to_string(),
        ]);
    }
    counters.write(out)?;
    Ok(())
}

/// `3d4h`, `2h5m`, `4m10s`, `12s`: the two largest units.
fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(12), "12s");
        assert_eq!(human_duration(250), "4m10s");
        assert_eq!(human_duration(7_500), "2h5m");
        assert_eq!(human_duration(273_600), "3d4h");
    }
}
