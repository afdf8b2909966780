//! `netctl service ...`.

use std::io::Write;

use clap::Subcommand;

use netagent_api::{
    model::{short_id, Endpoint, EndpointMode, Protocol, PublishMode, PublishedPort, Service},
    routes,
    types::{CreateService, PortRef, ServiceInspect, UpdateService},
    ApiClient,
};

use crate::{
    error::CliError,
    output::{print_json, print_list, print_one, Format},
};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service on one or more overlay networks.
    Create {
        name: String,
        /// A network the service is on (repeat for several).
        #[arg(long = "network", required = true)]
        networks: Vec<String>,
        /// vip: one virtual IP per network, load-balanced; dnsrr: DNS round robin.
        #[arg(long, value_enum, default_value = "vip")]
        endpoint_mode: Mode,
        /// published=P,target=T[,protocol=tcp|udp][,mode=ingress|host] (repeatable).
        #[arg(long = "publish", short = 'p', value_parser = parse_publish)]
        ports: Vec<PublishedPort>,
    },
    /// List services.
    Ls,
    /// Show one service (JSON).
    Inspect { name: String },
    /// List a service's tasks (its endpoints).
    Ps { name: String },
    /// Remove a service (its VIPs are released).
    Rm { name: String },
    /// Add the service to networks or take it off them.
    Update {
        name: String,
        #[arg(long = "network-add")]
        add: Vec<String>,
        #[arg(long = "network-rm")]
        remove: Vec<String>,
        /// Publish a port: published=P,target=T[,protocol=tcp|udp][,mode=ingress|host].
        #[arg(long = "publish-add", value_parser = parse_publish)]
        add_ports: Vec<PublishedPort>,
        /// Stop publishing a port: PORT or PORT/udp.
        #[arg(long = "publish-rm", value_parser = parse_port_ref)]
        remove_ports: Vec<PortRef>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Vip,
    Dnsrr,
}

impl From<Mode> for EndpointMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Vip => EndpointMode::Vip,
            Mode::Dnsrr => EndpointMode::Dnsrr,
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("{0:?} is not key=value: write --publish published=8080,target=80[,protocol=tcp|udp][,mode=ingress|host]")]
    NotKeyValue(String),
    #[error("unknown --publish key {0:?}: use published, target, protocol or mode")]
    UnknownKey(String),
    #[error("--publish gives {0} twice: give it once")]
    Twice(String),
    #[error("--publish {key}={value:?} is not a port: give a number from 1 to 65535")]
    BadPort { key: &'static str, value: String },
    #[error("--publish protocol={0:?} is not known: use tcp or udp")]
    BadProtocol(String),
    #[error("--publish mode={0:?} is not known: use ingress or host")]
    BadMode(String),
    #[error("--publish needs {0}=PORT: write --publish published=8080,target=80")]
    Missing(&'static str),
}

fn port_value(key: &'static str, value: &str) -> Result<u16, PublishError> {
    value
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| PublishError::BadPort {
            key,
            value: value.to_owned(),
        })
}

/// Sets `slot` once; a second value for the same key is an error.
fn once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), PublishError> {
    if slot.replace(value).is_some() {
        return Err(PublishError::Twice(key.to_owned()));
    }
    Ok(())
}

/// Parses Docker's long `--publish` syntax:
/// `published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]`.
pub fn parse_publish(text: &str) -> Result<PublishedPort, PublishError> {
    let (mut published, mut target, mut protocol, mut mode) = (None, None, None, None);
    for part in text.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| PublishError::NotKeyValue(part.to_owned()))?;
        let (key, value) = (key.trim(), value.trim());
        match key {
            "published" => once(&mut published, key, port_value("published", value)?)?,
            "target" => once(&mut target, key, port_value("target", value)?)?,
            "protocol" => {
                let parsed = match value.to_ascii_lowercase().as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    _ => return Err(PublishError::BadProtocol(value.to_owned())),
                };
                once(&mut protocol, key, parsed)?
            }
            "mode" => {
                let parsed = match value.to_ascii_lowercase().as_str() {
                    "ingress" => PublishMode::Ingress,
                    "host" => PublishMode::Host,
                    _ => return Err(PublishError::BadMode(value.to_owned())),
                };
                once(&mut mode, key, parsed)?
            }
            other => return Err(PublishError::UnknownKey(other.to_owned())),
        }
    }
    Ok(PublishedPort {
        published: published.ok_or(PublishError::Missing("published"))?,
        target: target.ok_or(PublishError::Missing("target"))?,
        protocol: protocol.unwrap_or_default(),
        mode: mode.unwrap_or_default(),
    })
}

/// Parses `--publish-rm PORT[/tcp|/udp]`.
pub fn parse_port_ref(text: &str) -> Result<PortRef, PublishError> {
    let (port, protocol) = match text.split_once('/') {
        Some((port, protocol)) => (port, protocol),
        None => (text, "tcp"),
    };
    let protocol = match protocol.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(PublishError::BadProtocol(protocol.to_owned())),
    };
    Ok(PortRef {
        published: port_value("published", port)?,
        protocol,
    })
}

/// `*:8080->80/tcp` (ingress: every node) or `8080->80/tcp (host)`.
fn port_cell(port: &PublishedPort) -> String {
    match port.mode {
        PublishMode::Ingress => format!("*:{}->{}/{}", port.published, port.target, port.protocol),
        PublishMode::Host => format!(
            "{}->{}/{} (host)",
            port.published, port.target, port.protocol
        ),
    }
}

fn joined<T>(items: &[T], cell: impl Fn(&T) -> String) -> String {
    items.iter().map(cell).collect::<Vec<_>>().join(",")
}

pub async fn run(
    client: &ApiClient,
    command: ServiceCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        ServiceCommand::Create {
            name,
            networks,
            endpoint_mode,
            ports,
        } => {
            let request = CreateService {
                name,
                networks,
                endpoint_mode: endpoint_mode.into(),
                ports,
            };
            let service: Service = client.post(routes::SERVICES, &request).await?;
            print_one(out, format, &service, &service.id)
        }
        ServiceCommand::Ls => {
            let services: Vec<Service> = client.get(routes::SERVICES).await?;
            print_list(
                out,
                format,
                &services,
                ["ID", "NAME", "MODE", "NETWORKS", "VIPS", "PORTS"],
                |s| {
                    vec![
                        short_id(&s.id),
                        s.name.clone(),
                        s.endpoint_mode.to_string(),
                        s.networks.join(","),
                        joined(&s.vips, |v| format!("{}={}", v.network, v.addr)),
                        joined(&s.ports, port_cell),
                    ]
                },
            )
        }
        ServiceCommand::Inspect { name } => {
            let inspect: ServiceInspect = client.get(&routes::fill(routes::SERVICE, &name)).await?;
            // Printed through a JSON value, whose keys are sorted: the
            // document's bytes stay what scripts have always read.
            print_json(out, &serde_json::to_value(&inspect)?)
        }
        ServiceCommand::Ps { name } => {
            let tasks: Vec<Endpoint> = client
                .get(&routes::fill(routes::SERVICE_TASKS, &name))
                .await?;
            print_list(
                out,
                format,
                &tasks,
                ["ID", "NAME", "NODE", "NETWORK", "IP", "HEALTH"],
                |ep| {
                    vec![
                        short_id(&ep.id),
                        ep.name.clone(),
                        ep.node.clone(),
                        ep.network.clone(),
                        ep.ip.to_string(),
                        ep.health.to_string(),
                    ]
                },
            )
        }
        ServiceCommand::Rm { name } => {
            let service: Service = client.delete(&routes::fill(routes::SERVICE, &name)).await?;
            print_one(out, format, &service, &service.name)
        }
        ServiceCommand::Update {
            name,
            add,
            remove,
            add_ports,
            remove_ports,
        } => {
            let request = UpdateService {
                add_networks: add,
                remove_networks: remove,
                add_ports,
                remove_ports,
            };
            let service: Service = client
                .post(&routes::fill(routes::SERVICE_UPDATE, &name), &request)
                .await?;
            print_one(out, format, &service, &service.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_rm_takes_a_port_and_an_optional_protocol() {
        let port = |published, protocol| PortRef {
            published,
            protocol,
        };
        assert_eq!(parse_port_ref("8080"), Ok(port(8080, Protocol::Tcp)));
        assert_eq!(parse_port_ref("53/UDP"), Ok(port(53, Protocol::Udp)));
        assert!(parse_port_ref("0").is_err());
        assert!(parse_port_ref("80/sctp").is_err());
    }

    #[test]
    fn publish_long_syntax() {
        assert_eq!(
            parse_publish("published=8080,target=80").unwrap(),
            PublishedPort {
                published: 8080,
                target: 80,
                protocol: Protocol::Tcp,
                mode: PublishMode::Ingress,
            }
        );
        assert_eq!(
            parse_publish("mode=host, protocol=UDP,target=53,published=5353").unwrap(),
            PublishedPort {
                published: 5353,
                target: 53,
                protocol: Protocol::Udp,
                mode: PublishMode::Host,
            }
        );
    }

    #[test]
    fn publish_errors_say_what_to_write() {
        let cases = [
            ("8080:80", "is not key=value"),
            ("published=8080", "needs target=PORT"),
            ("target=80", "needs published=PORT"),
            ("published=0,target=80", "is not a port"),
            ("published=70000,target=80", "is not a port"),
            ("published=x,target=80", "is not a port"),
            ("published=1,target=2,protocol=sctp", "use tcp or udp"),
            ("published=1,target=2,mode=global", "use ingress or host"),
            ("published=1,target=2,color=red", "unknown --publish key"),
            ("published=1,published=2,target=3", "published twice"),
        ];
        for (text, expected) in cases {
            let error = parse_publish(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains('\n'));
        }
    }

    #[test]
    fn port_cells() {
        let mut port = parse_publish("published=8080,target=80").unwrap();
        assert_eq!(port_cell(&port), "*:8080->80/tcp");
        port.mode = PublishMode::Host;
        port.protocol = Protocol::Udp;
        assert_eq!(port_cell(&port), "8080->80/udp (host)");
    }
}
