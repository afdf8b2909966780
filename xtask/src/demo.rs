//! `cargo xtask demo`: a three-node cluster in namespaces, shown working.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use netlab::{Lab, LabSpec};

use crate::{setup, workspace};

pub fn run() -> Result<()> {
    let _setup = setup::run()?;
    workspace::require_root("cargo xtask demo")?;
    let bin_dir = workspace::build_binaries()?;
    std::env::set_var("NETAGENT_BIN_DIR", &bin_dir);

    step("building a lab: an underlay switch, three nodes, an external client, an upstream DNS");
    let mut lab = Lab::up(LabSpec::nodes(3)).context("building the lab")?;
    let shown = show(&mut lab);
    let torn = lab.teardown();
    shown?;
    torn.context("tearing the lab down")?;
    step("lab torn down: no namespace, process, pin or file left");
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn print_output(output: &std::process::Output) {
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
}

fn show(lab: &mut Lab) -> Result<()> {
    step("starting netagent in every node namespace");
    lab.start_agents()?;
    let names: Vec<String> = lab.nodes().iter().map(|node| node.name.clone()).collect();
    for name in &names {
        println!("$ {}", lab.agent_command(name)?);
    }
    for name in &names {
        step(&format!("netctl status on {name}"));
        print_output(&lab.netctl(name, &["status"])?);
    }

    step("forming a cluster: n1 inits, n2 and n3 join with the worker token");
    lab.form_cluster()?;
    let count = names.len();
    netlab::wait_until(Duration::from_secs(10), || {
        let nodes = lab.netctl_json("n1", &["node", "ls"]).ok()?;
        let ready = nodes
            .as_array()?
            .iter()
            .filter(|n| n["status"] == "ready")
            .count();
        (ready == count).then_some(())
    })
    .map_err(|_| anyhow::anyhow!("not every node became ready"))?;
    print_output(&lab.netctl("n1", &["node", "ls"])?);

    step("creating overlay network appnet (VXLAN), service web (a VIP, port 8080 published on every node), and a web task on every node");
    print_output(&lab.netctl(
        "n1",
        &["overlay", "create", "appnet", "--subnet", "10.10.0.0/24"],
    )?);
    print_output(&lab.netctl(
        "n1",
        &[
            "service",
            "create",
            "web",
            "--network",
            "appnet",
            "--publish",
            "published=8080,target=80",
        ],
    )?);
    let mut containers = Vec::new();
    for (i, node) in names.iter().enumerate() {
        let name = format!("web{}", i + 1);
        let task = format!("web.{}", i + 1);
        let (container, endpoint) = lab.attach_container_with(
            node,
            &name,
            "appnet",
            &["--service", "web", "--name", &task],
        )?;
        let ip = endpoint["ip"].as_str().unwrap_or_default().to_owned();
        containers.push((node.clone(), container, ip));
    }
    netlab::wait_until(Duration::from_secs(5), || {
        let endpoints = lab.netctl_json("n1", &["endpoint", "ls"]).ok()?;
        (endpoints.as_array()?.len() == count).then_some(())
    })
    .map_err(|_| anyhow::anyhow!("n1 does not see every endpoint"))?;
    print_output(&lab.netctl("n1", &["endpoint", "ls"])?);

    step("every container pings every other, across nodes, over the overlay");
    for (from_node, from, _) in &containers {
        for (to_node, to, ip) in &containers {
            if from.name == to.name {
                continue;
            }
            let reached = netlab::wait_until(Duration::from_secs(5), || {
                let out = lab
                    .exec(&from.netns, &["ping", "-c", "1", "-W", "1", ip])
                    .ok()?;
                out.status.success().then_some(())
            });
            match reached {
                Ok(()) => println!(
                    "{} ({from_node}) -> {} ({to_node}) {ip}: ok",
                    from.name, to.name
                ),
                Err(_) => bail!(
                    "{} on {from_node} cannot reach {} on {to_node} ({ip})",
                    from.name,
                    to.name
                ),
            }
        }
    }

    step("service discovery: web1 (on n1) asks its embedded DNS at 127.0.0.11");
    print_output(&lab.netctl("n1", &["service", "ps", "web"])?);
    let (_, asker, _) = &containers[0];
    let last_task = format!("web.{count}");
    for query in [
        vec!["web"],
        vec!["tasks.web"],
        vec![last_task.as_str()],
        vec!["example.org"],
    ] {
        let mut args = vec!["dig", "+short", "+time=2", "+tries=1"];
        args.extend(query.iter().copied());
        let answer = netlab::wait_until(Duration::from_secs(5), || {
            let out = lab.exec(&asker.netns, &args).ok()?;
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (!text.is_empty()).then_some(text)
        })
        .map_err(|_| anyhow::anyhow!("no answer for {}", query.join(" ")))?;
        println!("$ dig +short {}\n{answer}", query.join(" "));
    }
    let getent = lab.exec(&asker.netns, &["getent", "hosts", &last_task])?;
    println!("$ getent hosts {last_task}");
    print_output(&getent);

    step("load balancing: a client on n1 opens 12 connections to web's VIP (eBPF, Maglev)");
    for (_, container, _) in &containers {
        // A one-line HTTP server per task that says which task answered.
        let reply = format!("HTTP/1.0 200 OK\\r\\n\\r\\n{}\\n", container.name);
        let server = format!(
            "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 80)); s.listen(64)\nwhile True:\n c,_=s.accept(); c.recv(1024); c.sendall(b'{reply}'); c.close()\n"
        );
        lab.spawn_in(&container.netns, "python3", &["-c".to_owned(), server])?;
    }
    let (client, _) = lab.attach_container("n1", "client", "appnet")?;
    let mut answers: std::collections::BTreeMap<String, usize> = Default::default();
    for _ in 0..12 {
        let answer = netlab::wait_until(Duration::from_secs(5), || {
            let out = lab
                .exec(
                    &client.netns,
                    &["curl", "-s", "--max-time", "2", "http://web/"],
                )
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (!text.is_empty()).then_some(text)
        })
        .map_err(|_| anyhow::anyhow!("curl http://web/ got no answer"))?;
        *answers.entry(answer).or_default() += 1;
    }
    for (task, count) in &answers {
        println!("{task}: {count} of 12 connections");
    }
    print_output(&lab.netctl("n1", &["service", "inspect", "web"])?);

    step("the routing mesh: the external client curls port 8080 of every node");
    let ext = lab.external_netns();
    for name in &names {
        let addr = lab.node(name)?.addr.to_string();
        let url = format!("http://{addr}:8080/");
        let mut answers = Vec::new();
        for _ in 0..4 {
            let answer = netlab::wait_until(Duration::from_secs(5), || {
                let out = lab
                    .exec(&ext, &["curl", "-s", "--max-time", "2", &url])
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                (!text.is_empty()).then_some(text)
            })
            .map_err(|_| anyhow::anyhow!("curl {url} from the external client got no answer"))?;
            answers.push(answer);
        }
        println!("$ curl {url}  (4 times): {}", answers.join(", "));
    }

    let target = lab.node("n1")?.addr.to_string();
    step(&format!(
        "the external client pings n1 ({target}); n1's eBPF counters see every packet"
    ));
    let before = rx_packets(lab, "n1")?;
    let ping = lab.exec(&ext, &["ping", "-c", "5", "-i", "0.2", &target])?;
    print_output(&ping);
    if !ping.status.success() {
        bail!("ping from the external client failed");
    }
    let after = netlab::wait_until(Duration::from_secs(5), || {
        let now = rx_packets(lab, "n1").ok()?;
        (now >= before + 5).then_some(now)
    })
    .map_err(|_| anyhow::anyhow!("n1's counters did not see the pings"))?;
    println!("n1 eth0 rx_packets: {before} -> {after}");
    Ok(())
}

fn rx_packets(lab: &Lab, node: &str) -> Result<u64> {
    let status = lab.netctl_json(node, &["status"])?;
    status["interfaces"]
        .as_array()
        .and_then(|ifaces| ifaces.iter().find(|i| i["ifname"] == "eth0"))
        .and_then(|eth0| eth0["rx_packets"].as_u64())
        .context("no eth0 counters in netctl status")
}
