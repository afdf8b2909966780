//! Attaching containers to overlay networks and detaching them: addresses,
//! the kernel objects, the local record and the gossip announcement, in that
//! order, with every step undone when a later one fails.

use std::{collections::BTreeSet, net::Ipv4Addr, path::PathBuf};

use netagent_api::types::AttachRequest;
use rand::Rng;
use tracing::{info, warn};

use crate::{
    control::{ControlError, ControlPlane},
    dataplane::{
        endpoint, netns,
        overlay::{Attachment, OverlayError},
    },
    model::{Endpoint, Health, Network},
    node::cluster::ClusterRuntime,
    node::endpoint_store::{EndpointStore, LocalEndpoint, StoreError},
    node::ipam,
};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("unknown network {0:?}: create it with `netctl overlay create {0}` or pick one from `netctl overlay ls`")]
    UnknownNetwork(String),
    #[error("give the container's namespace with --netns PATH or --pid PID")]
    NoTarget,
    #[error("--netns and --pid both given: pass only one")]
    BothTargets,
    #[error("network namespace {0} does not exist: pass an existing namespace (/run/netns/NAME) or the --pid of a running process")]
    NoNetns(PathBuf),
    #[error("interface name {0:?} is not valid: 1 to 15 characters, no '/', ':' or white space")]
    BadIfname(String),
    #[error("{ip} is outside the subnet {subnet} of network {network}: pick an address inside it, or leave --ip out")]
    OutsideSubnet {
        ip: Ipv4Addr,
        subnet: ipnet::Ipv4Net,
        network: String,
    },
    #[error("{ip} is the gateway, network or broadcast address of network {network}: pick another address")]
    NotAssignable { ip: Ipv4Addr, network: String },
    #[error("{ip} is already taken on network {network} by endpoint {by}: pick another address, or leave --ip out")]
    Taken {
        ip: Ipv4Addr,
        network: String,
        by: String,
    },
    #[error("unknown service {0:?}: create it with `netctl service create {0} --network NET` or pick one from `netctl service ls`")]
    UnknownService(String),
    #[error("service {service:?} is not on network {network:?}: add it with `netctl service update {service} --network-add {network}`")]
    ServiceNotOnNetwork { service: String, network: String },
    #[error("no endpoint {0:?} on this node: see `netctl endpoint ls`")]
    NoEndpoint(String),
    #[error("{0:?} matches several endpoints: give more of the id")]
    Ambiguous(String),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lb(Box<crate::lb::LbError>),
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// A fresh endpoint id: 64 hex digits, as Docker's.
fn new_endpoint_id() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

fn container_netns(request: &AttachRequest) -> Result<PathBuf, AttachError> {
    let path = match (&request.netns, request.pid) {
        (Some(_), Some(_)) => return Err(AttachError::BothTargets),
        (Some(path), None) => path.clone(),
        (None, Some(pid)) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        (None, None) => return Err(AttachError::NoTarget),
    };
    if !path.exists() {
        return Err(AttachError::NoNetns(path));
    }
    Ok(path)
}

/// Attaches a container and returns its endpoint.
pub async fn attach(rt: &ClusterRuntime, request: AttachRequest) -> Result<Endpoint, AttachError> {
    let ifname = request.ifname.clone().unwrap_or_else(|| "eth0".into());
    if !valid_ifname(&ifname) {
        return Err(AttachError::BadIfname(ifname));
    }
    let netns = container_netns(&request)?;
    let network = rt
        .network(&request.network)
        .await?
        .ok_or_else(|| AttachError::UnknownNetwork(request.network.clone()))?;

    if let Some(service) = &request.service {
        check_service(rt, service, &network).await?;
    }

    let mut store = rt.endpoints.lock().await;
    let used: BTreeSet<Ipv4Addr> = store
        .all()
        .iter()
        .filter(|e| e.endpoint.network_id == network.id)
        .map(|e| e.endpoint.ip)
        .collect();
    let (ip, explicit_ip) = match request.ip {
        Some(ip) => {
            check_explicit_ip(rt, &network, ip, &store_ids(&store, &network))?;
            rt.control
                .reserve_ip(&network.id, &rt.identity().node_id, ip)
                .await?;
            (ip, true)
        }
        None => (next_address(rt, &network, &used).await?, false),
    };
    let endpoint = Endpoint {
        name: request.name.clone().unwrap_or_default(),
        service: request.service.clone(),
        aliases: request.aliases.clone(),
        ..Endpoint::new(
            new_endpoint_id(),
            &network.name,
            &network.id,
            &rt.identity().node_name,
            ip,
        )
    };

    let had_sandbox = rt.overlay.sandboxes().await?.contains(&network.vni);
    let attached = async {
        rt.overlay.ensure_sandbox(&network).await?;
        rt.overlay
            .attach(
                &network,
                &Attachment {
                    endpoint_id: endpoint.id.clone(),
                    ip,
                    mac: endpoint.mac,
                    container_netns: netns.clone(),
                    ifname: ifname.clone(),
                },
            )
            .await?;
        if let Some(lb) = &rt.lb {
            let sandbox = netns::named_path(&rt.overlay.sandbox_name(&network));
            lb.ensure_attached(
                &endpoint.id,
                &sandbox,
                &endpoint::host_veth_name(&endpoint.id),
            )
            .await
            .map_err(|error| AttachError::Lb(Box::new(error)))?;
        }
        store.insert(LocalEndpoint {
            endpoint: endpoint.clone(),
            container_netns: netns.clone(),
            ifname: ifname.clone(),
            explicit_ip,
        })?;
        Ok::<(), AttachError>(())
    }
    .await;
    if let Err(error) = attached {
        undo_attach(rt, &network, &endpoint, had_sandbox, explicit_ip).await;
        return Err(error);
    }
    drop(store);
    rt.gossip.publish(&endpoint).await;
    rt.kick();
    info!(id = %endpoint.id, network = %network.name, %ip, "endpoint attached");
    Ok(endpoint)
}

fn store_ids(
    store: &crate::node::endpoint_store::EndpointStore,
    network: &Network,
) -> Vec<(Ipv4Addr, String)> {
    store
        .all()
        .iter()
        .filter(|e| e.endpoint.network_id == network.id)
        .map(|e| (e.endpoint.ip, e.endpoint.id.clone()))
        .collect()
}

/// Refuses `--service` naming a service that does not exist or is not on
/// the endpoint's network.
async fn check_service(
    rt: &ClusterRuntime,
    name: &str,
    network: &Network,
) -> Result<(), AttachError> {
    let known = |services: &[crate::model::Service]| {
        services
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
            .cloned()
    };
    let service = match known(&rt.services().await) {
        Some(service) => service,
        None => known(&rt.refresh_services().await?)
            .ok_or_else(|| AttachError::UnknownService(name.to_owned()))?,
    };
    if !service.networks.contains(&network.name) {
        return Err(AttachError::ServiceNotOnNetwork {
            service: service.name,
            network: network.name.clone(),
        });
    }
    Ok(())
}

/// Refuses an `--ip` outside the subnet, reserved, or in use on any node.
fn check_explicit_ip(
    rt: &ClusterRuntime,
    network: &Network,
    ip: Ipv4Addr,
    local: &[(Ipv4Addr, String)],
) -> Result<(), AttachError> {
    if !network.subnet.contains(&ip) {
        return Err(AttachError::OutsideSubnet {
            ip,
            subnet: network.subnet,
            network: network.name.clone(),
        });
    }
    if !ipam::is_assignable(network, ip) {
        return Err(AttachError::NotAssignable {
            ip,
            network: network.name.clone(),
        });
    }
    let view = rt.view();
    let remote = view
        .nodes
        .values()
        .flat_map(|node| node.endpoints.values())
        .filter(|ep| ep.network_id == network.id)
        .map(|ep| (ep.ip, ep.id.clone()));
    if let Some((_, by)) = local
        .iter()
        .cloned()
        .chain(remote)
        .find(|(used, _)| *used == ip)
    {
        return Err(AttachError::Taken {
            ip,
            network: network.name.clone(),
            by: by.chars().take(12).collect(),
        });
    }
    Ok(())
}

/// The next free address of this node's blocks, asking the managers for a
/// new block when they are full.
async fn next_address(
    rt: &ClusterRuntime,
    network: &Network,
    used: &BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr, AttachError> {
    let mut blocks = rt.blocks.lock().await;
    rt.learn_blocks(&mut blocks, network).await?;
    let held = blocks.entry(network.id.clone()).or_default();
    if let Some(ip) = ipam::next_free(network, held, used) {
        return Ok(ip);
    }
    let block = rt
        .control
        .allocate_block(&network.id, &rt.identity().node_id)
        .await?;
    held.push(block);
    ipam::next_free(network, held, used).ok_or_else(|| {
        AttachError::Control(ControlError::Conflict(format!(
            "no address left on network {}: its subnet {} is full; detach unused endpoints (`netctl endpoint ls --network {}`) or create a network with a larger --subnet",
            network.name, network.subnet, network.name
        )))
    })
}

async fn undo_attach(
    rt: &ClusterRuntime,
    network: &Network,
    endpoint: &Endpoint,
    had_sandbox: bool,
    explicit_ip: bool,
) {
    if let Err(error) = rt.overlay.detach(network, &endpoint.id).await {
        warn!(%error, "undoing a failed attach: detach");
    }
    if !had_sandbox {
        if let Err(error) = rt.overlay.remove_sandbox(network).await {
            warn!(%error, "undoing a failed attach: sandbox");
        }
    }
    if explicit_ip {
        if let Err(error) = rt.control.release_ip(&network.id, endpoint.ip).await {
            warn!(%error, "undoing a failed attach: address reservation");
        }
    }
}

/// The one local endpoint `id_or_name` names (an id, a unique id prefix or a
/// task name).
fn find_one(store: &EndpointStore, id_or_name: &str) -> Result<LocalEndpoint, AttachError> {
    match store.find(id_or_name).as_slice() {
        [] => Err(AttachError::NoEndpoint(id_or_name.to_owned())),
        [one] => Ok((*one).clone()),
        _ => Err(AttachError::Ambiguous(id_or_name.to_owned())),
    }
}

/// Detaches the local endpoint `id_or_name` (an id, a unique id prefix or a
/// task name) and returns it.
pub async fn detach(rt: &ClusterRuntime, id_or_name: &str) -> Result<Endpoint, AttachError> {
    let mut store = rt.endpoints.lock().await;
    let local = find_one(&store, id_or_name)?;
    let endpoint = local.endpoint;
    let networks = rt.networks().await;
    let network = match networks.into_iter().find(|n| n.id == endpoint.network_id) {
        Some(network) => network,
        None => rt
            .refresh_networks()
            .await?
            .into_iter()
            .find(|n| n.id == endpoint.network_id)
            .ok_or_else(|| AttachError::UnknownNetwork(endpoint.network.clone()))?,
    };
    rt.overlay.detach(&network, &endpoint.id).await?;
    store.remove(&endpoint.id)?;
    drop(store);
    rt.gossip.withdraw(&endpoint.id).await;
    if local.explicit_ip {
        if let Err(error) = rt.control.release_ip(&network.id, endpoint.ip).await {
            warn!(%error, ip = %endpoint.ip, "cannot release the address reservation");
        }
    }
    rt.kick();
    info!(id = %endpoint.id, network = %network.name, "endpoint detached");
    Ok(endpoint)
}

/// Marks the local endpoint `id_or_name` healthy or unhealthy: an unhealthy
/// endpoint leaves every DNS answer (and, later, every load balancer) until
/// it is healthy again.
pub async fn set_health(
    rt: &ClusterRuntime,
    id_or_name: &str,
    health: Health,
) -> Result<Endpoint, AttachError> {
    let mut store = rt.endpoints.lock().await;
    let mut local = find_one(&store, id_or_name)?;
    local.endpoint.health = health;
    let endpoint = local.endpoint.clone();
    store.insert(local)?;
    drop(store);
    rt.gossip.publish(&endpoint).await;
    rt.kick();
    info!(id = %endpoint.id, %health, "endpoint health changed");
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("a23456789012345"));
        assert!(!valid_ifname("a234567890123456"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("eth/0"));
        assert!(!valid_ifname("eth 0"));
    }

    #[test]
    fn endpoint_ids_are_64_hex_digits_and_distinct() {
        let a = new_endpoint_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_endpoint_id());
    }

    #[test]
    fn a_missing_namespace_is_named_in_the_error() {
        let request = AttachRequest {
            netns: Some("/run/netns/does-not-exist-here".into()),
            ..Default::default()
        };
        let error = container_netns(&request).unwrap_err().to_string();
        assert!(error.contains("/run/netns/does-not-exist-here"), "{error}");
        let both = AttachRequest {
            netns: Some("/x".into()),
            pid: Some(1),
            ..Default::default()
        };
        assert!(matches!(
            container_netns(&both),
            Err(AttachError::BothTargets)
        ));
    }
}
