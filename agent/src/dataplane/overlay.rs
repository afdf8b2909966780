//! The overlay data plane of one node: the contract the rest of the agent
//! calls. Internals: `netns` (namespace switching), `netlink` (handles and
//! hand-built messages), `sandbox`, `endpoint`, `peers`, and the way out of
//! non-internal networks: `uplink` (veth sandbox ↔ node) and `masquerade`
//! (nf_tables in the node namespace, through `nftables`).
//!
//! Naming, so that nothing collides between agents on one machine:
//! - sandbox namespace: `<netns_prefix>-<vni>` (under /run/netns), its br0
//!   marked with the agent that made it (the alias `netagent:<data dir>`)
//! - inside a sandbox: `br0` (gateway address, up), `vxlan0` (VNI, dstport
//!   4789, learning off, proxy on, local = vtep, created in the node
//!   namespace under a temporary unique name, then moved in and renamed)
//! - host-side veth of an endpoint, inside the sandbox: `ve-<first 8 chars
//!   of the endpoint id>`, enslaved to br0
//! - container side: moved into the container namespace, renamed to the
//!   requested ifname (`eth0`), MAC, IP/prefix, up, default route via the
//!   gateway if the container has no default route yet.
//! - uplink of a non-internal network: `gw0` in the sandbox, `nagw<vni>` in
//!   the node namespace (169.254.0.2 / 169.254.0.1, the same on every uplink)
//! - nf_tables table `ip netagent_<netns_prefix sanitised>` in the node
//!   namespace: a masquerade rule per network, one rule isolating uplinks

use super::{endpoint, masquerade, netns, peers, sandbox, uplink};
pub use super::{
    error::OverlayError,
    spec::{Attachment, OverlayConfig},
};
use crate::model::{Network, Peer};

pub struct Overlay {
    config: OverlayConfig,
    /// Serialises sandbox creation and removal (two concurrent
    /// `ensure_sandbox` calls would race on the temporary vxlan name).
    sandbox_lock: tokio::sync::Mutex<()>,
}

impl Overlay {
    pub fn new(config: OverlayConfig) -> Result<Self, OverlayError> {
        if config.netns_prefix.is_empty() || config.netns_prefix.contains('/') {
            return Err(OverlayError::Config(format!(
                "--netns-prefix {:?} must be non-empty and hold no '/': fix --netns-prefix (netns_prefix in the config file)",
                config.netns_prefix
            )));
        }
        if config.underlay.is_empty() {
            return Err(OverlayError::Config(
                "no underlay interface: restart netagent with --advertise-addr set to an address of one of this node's interfaces".into(),
            ));
        }
        Ok(Self {
            config,
            sandbox_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The sandbox namespace's name for `network`.
    pub fn sandbox_name(&self, network: &Network) -> String {
        sandbox::name(&self.config.netns_prefix, network.vni)
    }

    /// Creates the sandbox of `network`, or adopts it as it is when it exists
    /// already (a restart changes nothing that was right; a missing or wrong
    /// piece is repaired).
    ///
    /// A non-internal network also gets its way out through the node: the
    /// uplink veth and the masquerade rule. An internal network gets neither
    /// (and loses them if it had them).
    pub async fn ensure_sandbox(&self, network: &Network) -> Result<(), OverlayError> {
        let _guard = self.sandbox_lock.lock().await;
        let existed = netns::is_namespace(&netns::named_path(&self.sandbox_name(network)));
        sandbox::ensure(&self.config, network).await?;
        let result = if network.internal {
            self.remove_egress(network).await
        } else {
            self.ensure_egress(network).await
        };
        if let Err(error) = &result {
            if !existed {
                // Leave nothing half-built behind that we made in this call.
                tracing::warn!(vni = network.vni, %error, "egress setup failed; removing the new sandbox");
                if let Err(cleanup) = self.remove_all(network).await {
                    tracing::warn!(vni = network.vni, error = %cleanup, "cleanup failed");
                }
            }
        }
        result
    }

    /// Sets up the return path of published-port flows of `network`
    /// through this node's ingress address `addr` (see `ingress_path`).
    pub async fn ensure_ingress_path(
        &self,
        network: &Network,
        addr: std::net::Ipv4Addr,
    ) -> Result<(), OverlayError> {
        let _guard = self.sandbox_lock.lock().await;
        super::ingress_path::ensure(&self.config, network, addr).await
    }

    /// Removes what `ensure_ingress_path` set up in the node namespace.
    pub async fn remove_ingress_path(&self, network: &Network) -> Result<(), OverlayError> {
        let _guard = self.sandbox_lock.lock().await;
        super::ingress_path::remove(&self.config, network).await
    }

    /// Removes the sandbox of `network`, in the reverse order of setup: its
    /// masquerade rule (the table with the last one), its uplink, then
    /// vxlan, bridge and namespace. Carries on past errors and reports them
    /// all. A sandbox that does not exist is not an error.
    pub async fn remove_sandbox(&self, network: &Network) -> Result<(), OverlayError> {
        let _guard = self.sandbox_lock.lock().await;
        self.remove_all(network).await
    }

    async fn ensure_egress(&self, network: &Network) -> Result<(), OverlayError> {
        uplink::ensure(&self.config, network).await?;
        masquerade::ensure(&self.config, network).await
    }

    /// Removes the uplink and masquerade rule of `network`, if any.
    async fn remove_egress(&self, network: &Network) -> Result<(), OverlayError> {
        let mut errors = Vec::new();
        if let Err(error) = super::ingress_path::remove(&self.config, network).await {
            errors.push(error.to_string());
        }
        self.remove_egress_into(network, &mut errors).await;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(OverlayError::Cleanup {
                sandbox: self.sandbox_name(network),
                errors,
            })
        }
    }

    async fn remove_egress_into(&self, network: &Network, errors: &mut Vec<String>) {
        if let Err(error) = masquerade::remove(&self.config, network).await {
            errors.push(error.to_string());
        }
        uplink::remove(&self.config, network, errors).await;
    }

    async fn remove_all(&self, network: &Network) -> Result<(), OverlayError> {
        // Another agent's sandbox of the same name keeps all its parts.
        sandbox::check_ours(&self.config, network).await?;
        let mut errors = Vec::new();
        self.remove_egress_into(network, &mut errors).await;
        match sandbox::remove(&self.config, network).await {
            Ok(()) => {}
            Err(OverlayError::Cleanup { errors: more, .. }) => errors.extend(more),
            Err(other) => errors.push(other.to_string()),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(OverlayError::Cleanup {
                sandbox: self.sandbox_name(network),
                errors,
            })
        }
    }

    /// VNIs of the sandboxes that exist now (for adoption after a restart).
    pub async fn sandboxes(&self) -> Result<Vec<u32>, OverlayError> {
        Ok(sandbox::list(&self.config).await)
    }

    /// Attaches a container; on failure removes whatever it created.
    pub async fn attach(
        &self,
        network: &Network,
        attachment: &Attachment,
    ) -> Result<(), OverlayError> {
        endpoint::attach(&self.config, network, attachment).await
    }

    /// Detaches endpoint `endpoint_id` (deletes its veth pair). Detaching an
    /// endpoint whose veth is already gone is not an error.
    pub async fn detach(&self, network: &Network, endpoint_id: &str) -> Result<(), OverlayError> {
        endpoint::detach(&self.config, network, endpoint_id).await
    }

    /// Endpoint ids whose host veth exists in the sandbox (adoption). The full
    /// id is read back from the veth's alias, which `attach` sets; a veth
    /// without an alias yields the 8-character prefix of its name.
    pub async fn attached(&self, network: &Network) -> Result<Vec<String>, OverlayError> {
        endpoint::attached(&self.config, network).await
    }

    /// Static FDB entry (MAC → VTEP) and permanent neighbour (IP → MAC) for a
    /// remote endpoint. Idempotent.
    pub async fn add_peer(&self, network: &Network, peer: &Peer) -> Result<(), OverlayError> {
        peers::add(&self.config, network, peer).await
    }

    /// Removes a remote endpoint's FDB and neighbour entries. Idempotent.
    pub async fn remove_peer(&self, network: &Network, peer: &Peer) -> Result<(), OverlayError> {
        peers::remove(&self.config, network, peer).await
    }

    /// The remote endpoints programmed in the sandbox now (FDB entries joined
    /// with neighbour entries on the MAC).
    pub async fn peers(&self, network: &Network) -> Result<Vec<Peer>, OverlayError> {
        peers::list(&self.config, network).await
    }
}
