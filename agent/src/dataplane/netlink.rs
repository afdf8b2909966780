//! rtnetlink handles bound to a namespace, and the messages rtnetlink does
//! not build for us (the FDB `append` of a VXLAN remote).
//!
//! A `Netlink` owns one rtnetlink connection whose socket was opened inside
//! its namespace by `netns::route_socket_in`. It is cheap, so callers open
//! one per operation and drop it: a lingering socket would keep a deleted
//! namespace alive.

// The kernel boundary: a netlink socket opened inside a namespace, adopted from its raw descriptor.
#![allow(unsafe_code)]

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::{IntoRawFd, OwnedFd},
    path::Path,
};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::AddressAttribute,
    link::{
        InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVxlan, LinkAttribute,
        LinkFlags, LinkInfo, LinkMessage,
    },
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage},
    AddressFamily, RouteNetlinkMessage,
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::netns::{self, NetnsError};
use crate::model::Mac;

/// What a netlink request failed with.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request.
    #[error("{0}")]
    Kernel(io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl NetlinkError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel(error) => error.raw_os_error(),
            _ => None,
        }
    }

    pub fn is(&self, errno: i32) -> bool {
        self.errno() == Some(errno)
    }
}

impl From<rtnetlink::Error> for NetlinkError {
    fn from(error: rtnetlink::Error) -> Self {
        match error {
            rtnetlink::Error::NetlinkError(message) => NetlinkError::Kernel(message.to_io()),
            other => NetlinkError::Protocol(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// One rtnetlink connection inside one namespace.
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Connects inside `netns` (`None`: the agent's own namespace).
    pub async fn connect(netns: Option<&Path>) -> Result<Self> {
        let fd: OwnedFd = netns::route_socket_in(netns).await?;
        // SAFETY: the fd is a fresh netlink socket we own; TokioSocket takes
        // ownership of it (and registers it with the running reactor).
        let socket = unsafe {
            <netlink_sys::TokioSocket as std::os::fd::FromRawFd>::from_raw_fd(fd.into_raw_fd())
        };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        // The connection task ends once every handle is dropped.
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The link called `name`, or `None`.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(error) => {
                let error = NetlinkError::from(error);
                if error.is(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkMessage>> {
        Ok(self.handle.link().get().execute().try_collect().await?)
    }

    /// Applies `message` (built with `LinkUnspec::new_with_index`).
    pub async fn set_link(&self, message: LinkMessage) -> Result<()> {
        Ok(self.handle.link().set(message).execute().await?)
    }

    pub async fn add_link(&self, message: LinkMessage) -> Result<()> {
        Ok(self.handle.link().add(message).execute().await?)
    }

    /// Deletes link `index`; a link already gone is not an error.
    pub async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(error) => {
                let error = NetlinkError::from(error);
                if error.is(libc::ENODEV) {
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Deletes link `name` if it exists.
    pub async fn del_link_named(&self, name: &str) -> Result<()> {
        if let Some(link) = self.link(name).await? {
            self.del_link(link.header.index).await?;
        }
        Ok(())
    }

    /// Brings link `index` up.
    pub async fn up(&self, index: u32) -> Result<()> {
        self.set_link(LinkUnspec::new_with_index(index).up().build())
            .await
    }

    /// IPv4 addresses (address, prefix length) of link `index`.
    pub async fn ipv4_addrs(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await?;
        Ok(messages
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds `ip/prefix_len` to link `index` unless it is there already.
    pub async fn ensure_ipv4_addr(&self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        if self.ipv4_addrs(index).await?.contains(&(ip, prefix_len)) {
            return Ok(());
        }
        Ok(self
            .handle
            .address()
            .add(index, IpAddr::V4(ip), prefix_len)
            .execute()
            .await?)
    }

    /// Whether the main table has an IPv4 default route.
    pub async fn has_default_route(&self) -> Result<bool> {
        let routes: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await?;
        Ok(routes.iter().any(|r| {
            r.header.destination_prefix_length == 0
                && r.header.table == RouteHeader::RT_TABLE_MAIN
                && r.header.address_family == AddressFamily::Inet
        }))
    }

    /// Adds a default route via `gateway`.
    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        Ok(self.handle.route().add(route).execute().await?)
    }

    /// The main-table IPv4 route to exactly `destination/prefix_len`, as
    /// (gateway, output interface, on-link).
    pub async fn ipv4_route(
        &self,
        destination: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<Option<(Option<Ipv4Addr>, Option<u32>, bool)>> {
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await?;
        Ok(routes
            .iter()
            .find(|r| {
                r.header.table == RouteHeader::RT_TABLE_MAIN
                    && r.header.address_family == AddressFamily::Inet
                    && r.header.destination_prefix_length == prefix_len
                    && route_destination(r).unwrap_or(Ipv4Addr::UNSPECIFIED) == destination
            })
            .map(|r| {
                let gateway = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                });
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(index) => Some(*index),
                    _ => None,
                });
                (gateway, oif, r.header.flags.contains(RouteFlags::Onlink))
            }))
    }

    /// `ip route replace DESTINATION/PREFIX via GATEWAY dev OIF onlink`.
    pub async fn replace_onlink_route(
        &self,
        destination: Ipv4Addr,
        prefix_len: u8,
        gateway: Ipv4Addr,
        oif: u32,
    ) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination, prefix_len)
            .gateway(gateway)
            .output_interface(oif)
            .onlink()
            .build();
        Ok(self.handle.route().add(route).replace().execute().await?)
    }

    /// Sends a request built by hand and waits for its acknowledgement.
    pub async fn request_ack(&self, message: NetlinkMessage<RouteNetlinkMessage>) -> Result<()> {
        let mut handle = self.handle.clone();
        let mut responses = handle.request(message)?;
        while let Some(response) = responses.next().await {
            if let NetlinkPayload::Error(error) = response.payload {
                if error.code.is_some() {
                    return Err(NetlinkError::Kernel(error.to_io()));
                }
            }
        }
        Ok(())
    }

    /// `bridge fdb append MAC dev IFINDEX dst VTEP self permanent`.
    pub async fn fdb_append(&self, ifindex: u32, mac: Mac, vtep: Ipv4Addr) -> Result<()> {
        self.request_ack(fdb_append_message(ifindex, mac, vtep))
            .await
    }

    /// `bridge fdb del MAC dev IFINDEX dst VTEP self`; absent is not an error.
    pub async fn fdb_del(&self, ifindex: u32, mac: Mac, vtep: Ipv4Addr) -> Result<()> {
        self.del_neighbour_entry(fdb_entry(ifindex, mac, vtep))
            .await
    }

    /// `bridge fdb replace MAC dev IFINDEX master static`: the bridge sends
    /// frames for MAC to its port IFINDEX without learning or flooding.
    pub async fn bridge_fdb_static(&self, ifindex: u32, mac: Mac) -> Result<()> {
        let mut message = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(
            bridge_fdb_entry(ifindex, mac),
        ));
        message.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.request_ack(message).await
    }

    /// `bridge fdb del MAC dev IFINDEX master`; absent is not an error.
    pub async fn bridge_fdb_del(&self, ifindex: u32, mac: Mac) -> Result<()> {
        self.del_neighbour_entry(bridge_fdb_entry(ifindex, mac))
            .await
    }

    /// RTM_DELNEIGH for `entry`; an entry already gone is not an error.
    async fn del_neighbour_entry(&self, entry: NeighbourMessage) -> Result<()> {
        let mut message = NetlinkMessage::from(RouteNetlinkMessage::DelNeighbour(entry));
        message.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        match self.request_ack(message).await {
            Err(error) if error.is(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Turns MAC learning of bridge port `index` on or off
    /// (`ip link set dev X type bridge_slave learning off`).
    pub async fn set_port_learning(&self, index: u32, learning: bool) -> Result<()> {
        let mut message = LinkUnspec::new_with_index(index).build();
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Learning(
                learning,
            )])),
        ]));
        self.set_link(message).await
    }

    /// Every neighbour entry of `family` (AF_BRIDGE: FDB entries).
    async fn neighbours(&self, family: AddressFamily) -> Result<Vec<NeighbourMessage>> {
        Ok(self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await?)
    }

    /// VXLAN FDB entries (MAC, remote VTEP, state) of link `ifindex`.
    pub async fn fdb_entries(&self, ifindex: u32) -> Result<Vec<(Mac, Ipv4Addr, NeighbourState)>> {
        let messages = self.neighbours(AddressFamily::Bridge).await?;
        Ok(messages
            .iter()
            .filter(|m| m.header.ifindex == ifindex)
            .filter_map(|m| {
                let mac = lladdr(m)?;
                let vtep = m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(address) => bridge_dst(address),
                    _ => None,
                })?;
                Some((mac, vtep, m.header.state))
            })
            .collect())
    }

    /// Permanent IPv4 neighbour entries (IP, MAC) of link `ifindex`.
    pub async fn permanent_neighbours(&self, ifindex: u32) -> Result<Vec<(Ipv4Addr, Mac)>> {
        let messages = self.neighbours(AddressFamily::Inet).await?;
        Ok(messages
            .iter()
            .filter(|m| m.header.ifindex == ifindex && m.header.state == NeighbourState::Permanent)
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                })?;
                Some((ip, lladdr(m)?))
            })
            .collect())
    }

    /// Permanent neighbour `ip` → `mac` on `ifindex`, replacing what was there.
    pub async fn set_neighbour(&self, ifindex: u32, ip: Ipv4Addr, mac: Mac) -> Result<()> {
        Ok(self
            .handle
            .neighbours()
            .add(ifindex, IpAddr::V4(ip))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await?)
    }

    /// Deletes neighbour `ip` on `ifindex`; absent is not an error.
    pub async fn del_neighbour(&self, ifindex: u32, ip: Ipv4Addr) -> Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = ifindex;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(error) => {
                let error = NetlinkError::from(error);
                if error.is(libc::ENOENT) {
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }
}

fn route_destination(route: &RouteMessage) -> Option<Ipv4Addr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

/// NDA_DST of an AF_BRIDGE entry: the parser only knows the address family
/// of the message (bridge), so an IPv4 VTEP arrives as 4 raw bytes.
fn bridge_dst(address: &NeighbourAddress) -> Option<Ipv4Addr> {
    match address {
        NeighbourAddress::Inet(ip) => Some(*ip),
        NeighbourAddress::Other(bytes) => <[u8; 4]>::try_from(bytes.as_slice())
            .ok()
            .map(Ipv4Addr::from),
        _ => None,
    }
}

fn lladdr(message: &NeighbourMessage) -> Option<Mac> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => {
            <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac)
        }
        _ => None,
    })
}

/// The FDB entry of a VXLAN remote: AF_BRIDGE, NTF_SELF (the vxlan device's
/// own table, not the bridge's), NUD_PERMANENT, NDA_LLADDR, NDA_DST.
pub fn fdb_entry(ifindex: u32, mac: Mac, vtep: Ipv4Addr) -> NeighbourMessage {
    let mut message =
        bridge_family_entry(ifindex, mac, NeighbourState::Permanent, NeighbourFlags::Own);
    message
        .attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            vtep,
        )));
    message
}

/// A static entry of the bridge's own FDB (NTF_MASTER, NUD_NOARP: what
/// iproute2 calls `master static`) pointing MAC at port `ifindex`.
pub fn bridge_fdb_entry(ifindex: u32, mac: Mac) -> NeighbourMessage {
    bridge_family_entry(
        ifindex,
        mac,
        NeighbourState::Noarp,
        NeighbourFlags::Controller,
    )
}

/// An AF_BRIDGE neighbour message for MAC on `ifindex`.
fn bridge_family_entry(
    ifindex: u32,
    mac: Mac,
    state: NeighbourState,
    flags: NeighbourFlags,
) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = ifindex;
    message.header.state = state;
    message.header.flags = flags;
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    message
}

/// `RTM_NEWNEIGH` with `NLM_F_CREATE | NLM_F_APPEND` (what `bridge fdb
/// append` sends; rtnetlink has no builder for it). Without NLM_F_EXCL an
/// entry that exists already is accepted, so the request is idempotent.
pub fn fdb_append_message(
    ifindex: u32,
    mac: Mac,
    vtep: Ipv4Addr,
) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut message = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(fdb_entry(
        ifindex, mac, vtep,
    )));
    message.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
    message
}

/// Reading link messages.
pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

/// The link's MAC address.
pub fn link_mac(link: &LinkMessage) -> Option<Mac> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac),
        _ => None,
    })
}

/// IFLA_LINK: for a veth, its peer's index (in the peer's namespace).
pub fn link_peer_index(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    })
}

pub fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

pub fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

pub fn link_alias(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(alias) => Some(alias.as_str()),
        _ => None,
    })
}

pub fn link_is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

pub fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link_infos(link).find_map(|info| match info {
        LinkInfo::Kind(kind) => Some(kind),
        _ => None,
    })
}

/// The VNI of a vxlan link.
pub fn vxlan_vni(link: &LinkMessage) -> Option<u32> {
    link_infos(link).find_map(|info| match info {
        LinkInfo::Data(InfoData::Vxlan(data)) => data.iter().find_map(|d| match d {
            InfoVxlan::Id(vni) => Some(*vni),
            _ => None,
        }),
        _ => None,
    })
}

fn link_infos(link: &LinkMessage) -> impl Iterator<Item = &LinkInfo> {
    link.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos.iter()),
            _ => None,
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdb_append_message_is_what_bridge_fdb_append_sends() {
        let mac = Mac([0x02, 0x42, 0x0a, 0x0a, 0x00, 0x02]);
        let mut message = fdb_append_message(7, mac, Ipv4Addr::new(198, 18, 0, 12));
        message.finalize();
        let mut bytes = vec![0u8; message.buffer_len()];
        message.serialize(&mut bytes);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            // nlmsghdr: len 48, RTM_NEWNEIGH (28), flags REQUEST|ACK|CREATE|APPEND (0x0c05), seq 0, pid 0
            48, 0, 0, 0, 28, 0, 0x05, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0,
            // ndmsg: AF_BRIDGE (7), pad, ifindex 7, NUD_PERMANENT (0x80), NTF_SELF (2), type 0
            7, 0, 0, 0, 7, 0, 0, 0, 0x80, 0, 2, 0,
            // NDA_LLADDR (2): 6 bytes + 2 padding
            10, 0, 2, 0, 0x02, 0x42, 0x0a, 0x0a, 0x00, 0x02, 0, 0,
            // NDA_DST (1): 198.18.0.12
            8, 0, 1, 0, 198, 18, 0, 12,
        ];
        assert_eq!(bytes, want);
    }

    #[test]
    fn fdb_entry_without_append_flags_is_a_plain_entry() {
        let entry = fdb_entry(3, Mac([2, 0x42, 1, 2, 3, 4]), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(entry.header.family, AddressFamily::Bridge);
        assert_eq!(entry.header.state, NeighbourState::Permanent);
        assert_eq!(entry.header.flags, NeighbourFlags::Own);
    }
}
