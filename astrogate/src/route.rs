//! The routing table: which target a hostname goes to.
//!
//! Precedence, most specific first: an exact name beats every wildcard; among wildcards the one
//! with the longest suffix wins (`*.a.example.com` beats `*.example.com`). The same pattern in
//! two routes is a config error, so there is never a tie to break. A route limited to some
//! listeners is invisible to the others, and the lookup falls through to less specific routes.
use std::{collections::HashMap, fmt};

use crate::{sniff::Hostname, target::Target};

/// A `hosts` entry: `name` or `*.suffix`. A wildcard matches one or more labels in front of
/// the suffix, never the suffix itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(Hostname),
    Wildcard(Hostname),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, &'static str> {
        match s.strip_prefix("*.") {
            Some(suffix) => Hostname::parse(suffix.as_bytes())
                .map(HostPattern::Wildcard)
                .map_err(|_| "invalid wildcard: use `*.` followed by a hostname"),
            None if s.contains('*') => {
                Err("`*` is only allowed as the whole first label: `*.example.com`")
            }
            None => Hostname::parse(s.as_bytes())
                .map(HostPattern::Exact)
                .map_err(|_| "invalid hostname"),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => write!(f, "{h}"),
            HostPattern::Wildcard(h) => write!(f, "*.{h}"),
        }
    }
}

/// What to do with an ACME HTTP-01 challenge request for a route's hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcmeAction {
    /// Forward the request to this target.
    Proxy(Target),
    /// Answer with a redirect to `{base}{path}`; `base` is `http://host` or `https://host`.
    Redirect(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub hosts: Vec<HostPattern>,
    pub to: Target,
    pub acme: Option<AcmeAction>,
    /// Listener names this route serves; `None` serves all.
    pub listeners: Option<Vec<String>>,
    /// Client addresses this route serves.
    pub acl: crate::acl::SourceAcl,
    /// A PROXY protocol header to send the upstream first.
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
}

impl Route {
    fn serves(&self, listener: &str) -> bool {
        self.listeners
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == listener))
    }
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact: HashMap<Hostname, usize>,
    wildcard: HashMap<Hostname, usize>,
}

/// A pattern that appears in two routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicatePattern {
    pub pattern: HostPattern,
    pub first_route: usize,
}

impl RouteTable {
    /// Adds a route; fails if one of its patterns is already taken by an earlier route.
    pub fn push(&mut self, route: Route) -> Result<(), DuplicatePattern> {
        let index = self.routes.len();
        for pattern in &route.hosts {
            let (map, key) = match pattern {
                HostPattern::Exact(h) => (&mut self.exact, h),
                HostPattern::Wildcard(h) => (&mut self.wildcard, h),
            };
            if let Some(&first_route) = map.get(key) {
                if first_route != index {
                    return Err(DuplicatePattern {
                        pattern: pattern.clone(),
                        first_route,
                    });
                }
            }
            map.insert(key.clone(), index);
        }
        self.routes.push(route);
        Ok(())
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The most specific route for `host` that serves `listener`.
    pub fn lookup(&self, host: &Hostname, listener: &str) -> Option<&Route> {
        let serving = |i: &usize| Some(&self.routes[*i]).filter(|r| r.serves(listener));
        if let Some(route) = self.exact.get(host).and_then(serving) {
            return Some(route);
        }
        // Walk the suffixes from longest to shortest: the first wildcard hit is the most
        // specific one. Cost is one hash lookup per label.
        let mut rest = host.as_str();
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(route) = self.wildcard.get(suffix).and_then(serving) {
                return Some(route);
            }
            rest = suffix;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(hosts: &[&str], to: &str, listeners: Option<&[&str]>) -> Route {
        Route {
            hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            to: to.parse().unwrap(),
            acme: None,
            listeners: listeners.map(|l| l.iter().map(|s| s.to_string()).collect()),
            acl: Default::default(),
            proxy_protocol: None,
        }
    }

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        t.push(route(
            &["blog.example.com", "*.blog.example.com"],
            "[201::1]",
            None,
        ))
        .unwrap();
        t.push(route(&["*.example.com"], "[201::2]", None)).unwrap();
        t.push(route(&["a.b.blog.example.com"], "[201::3]", None))
            .unwrap();
        t.push(route(
            &["*.internal.example.com"],
            "[201::4]",
            Some(&["ygg"]),
        ))
        .unwrap();
        t
    }

    fn to(t: &RouteTable, host: &str, listener: &str) -> Option<String> {
        let h = Hostname::parse(host.as_bytes()).unwrap();
        t.lookup(&h, listener).map(|r| r.to.to_string())
    }

    #[test]
    fn most_specific_wins() {
        let t = table();
        assert_eq!(to(&t, "blog.example.com", "x").as_deref(), Some("[201::1]"));
        assert_eq!(
            to(&t, "BLOG.example.com.", "x").as_deref(),
            Some("[201::1]")
        );
        assert_eq!(
            to(&t, "x.blog.example.com", "x").as_deref(),
            Some("[201::1]")
        );
        assert_eq!(
            to(&t, "y.x.blog.example.com", "x").as_deref(),
            Some("[201::1]")
        );
        assert_eq!(
            to(&t, "a.b.blog.example.com", "x").as_deref(),
            Some("[201::3]")
        );
        assert_eq!(to(&t, "shop.example.com", "x").as_deref(), Some("[201::2]"));
        assert_eq!(to(&t, "example.com", "x"), None);
        assert_eq!(to(&t, "example.org", "x"), None);
    }

    #[test]
    fn listener_restriction_falls_through() {
        let t = table();
        assert_eq!(
            to(&t, "db.internal.example.com", "ygg").as_deref(),
            Some("[201::4]")
        );
        assert_eq!(
            to(&t, "db.internal.example.com", "https").as_deref(),
            Some("[201::2]")
        );
    }

    #[test]
    fn duplicate_patterns_are_rejected() {
        let mut t = table();
        let err = t
            .push(route(&["*.example.com"], "[201::9]", None))
            .unwrap_err();
        assert_eq!(err.first_route, 1);
    }

    #[test]
    fn pattern_syntax() {
        assert!(HostPattern::parse("*").is_err());
        assert!(HostPattern::parse("*example.com").is_err());
        assert!(HostPattern::parse("a.*.example.com").is_err());
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap().to_string(),
            "*.example.com"
        );
    }
}
