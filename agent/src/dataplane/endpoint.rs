//! Local endpoints: a veth pair per container. The host end `ve-<id[..8]>`
//! stays in the sandbox on br0; the other end moves into the container's
//! namespace and becomes its `eth0`.
//!
//! The host end's alias (IFLA_IFALIAS) holds the full endpoint id, so that a
//! restarted agent can map veths back to endpoints (`attached`).

use std::{net::Ipv4Addr, os::fd::AsRawFd, path::Path};

use rtnetlink::{LinkUnspec, LinkVeth};

use super::{
    error::{OverlayError, HINT_GENERIC},
    netlink::{self, Netlink, NetlinkError},
    netns,
    sandbox::{self, Opened, BRIDGE},
    spec::{Attachment, OverlayConfig},
};
use crate::model::Network;

const HOST_PREFIX: &str = "ve-";
/// Temporary name of the container end while it is still in the sandbox.
const PEER_PREFIX: &str = "vp-";
const ID_CHARS: usize = 8;

/// `ve-<first 8 chars of the endpoint id>`.
pub fn host_veth_name(endpoint_id: &str) -> String {
    format!("{HOST_PREFIX}{}", id_prefix(endpoint_id))
}

fn peer_veth_name(endpoint_id: &str) -> String {
    format!("{PEER_PREFIX}{}", id_prefix(endpoint_id))
}

fn id_prefix(endpoint_id: &str) -> &str {
    // Ids are ASCII (checked by `valid_endpoint_id`), so this is a char boundary.
    &endpoint_id[..endpoint_id.len().min(ID_CHARS)]
}

pub fn valid_endpoint_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IF_NAMESIZE
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// Whether `ip` can be an endpoint's address in `network`.
pub fn usable_address(network: &Network, ip: Ipv4Addr) -> bool {
    network.subnet.contains(&ip)
        && ip != network.gateway
        && (network.subnet.prefix_len() >= 31
            || (ip != network.subnet.network() && ip != network.subnet.broadcast()))
}

pub async fn attach(
    config: &OverlayConfig,
    network: &Network,
    attachment: &Attachment,
) -> Result<(), OverlayError> {
    if !valid_endpoint_id(&attachment.endpoint_id) {
        return Err(OverlayError::BadEndpointId {
            id: attachment.endpoint_id.clone(),
        });
    }
    if !valid_ifname(&attachment.ifname) {
        return Err(OverlayError::BadIfname {
            name: attachment.ifname.clone(),
        });
    }
    if !usable_address(network, attachment.ip) {
        return Err(OverlayError::AddressOutsideSubnet {
            ip: attachment.ip,
            subnet: network.subnet,
        });
    }
    let opened = sandbox::open(config, network).await?;
    // Open the container's namespace before creating anything, so that a
    // bad path fails with nothing to undo.
    let container_fd =
        netns::open(&attachment.container_netns).map_err(OverlayError::container_netns)?;
    let host = host_veth_name(&attachment.endpoint_id);
    let at = |what: String| OverlayError::netlink(what, &opened.name, HINT_GENERIC);
    if opened
        .netlink
        .link(&host)
        .await
        .map_err(at(format!("looking up {host}")))?
        .is_some()
    {
        return Err(OverlayError::EndpointExists {
            link: host,
            sandbox: opened.name.clone(),
        });
    }
    let br = sandbox::link_index(&opened, BRIDGE).await?;
    let mtu = opened
        .netlink
        .link(BRIDGE)
        .await
        .map_err(at("looking up br0".into()))?
        .and_then(|l| netlink::link_mtu(&l))
        .unwrap_or(1450);
    let peer = peer_veth_name(&attachment.endpoint_id);
    opened
        .netlink
        .add_link(LinkVeth::new(&host, &peer).mtu(mtu).build())
        .await
        .map_err(at(format!("creating veth {host}")))?;
    let result = wire(
        &opened,
        network,
        attachment,
        &host,
        &peer,
        br,
        mtu,
        &container_fd,
    )
    .await;
    if let Err(error) = &result {
        tracing::warn!(endpoint = %attachment.endpoint_id, %error, "attach failed; removing its veth");
        // Deleting the host end deletes the pair, wherever the other end is.
        if let Err(cleanup) = delete_by_name(&opened.netlink, &host).await {
            tracing::warn!(link = %host, error = %cleanup, "could not remove veth");
        }
    } else {
        tracing::info!(endpoint = %attachment.endpoint_id, ip = %attachment.ip, sandbox = %opened.name, "attached");
    }
    result
}

/// Everything after the veth exists; the caller removes the veth on error.
#[allow(clippy::too_many_arguments)]
async fn wire(
    opened: &Opened,
    network: &Network,
    attachment: &Attachment,
    host: &str,
    peer: &str,
    br: u32,
    mtu: u32,
    container_fd: &std::os::fd::OwnedFd,
) -> Result<(), OverlayError> {
    let at = |what: String| OverlayError::netlink(what, &opened.name, HINT_GENERIC);
    let sb = &opened.netlink;
    let host_index = index_of(sb, host)
        .await
        .map_err(at(format!("looking up {host}")))?;
    sb.set_link(
        LinkUnspec::new_with_index(host_index)
            .controller(br)
            .alias(attachment.endpoint_id.clone())
            .up()
            .build(),
    )
    .await
    .map_err(at(format!("enslaving {host} to br0")))?;
    let peer_index = index_of(sb, peer)
        .await
        .map_err(at(format!("looking up {peer}")))?;
    sb.set_link(
        LinkUnspec::new_with_index(peer_index)
            .setns_by_fd(container_fd.as_raw_fd())
            .build(),
    )
    .await
    .map_err(at(format!(
        "moving {peer} into {}",
        attachment.container_netns.display()
    )))?;

    let label = attachment.container_netns.display().to_string();
    let cat = |what: String, hint: &'static str| OverlayError::netlink(what, &label, hint);
    let container = Netlink::connect(Some(Path::new(&attachment.container_netns)))
        .await
        .map_err(cat("connecting".into(), HINT_GENERIC))?;
    let index = index_of(&container, peer)
        .await
        .map_err(cat(format!("looking up {peer}"), HINT_GENERIC))?;
    container
        .set_link(
            LinkUnspec::new_with_index(index)
                .name(attachment.ifname.clone())
                .address(attachment.mac.0.to_vec())
                .mtu(mtu)
                .build(),
        )
        .await
        .map_err(cat(
            format!("renaming {peer} to {}", attachment.ifname),
            "the container may have an interface of that name already; pass another --ifname",
        ))?;
    container
        .ensure_ipv4_addr(index, attachment.ip, network.subnet.prefix_len())
        .await
        .map_err(cat(format!("adding {}", attachment.ip), HINT_GENERIC))?;
    container.up(index).await.map_err(cat(
        format!("bringing {} up", attachment.ifname),
        HINT_GENERIC,
    ))?;
    if let Ok(lo) = index_of(&container, "lo").await {
        container
            .up(lo)
            .await
            .map_err(cat("bringing lo up".into(), HINT_GENERIC))?;
    }
    // A container attached to several networks keeps its first default route.
    if !container
        .has_default_route()
        .await
        .map_err(cat("reading routes".into(), HINT_GENERIC))?
    {
        container
            .add_default_route(network.gateway)
            .await
            .map_err(cat(
                format!("adding the default route via {}", network.gateway),
                HINT_GENERIC,
            ))?;
    }
    Ok(())
}

async fn index_of(netlink: &Netlink, name: &str) -> Result<u32, NetlinkError> {
    netlink
        .link(name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| NetlinkError::Protocol(format!("link {name} not found")))
}

async fn delete_by_name(netlink: &Netlink, name: &str) -> Result<(), NetlinkError> {
    match netlink.link(name).await? {
        Some(link) => netlink.del_link(link.header.index).await,
        None => Ok(()),
    }
}

pub async fn detach(
    config: &OverlayConfig,
    network: &Network,
    endpoint_id: &str,
) -> Result<(), OverlayError> {
    if !valid_endpoint_id(endpoint_id) {
        return Err(OverlayError::BadEndpointId {
            id: endpoint_id.to_owned(),
        });
    }
    let opened = match sandbox::open(config, network).await {
        Ok(opened) => opened,
        // No sandbox, no veth: already detached.
        Err(OverlayError::NoSandbox { .. }) => return Ok(()),
        Err(error) => return Err(error),
    };
    let host = host_veth_name(endpoint_id);
    delete_by_name(&opened.netlink, &host)
        .await
        .map_err(OverlayError::netlink(
            format!("deleting {host}"),
            &opened.name,
            HINT_GENERIC,
        ))?;
    tracing::info!(endpoint = %endpoint_id, sandbox = %opened.name, "detached");
    Ok(())
}

/// Endpoint ids of the veths in the sandbox: the alias `attach` set, or the
/// 8-character prefix from the name when the alias is missing. No sandbox:
/// nothing attached.
pub async fn attached(
    config: &OverlayConfig,
    network: &Network,
) -> Result<Vec<String>, OverlayError> {
    let opened = match sandbox::open(config, network).await {
        Ok(opened) => opened,
        Err(OverlayError::NoSandbox { .. }) => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let links = opened.netlink.links().await.map_err(OverlayError::netlink(
        "listing links",
        &opened.name,
        HINT_GENERIC,
    ))?;
    let mut ids: Vec<String> = links
        .iter()
        .filter_map(|link| {
            let prefix = netlink::link_name(link)?.strip_prefix(HOST_PREFIX)?;
            Some(match netlink::link_alias(link) {
                Some(alias) if alias.starts_with(prefix) && valid_endpoint_id(alias) => {
                    alias.to_owned()
                }
                _ => prefix.to_owned(),
            })
        })
        .collect();
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> Network {
        Network {
            name: "front".into(),
            id: "n1".into(),
            vni: 4096,
            subnet: "10.10.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 10, 0, 1),
            internal: false,
            mtu: None,
        }
    }

    #[test]
    fn veth_names_fit_ifnamsiz() {
        assert_eq!(host_veth_name("0123456789abcdef"), "ve-01234567");
        assert_eq!(host_veth_name("abc"), "ve-abc");
        assert_eq!(peer_veth_name("0123456789abcdef"), "vp-01234567");
        assert!(host_veth_name("0123456789abcdef").len() < libc::IF_NAMESIZE);
    }

    #[test]
    fn endpoint_ids_and_ifnames_are_checked() {
        assert!(valid_endpoint_id("e1-abc_d.9"));
        assert!(!valid_endpoint_id(""));
        assert!(!valid_endpoint_id("a/b"));
        assert!(!valid_endpoint_id("é"));
        assert!(valid_ifname("eth0"));
        assert!(!valid_ifname("eth0:1"));
        assert!(!valid_ifname("0123456789abcdef"));
        assert!(!valid_ifname(""));
    }

    #[test]
    fn addresses_must_be_hosts_of_the_subnet() {
        let net = network();
        assert!(usable_address(&net, Ipv4Addr::new(10, 10, 0, 2)));
        assert!(!usable_address(&net, Ipv4Addr::new(10, 10, 0, 1)));
        assert!(!usable_address(&net, Ipv4Addr::new(10, 10, 0, 0)));
        assert!(!usable_address(&net, Ipv4Addr::new(10, 10, 0, 255)));
        assert!(!usable_address(&net, Ipv4Addr::new(10, 10, 1, 2)));
    }
}
