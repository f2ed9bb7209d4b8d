//! The tunnel client's config file.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    config::{ConfigError, Locator},
    tunnel::keys::{self, Key},
};

/// Default routing table and rule priority for the one source rule per address family.
pub const DEFAULT_TABLE: u32 = 7744;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    gateway: Spanned<String>,
    gateway_key: Spanned<String>,
    key: Spanned<String>,
    interface: Spanned<String>,
    addresses: Spanned<Vec<Spanned<String>>>,
    table: Option<Spanned<i64>>,
    user: Option<Spanned<String>>,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` or `[v6]:port`, resolved at each connect.
    pub gateway: String,
    pub gateway_key: Key,
    pub key_path: PathBuf,
    pub key: Key,
    pub interface: String,
    /// At most one per family: where connections from clients of that family arrive.
    pub v4: Option<(std::net::Ipv4Addr, u8)>,
    pub v6: Option<(std::net::Ipv6Addr, u8)>,
    /// The routing table for the source rules, and the rules' priority.
    pub table: u32,
    /// The user to switch to once the TUN, the rules and the TC programs are set up.
    pub user: Option<String>,
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        ClientConfig::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ClientConfig, ConfigError> {
        let at = Locator { file: path, text };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            at.error(span, "", e.message().trim_end())
        })?;
        let gateway = raw.gateway.get_ref().trim().to_string();
        if gateway
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().map_or(true, |p| p == 0))
        {
            return Err(at.at(
                &raw.gateway,
                "gateway",
                "expected \"host:port\", \"ip:port\" or \"[v6]:port\"",
            ));
        }
        let gateway_key = keys::parse(raw.gateway_key.get_ref())
            .map_err(|e| at.at(&raw.gateway_key, "gateway_key", e))?;
        let key_path = path
            .parent()
            .unwrap_or(Path::new("."))
            .join(raw.key.get_ref());
        let key = keys::read_private(&key_path).map_err(|e| at.at(&raw.key, "key", e))?;
        let interface = raw.interface.get_ref().clone();
        // IFNAMSIZ is 16 with the terminating NUL.
        if interface.is_empty()
            || interface.len() > 15
            || !interface
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(at.at(
                &raw.interface,
                "interface",
                "an interface name is 1-15 letters, digits, `-`, `_` or `.`",
            ));
        }
        let (mut v4, mut v6) = (None, None);
        if raw.addresses.get_ref().is_empty() {
            return Err(at.at(
                &raw.addresses,
                "addresses",
                "needs an IPv4 address, an IPv6 address, or one of each",
            ));
        }
        for a in raw.addresses.get_ref() {
            let bad = || {
                at.at(
                    a,
                    "addresses",
                    format!(
                        "`{}` is not an address with a prefix, like \"100.64.77.1/32\"",
                        a.get_ref()
                    ),
                )
            };
            let (ip, len) = a.get_ref().split_once('/').ok_or_else(bad)?;
            let ip: IpAddr = ip.parse().map_err(|_| bad())?;
            let len: u8 = len.parse().map_err(|_| bad())?;
            let twice = || at.at(a, "addresses", "one address per family");
            match ip {
                IpAddr::V4(ip) if len <= 32 => {
                    if v4.replace((ip, len)).is_some() {
                        return Err(twice());
                    }
                }
                IpAddr::V6(ip) if len <= 128 => {
                    if v6.replace((ip, len)).is_some() {
                        return Err(twice());
                    }
                }
                _ => return Err(bad()),
            }
        }
        let table = match &raw.table {
            None => DEFAULT_TABLE,
            Some(t) => match u32::try_from(*t.get_ref()) {
                // 0 and 253-255 are the kernel's own tables (unspec, default, main, local).
                Ok(n) if n != 0 && !(253..=255).contains(&n) => n,
                _ => return Err(at.at(t, "table", "a routing table id, 1-252 or 256 and up")),
            },
        };
        let user = match &raw.user {
            None => None,
            Some(u) if crate::privileges::valid_user_name(u.get_ref()) => Some(u.get_ref().clone()),
            Some(u) => return Err(at.at(u, "user", "not a user name")),
        };
        Ok(ClientConfig {
            gateway,
            gateway_key,
            key_path,
            key,
            interface,
            v4,
            v6,
            table,
            user,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::keys::{encode, generate, write_private};

    fn setup() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let (private, _) = generate().unwrap();
        write_private(&dir.path().join("tunnel.key"), &private).unwrap();
        let (_, gw) = generate().unwrap();
        (dir, encode(&gw))
    }

    fn parse(dir: &Path, text: &str) -> Result<ClientConfig, ConfigError> {
        ClientConfig::parse(&dir.join("client.toml"), text)
    }

    #[test]
    fn the_documented_example_parses() {
        let (dir, gw) = setup();
        let c = parse(
            dir.path(),
            &format!(
                "gateway = \"[200:1234::1]:7444\"\ngateway_key = \"{gw}\"\nkey = \"tunnel.key\"\n\
                 interface = \"astg0\"\naddresses = [\"100.64.77.1/32\", \"fd64:77::1/128\"]\n"
            ),
        )
        .unwrap();
        assert_eq!(c.v4, Some(("100.64.77.1".parse().unwrap(), 32)));
        assert_eq!(c.v6, Some(("fd64:77::1".parse().unwrap(), 128)));
        assert_eq!(c.table, DEFAULT_TABLE);
        assert_eq!(c.key_path, dir.path().join("tunnel.key"));
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let (dir, gw) = setup();
        let base = format!("gateway_key = \"{gw}\"\nkey = \"tunnel.key\"\ninterface = \"astg0\"\n");
        for (extra, key) in [
            (
                "gateway = \"nope\"\naddresses = [\"100.64.77.1/32\"]",
                "gateway",
            ),
            (
                "gateway = \"h:1\"\naddresses = [\"100.64.77.1\"]",
                "addresses",
            ),
            (
                "gateway = \"h:1\"\naddresses = [\"1.2.3.4/32\", \"5.6.7.8/32\"]",
                "addresses",
            ),
            ("gateway = \"h:1\"\naddresses = []", "addresses"),
            (
                "gateway = \"h:1\"\naddresses = [\"1.2.3.4/32\"]\ntable = 254",
                "table",
            ),
        ] {
            let err = parse(dir.path(), &format!("{base}{extra}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!(": {key}: ")), "{err}");
            assert!(err.contains("client.toml:"), "{err}");
        }
        let err = parse(
            dir.path(),
            &format!("{base}gateway = \"h:1\"\naddresses = [\"1.2.3.4/32\"]\nkey2 = 1\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("client.toml:6:"), "{err}");
    }
}
