//! What the tunnel client changes on its host, and how it puts it back.
//!
//! At start, and only then:
//! - the TUN interface (`interface`), with the configured addresses on it;
//! - one routing table (`table`) holding a default route into the TUN per family;
//! - one rule per family, `from <address> lookup <table>` at priority `table`.
//!
//! Nothing changes while connections come and go. The rule is what sends every reply from the
//! TUN's addresses back into the TUN, whatever the main table says (the host may have its own
//! default route, or only Yggdrasil's 200::/7), and what lets strict reverse-path filtering
//! accept packets from internet addresses arriving on the TUN: the reverse path of such a
//! packet is looked up from the TUN's address, so it matches the rule. The host's own
//! connections use its other addresses, so they never match it.
use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::{
    packet_route::{
        rule::{RuleAction, RuleAttribute, RuleMessage},
        IpProtocol,
    },
    Handle, IpVersion, RouteMessageBuilder,
};

use super::config::ClientConfig;

/// The UDP fallback rule's priority: after `main` (32766) and `default` (32767), so it is
/// consulted only for UDP that the main table has no route for. A service bound to the
/// wildcard answers an internet client with no source of its own; on a host with no route to
/// that client (one that only has Yggdrasil, say) the reply would fail in sendto before any
/// TC program could steer it. With this one rule per family, installed at start, it takes the
/// tunnel's table instead, gets the TUN's address as source, and reaches the flow. UDP to an
/// unroutable place that is no flow's enters the TUN and is dropped there (counted as a
/// stray) rather than failing at once.
const UDP_FALLBACK_PRIORITY: u32 = 32_800;
use super::stack::TUN_MTU;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("creating TUN `{name}`: {reason}")]
    Tun { name: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn netlink(what: &str) -> impl FnOnce(rtnetlink::Error) -> HostError + '_ {
    move |e| HostError::Netlink(format!("{what}: {e}"))
}

/// The host changes in force; `remove` takes them back.
pub struct Host {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
    interface: String,
    table: u32,
    pub ifindex: u32,
}

impl Host {
    /// Removes what an earlier run left (a client killed outright), then creates the TUN and
    /// installs the addresses, routes and rules.
    pub async fn setup(config: &ClientConfig) -> Result<(tun::AsyncDevice, Host), HostError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| HostError::Io {
                what: "opening a netlink socket".into(),
                source,
            })?;
        let connection = tokio::spawn(connection);
        let host = Host {
            handle,
            connection,
            interface: config.interface.clone(),
            table: config.table,
            ifindex: 0,
        };
        host.remove_changes().await?;
        let mut tun_config = tun::Configuration::default();
        tun_config
            .tun_name(&config.interface)
            .mtu(TUN_MTU as u16)
            .up();
        let device = tun::create_as_async(&tun_config).map_err(|e| HostError::Tun {
            name: config.interface.clone(),
            reason: e.to_string(),
        })?;
        let mut host = host;
        host.ifindex = host.link_index().await?.ok_or_else(|| {
            HostError::Netlink(format!("{} vanished after creation", config.interface))
        })?;
        // Packets to a tentative IPv6 address are dropped until duplicate address detection
        // ends; on a point-to-point TUN there is nothing to detect.
        if config.v6.is_some() {
            let path = format!("/proc/sys/net/ipv6/conf/{}/accept_dad", config.interface);
            std::fs::write(&path, "0").map_err(|source| HostError::Io {
                what: path.clone(),
                source,
            })?;
        }
        host.install(config).await?;
        Ok((device, host))
    }

    async fn install(&self, config: &ClientConfig) -> Result<(), HostError> {
        let h = &self.handle;
        let (idx, table) = (self.ifindex, self.table);
        if let Some((ip, len)) = config.v4 {
            h.address()
                .add(idx, IpAddr::V4(ip), len)
                .execute()
                .await
                .map_err(netlink("adding the IPv4 address"))?;
            let route = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .output_interface(idx)
                .table_id(table)
                .build();
            h.route()
                .add(route)
                .execute()
                .await
                .map_err(netlink("adding the IPv4 tunnel route"))?;
            h.rule()
                .add()
                .v4()
                .source_prefix(ip, len)
                .table_id(table)
                .priority(table)
                .action(RuleAction::ToTable)
                .execute()
                .await
                .map_err(netlink("adding the IPv4 source rule"))?;
            let mut fallback = h
                .rule()
                .add()
                .v4()
                .table_id(table)
                .priority(UDP_FALLBACK_PRIORITY)
                .action(RuleAction::ToTable);
            fallback
                .message_mut()
                .attributes
                .push(RuleAttribute::IpProtocol(IpProtocol::Udp));
            fallback
                .execute()
                .await
                .map_err(netlink("adding the IPv4 UDP fallback rule"))?;
        }
        if let Some((ip, len)) = config.v6 {
            h.address()
                .add(idx, IpAddr::V6(ip), len)
                .execute()
                .await
                .map_err(netlink("adding the IPv6 address"))?;
            let route = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .output_interface(idx)
                .table_id(table)
                .build();
            h.route()
                .add(route)
                .execute()
                .await
                .map_err(netlink("adding the IPv6 tunnel route"))?;
            h.rule()
                .add()
                .v6()
                .source_prefix(ip, len)
                .table_id(table)
                .priority(table)
                .action(RuleAction::ToTable)
                .execute()
                .await
                .map_err(netlink("adding the IPv6 source rule"))?;
            let mut fallback = h
                .rule()
                .add()
                .v6()
                .table_id(table)
                .priority(UDP_FALLBACK_PRIORITY)
                .action(RuleAction::ToTable);
            fallback
                .message_mut()
                .attributes
                .push(RuleAttribute::IpProtocol(IpProtocol::Udp));
            fallback
                .execute()
                .await
                .map_err(netlink("adding the IPv6 UDP fallback rule"))?;
        }
        Ok(())
    }

    async fn link_index(&self) -> Result<Option<u32>, HostError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(self.interface.clone())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            // No such device.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(netlink("looking up the interface")(e)),
        }
    }

    /// Removes the rules this client installs (found by priority and table) and the TUN (its
    /// routes go with it).
    async fn remove_changes(&self) -> Result<(), HostError> {
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
                .map_err(netlink("listing rules"))?;
            for rule in rules.into_iter().filter(|r| self.is_ours(r)) {
                self.handle
                    .rule()
                    .del(rule)
                    .execute()
                    .await
                    .map_err(netlink("removing a rule"))?;
            }
        }
        if let Some(index) = self.link_index().await? {
            self.handle
                .link()
                .del(index)
                .execute()
                .await
                .map_err(netlink("removing the TUN"))?;
        }
        Ok(())
    }

    fn is_ours(&self, rule: &RuleMessage) -> bool {
        let has = |want: &RuleAttribute| rule.attributes.iter().any(|a| a == want);
        (has(&RuleAttribute::Priority(self.table))
            || has(&RuleAttribute::Priority(UDP_FALLBACK_PRIORITY)))
            && (has(&RuleAttribute::Table(self.table))
                || u32::from(rule.header.table) == self.table)
    }

    /// Takes back every change: rules, routes, addresses and the TUN.
    pub async fn remove(self) -> Result<(), HostError> {
        let result = self.remove_changes().await;
        self.connection.abort();
        result
    }
}
