//! Client-address access control: `allow` and `deny` lists of CIDR blocks, on listeners
//! (checked when a connection is admitted) and on routes (checked once sniffing has chosen
//! the route).
use std::net::IpAddr;

use ipnet::IpNet;

/// Which client addresses may use a listener or a route. `deny` wins over `allow`; without an
/// `allow` list every address is allowed (HAProxy's and nginx's default), and an empty one
/// allows none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceAcl {
    allow: Option<Vec<IpNet>>,
    deny: Vec<IpNet>,
}

impl SourceAcl {
    pub fn new(allow: Option<Vec<IpNet>>, deny: Vec<IpNet>) -> SourceAcl {
        SourceAcl { allow, deny }
    }

    /// Whether every source is allowed (no lists).
    pub fn is_open(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }

    /// Whether `ip` may connect. A dual-stack socket shows an IPv4 client as `::ffff:a.b.c.d`,
    /// which is checked as the IPv4 address it is.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return false;
        }
        self.allow
            .as_ref()
            .is_none_or(|allow| allow.iter().any(|net| net.contains(&ip)))
    }
}

/// As `astrogate check` shows it: `allow 192.0.2.0/24, deny 192.0.2.7/32`.
impl std::fmt::Display for SourceAcl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |nets: &[IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        match &self.allow {
            Some(allow) if allow.is_empty() => write!(f, "allow none")?,
            Some(allow) => write!(f, "allow {}", list(allow))?,
            None => write!(f, "allow all")?,
        }
        if !self.deny.is_empty() {
            write!(f, ", deny {}", list(&self.deny))?;
        }
        Ok(())
    }
}

/// Parses `"192.0.2.0/24"`, `"2001:db8::/32"` or a bare address (one host). Host bits under
/// the prefix are an error: `10.0.0.1/8` is more likely a typo than a way to say `10.0.0.0/8`.
pub fn parse_block(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "`{s}` is not an address or an address/prefix block"
                ))
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has bits set below its /{}: did you mean `{}`?",
            net.prefix_len(),
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(allow: Option<&[&str]>, deny: &[&str]) -> SourceAcl {
        let parse = |list: &[&str]| list.iter().map(|s| parse_block(s).unwrap()).collect();
        SourceAcl::new(allow.map(parse), parse(deny))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_lists_allow_everyone() {
        let open = SourceAcl::default();
        assert!(open.permits(ip("203.0.113.9")));
        assert!(open.permits(ip("2001:db8::1")));
    }

    #[test]
    fn deny_wins_over_allow() {
        let a = acl(Some(&["0.0.0.0/0", "::/0"]), &["203.0.113.0/24"]);
        assert!(!a.permits(ip("203.0.113.9")));
        assert!(a.permits(ip("203.0.114.9")));
        assert!(a.permits(ip("2001:db8::1")));
    }

    #[test]
    fn an_allow_list_admits_only_its_blocks_and_empty_admits_none() {
        let a = acl(Some(&["192.0.2.0/24", "2001:db8:1::/48"]), &[]);
        assert!(a.permits(ip("192.0.2.200")));
        assert!(!a.permits(ip("192.0.3.1")));
        assert!(a.permits(ip("2001:db8:1:ffff::1")));
        assert!(!a.permits(ip("2001:db8:2::1")));
        assert!(!acl(Some(&[]), &[]).permits(ip("192.0.2.1")));
    }

    #[test]
    fn mapped_ipv4_is_checked_as_ipv4() {
        let a = acl(None, &["198.51.100.0/24"]);
        assert!(!a.permits(ip("::ffff:198.51.100.7")));
        assert!(a.permits(ip("::ffff:198.51.101.7")));
    }

    #[test]
    fn blocks_parse_strictly() {
        assert_eq!(parse_block("10.1.2.3").unwrap().prefix_len(), 32);
        assert_eq!(parse_block("2001:db8::1").unwrap().prefix_len(), 128);
        assert!(parse_block("10.0.0.1/8")
            .unwrap_err()
            .contains("10.0.0.0/8"));
        assert!(parse_block("10.0.0.0/33").is_err());
        assert!(parse_block("example.com").is_err());
    }
}
