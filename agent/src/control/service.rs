//! Pure validation rules for services. No I/O: the manager reads the store,
//! calls these, and commits under a transaction (see `manager::services`).
//!
//! - a service name is a DNS label (it is resolved by the embedded DNS):
//!   1 to 63 letters, digits or '-', not starting or ending with '-';
//!   names are unique case-insensitively (DNS is);
//! - a service is on at least one network, each named once;
//! - published ports are unique across the cluster per protocol, and a
//!   `dnsrr` service cannot publish in ingress mode (it has no VIP for the
//!   routing mesh to balance on), as Docker refuses it;
//! - a service publishes on its first network, which must not be
//!   `--internal` (no way in from outside the cluster).

use netagent_api::types::{CreateService, PortRef, UpdateService};

use super::error::ControlError;
use crate::model::{EndpointMode, Network, PublishMode, PublishedPort, Service};

/// The longest DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// Whether `name` is one DNS label: 1–63 of `[A-Za-z0-9-]`, no leading or
/// trailing '-'.
pub fn check_name(name: &str) -> Result<(), ControlError> {
    let ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "service name {name:?} is not a valid DNS label: use 1 to {MAX_NAME_LEN} letters, digits or '-', not starting or ending with '-'"
        )))
    }
}

/// Whether `service` is the one `name_or_id` designates.
pub fn matches(service: &Service, name_or_id: &str) -> bool {
    service.name.eq_ignore_ascii_case(name_or_id) || service.id == name_or_id
}

fn check_networks_listed(networks: &[String]) -> Result<(), ControlError> {
    if networks.is_empty() {
        return Err(ControlError::Invalid(
            "a service needs at least one network: give --network NET (see `netctl overlay ls`)"
                .into(),
        ));
    }
    if let Some(twice) = networks
        .iter()
        .enumerate()
        .find_map(|(i, n)| networks[i + 1..].contains(n).then_some(n))
    {
        return Err(ControlError::Invalid(format!(
            "network {twice} is given twice: give each --network once"
        )));
    }
    Ok(())
}

/// The port as users write it: `8080/tcp`.
fn port_label(port: &PublishedPort) -> String {
    format!("{}/{}", port.published, port.protocol)
}

fn check_ports(mode: EndpointMode, ports: &[PublishedPort]) -> Result<(), ControlError> {
    for (i, port) in ports.iter().enumerate() {
        if port.published == 0 || port.target == 0 {
            return Err(ControlError::Invalid(format!(
                "published={},target={} is not valid: ports go from 1 to 65535",
                port.published, port.target
            )));
        }
        if mode == EndpointMode::Dnsrr && port.mode == PublishMode::Ingress {
            return Err(ControlError::Invalid(
                "dnsrr services cannot publish in ingress mode: use mode=host".into(),
            ));
        }
        let twice = ports[i + 1..]
            .iter()
            .any(|p| p.published == port.published && p.protocol == port.protocol);
        if twice {
            return Err(ControlError::Invalid(format!(
                "published port {} is given twice: publish each port once",
                port_label(port)
            )));
        }
    }
    Ok(())
}

/// Published ports are reached through the service's first network:
/// refused when that network is internal (it has no way in).
pub fn check_publishing_network(
    service: &str,
    ports: &[PublishedPort],
    first_network: Option<&Network>,
) -> Result<(), ControlError> {
    match (ports.first(), first_network) {
        (Some(port), Some(network)) if network.internal => Err(ControlError::Invalid(format!(
            "service {service} cannot publish {}: its network {} is internal (`--internal`, no way in from outside); put a non-internal network first",
            port_label(port),
            network.name
        ))),
        _ => Ok(()),
    }
}

/// Checks a create request on its own (no store needed).
pub fn check_request(request: &CreateService) -> Result<(), ControlError> {
    check_name(&request.name)?;
    check_networks_listed(&request.networks)?;
    check_ports(request.endpoint_mode, &request.ports)
}

/// Checks a create request against the services that exist: the name is
/// free and no published port is taken.
pub fn check_against(request: &CreateService, existing: &[Service]) -> Result<(), ControlError> {
    if let Some(other) = existing
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(&request.name))
    {
        return Err(ControlError::Conflict(format!(
            "service {} already exists: choose another name or remove it first (`netctl service rm {}`)",
            other.name, other.name
        )));
    }
    check_ports_free(existing, &request.ports, None)?;
    Ok(())
}

/// The networks an update adds and removes, checked against the service.
#[derive(Debug, PartialEq, Eq)]
pub struct NetworkChange {
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

/// Validates `request` for `service`: each added network is new to it, each
/// removed one is on it, and at least one network is left.
pub fn plan_update(
    service: &Service,
    request: &UpdateService,
) -> Result<NetworkChange, ControlError> {
    let name = &service.name;
    let mut both = request.add_networks.clone();
    both.extend(request.remove_networks.iter().cloned());
    if both.is_empty() {
        if request.add_ports.is_empty() && request.remove_ports.is_empty() {
            return Err(ControlError::Invalid(
                "nothing to update: give --network-add/--network-rm NET or --publish-add/--publish-rm PORT".into(),
            ));
        }
        return Ok(NetworkChange {
            add: Vec::new(),
            remove: Vec::new(),
        });
    }
    check_networks_listed(&both).map_err(|_| {
        ControlError::Invalid(
            "a network is given twice in --network-add/--network-rm: give each once".into(),
        )
    })?;
    if let Some(on) = request
        .add_networks
        .iter()
        .find(|n| service.networks.contains(n))
    {
        return Err(ControlError::Conflict(format!(
            "service {name} is already on network {on}: leave it out of --network-add"
        )));
    }
    if let Some(off) = request
        .remove_networks
        .iter()
        .find(|n| !service.networks.contains(n))
    {
        return Err(ControlError::NotFound(format!(
            "service {name} is not on network {off}: see `netctl service inspect {name}`"
        )));
    }
    let left = service.networks.len() + request.add_networks.len();
    if left <= request.remove_networks.len() {
        return Err(ControlError::Invalid(format!(
            "service {name} would be on no network: keep one, or remove the service (`netctl service rm {name}`)"
        )));
    }
    Ok(NetworkChange {
        add: request.add_networks.clone(),
        remove: request.remove_networks.clone(),
    })
}

/// The ports `service` has after `request`: removed ones must be there,
/// added ones follow the create rules, and none may be taken by another of
/// the `existing` services.
pub fn plan_ports(
    service: &Service,
    request: &UpdateService,
    existing: &[Service],
) -> Result<Vec<PublishedPort>, ControlError> {
    let same =
        |p: &PublishedPort, r: &PortRef| p.published == r.published && p.protocol == r.protocol;
    if let Some(missing) = request
        .remove_ports
        .iter()
        .find(|r| !service.ports.iter().any(|p| same(p, r)))
    {
        return Err(ControlError::NotFound(format!(
            "service {} does not publish {}/{}: see `netctl service inspect {}`",
            service.name, missing.published, missing.protocol, service.name
        )));
    }
    let mut ports: Vec<PublishedPort> = service
        .ports
        .iter()
        .filter(|p| !request.remove_ports.iter().any(|r| same(p, r)))
        .cloned()
        .collect();
    ports.extend(request.add_ports.iter().cloned());
    check_ports(service.endpoint_mode, &ports)?;
    check_ports_free(existing, &request.add_ports, Some(&service.id))?;
    Ok(ports)
}

/// Refuses a published port another service of `existing` already holds
/// (the service `updating`, if any, does not count): a published port is
/// unique in the cluster, per protocol.
fn check_ports_free(
    existing: &[Service],
    ports: &[PublishedPort],
    updating: Option<&str>,
) -> Result<(), ControlError> {
    for port in ports {
        let owner = existing.iter().find(|s| {
            Some(s.id.as_str()) != updating
                && s.ports
                    .iter()
                    .any(|p| p.published == port.published && p.protocol == port.protocol)
        });
        if let Some(owner) = owner {
            return Err(ControlError::Conflict(format!(
                "published port {} is already used by service {}: choose another published port",
                port_label(port),
                owner.name
            )));
        }
    }
    Ok(())
}

/// Request builders shared by the control-plane tests.
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::Protocol;

    /// A port published to target 80.
    pub fn port(published: u16, protocol: Protocol, mode: PublishMode) -> PublishedPort {
        PublishedPort {
            published,
            target: 80,
            protocol,
            mode,
        }
    }

    pub fn create(
        name: &str,
        networks: &[&str],
        mode: EndpointMode,
        ports: Vec<PublishedPort>,
    ) -> CreateService {
        CreateService {
            name: name.into(),
            networks: networks.iter().map(|n| (*n).to_owned()).collect(),
            endpoint_mode: mode,
            ports,
        }
    }

    pub fn update(add: &[&str], remove: &[&str]) -> UpdateService {
        let names = |list: &[&str]| list.iter().map(|n| (*n).to_owned()).collect();
        UpdateService {
            add_networks: names(add),
            remove_networks: names(remove),
            ..UpdateService::default()
        }
    }

    fn request(name: &str, mode: EndpointMode, ports: Vec<PublishedPort>) -> CreateService {
        create(name, &["web"], mode, ports)
    }

    fn service(name: &str, networks: &[&str], ports: Vec<PublishedPort>) -> Service {
        Service {
            name: name.into(),
            id: format!("id-{name}"),
            endpoint_mode: EndpointMode::Vip,
            vips: Vec::new(),
            networks: networks.iter().map(|n| (*n).to_owned()).collect(),
            ports,
        }
    }

    #[test]
    fn names_are_dns_labels() {
        for good in ["web", "a", "Web-1", "0abc", &"x".repeat(63)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-web", "web-", "we_b", "we.b", "wé", &"x".repeat(64)] {
            let error = check_name(bad).unwrap_err().to_string();
            assert!(error.contains("DNS label"), "{bad}: {error}");
        }
    }

    #[test]
    fn requests_need_one_network_each_once() {
        let mut r = request("web", EndpointMode::Vip, vec![]);
        assert!(check_request(&r).is_ok());
        r.networks.clear();
        assert!(check_request(&r)
            .unwrap_err()
            .to_string()
            .contains("at least one network"));
        r.networks = vec!["a".into(), "b".into(), "a".into()];
        assert!(check_request(&r)
            .unwrap_err()
            .to_string()
            .contains("given twice"));
    }

    #[test]
    fn ports_are_checked() {
        let tcp = port(8080, Protocol::Tcp, PublishMode::Ingress);
        let udp = port(8080, Protocol::Udp, PublishMode::Ingress);
        let host = port(9090, Protocol::Tcp, PublishMode::Host);
        assert!(check_request(&request("a", EndpointMode::Vip, vec![tcp.clone(), udp])).is_ok());
        let error = check_request(&request(
            "a",
            EndpointMode::Vip,
            vec![tcp.clone(), tcp.clone()],
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("8080/tcp is given twice"), "{error}");
        let error = check_request(&request("a", EndpointMode::Dnsrr, vec![tcp.clone()]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "dnsrr services cannot publish in ingress mode: use mode=host"
        );
        assert!(check_request(&request("a", EndpointMode::Dnsrr, vec![host])).is_ok());
        let zero = port(0, Protocol::Tcp, PublishMode::Ingress);
        assert!(check_request(&request("a", EndpointMode::Vip, vec![zero])).is_err());
    }

    #[test]
    fn names_and_ports_are_cluster_unique() {
        let tcp = port(8080, Protocol::Tcp, PublishMode::Ingress);
        let existing = [service("Web", &["web"], vec![tcp.clone()])];
        let error =
            check_against(&request("web", EndpointMode::Vip, vec![]), &existing).unwrap_err();
        assert!(matches!(error, ControlError::Conflict(_)), "{error}");
        assert!(error.to_string().contains("already exists"));
        let error = check_against(&request("api", EndpointMode::Vip, vec![tcp]), &existing)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("8080/tcp is already used by service Web"),
            "{error}"
        );
        let udp = port(8080, Protocol::Udp, PublishMode::Host);
        assert!(check_against(&request("api", EndpointMode::Vip, vec![udp]), &existing).is_ok());
        assert!(matches(&existing[0], "WEB"));
        assert!(matches(&existing[0], "id-Web"));
    }

    #[test]
    fn updates_add_new_networks_and_remove_present_ones() {
        let web = service("web", &["a", "b"], vec![]);
        let change = plan_update(&web, &update(&["c"], &["a"])).unwrap();
        assert_eq!(
            change,
            NetworkChange {
                add: vec!["c".into()],
                remove: vec!["a".into()]
            }
        );
        let refused = [
            (update(&[], &[]), "nothing to update"),
            (update(&["a"], &[]), "already on network a"),
            (update(&[], &["z"]), "not on network z"),
            (update(&[], &["a", "b"]), "no network"),
            (update(&["c"], &["c"]), "given twice"),
        ];
        for (request, expected) in refused {
            let error = plan_update(&web, &request).unwrap_err().to_string();
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }

    #[test]
    fn updates_add_and_remove_published_ports() {
        let web = service(
            "web",
            &["a"],
            vec![port(8080, Protocol::Tcp, PublishMode::Ingress)],
        );
        let api = service(
            "api",
            &["a"],
            vec![port(9090, Protocol::Tcp, PublishMode::Host)],
        );
        let existing = [web.clone(), api];
        let request = UpdateService {
            add_ports: vec![port(8443, Protocol::Tcp, PublishMode::Ingress)],
            remove_ports: vec![PortRef {
                published: 8080,
                protocol: Protocol::Tcp,
            }],
            ..UpdateService::default()
        };
        assert!(plan_update(&web, &request).unwrap().add.is_empty());
        let ports = plan_ports(&web, &request, &existing).unwrap();
        assert_eq!(ports, vec![port(8443, Protocol::Tcp, PublishMode::Ingress)]);
        let refused = [
            (
                vec![port(9090, Protocol::Tcp, PublishMode::Ingress)],
                vec![],
                "already used by service api",
            ),
            (
                vec![port(8080, Protocol::Tcp, PublishMode::Ingress)],
                vec![],
                "given twice",
            ),
            (
                vec![],
                vec![PortRef {
                    published: 8080,
                    protocol: Protocol::Udp,
                }],
                "does not publish 8080/udp",
            ),
        ];
        for (add_ports, remove_ports, expected) in refused {
            let request = UpdateService {
                add_ports,
                remove_ports,
                ..UpdateService::default()
            };
            let error = plan_ports(&web, &request, &existing)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }
}
