//! `[tunnels]` and `[[tunnel]]`: the gateway's side of tunnel mode.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use toml::Spanned;

use super::{duration, raw, ConfigError, Locator, Target, TargetHost};
use crate::tunnel::keys::{self, Key};

/// Default for `tunnels.heartbeat`: how often each side pings the other. Three missed
/// intervals mean the path is dead.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelsConfig {
    pub bind: Vec<SocketAddr>,
    pub key_path: PathBuf,
    /// The gateway's private key, read when the config is loaded.
    pub key: Key,
    pub heartbeat: Duration,
    /// Which tunnel each accepted client key serves.
    pub peers: HashMap<Key, String>,
}

impl TunnelsConfig {
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.peers.values()
    }
}

pub(super) fn validate(
    raw: &raw::RawConfig,
    config_path: &Path,
    at: &Locator<'_>,
) -> Result<Option<TunnelsConfig>, ConfigError> {
    let Some(t) = &raw.tunnels else {
        if let Some(first) = raw.tunnel.first() {
            return Err(at.at(
                first,
                "tunnel",
                "a [[tunnel]] needs a [tunnels] section (bind and key) to accept clients",
            ));
        }
        check_targets(raw, &HashSet::new(), at)?;
        return Ok(None);
    };
    let t = t.get_ref();
    if t.bind.get_ref().is_empty() {
        return Err(at.at(&t.bind, "tunnels.bind", "needs at least one address"));
    }
    let mut bind = Vec::new();
    for b in t.bind.get_ref() {
        let addr: SocketAddr = b.get_ref().parse().map_err(|_| {
            at.at(
                b,
                "tunnels.bind",
                format!("`{}` is not \"ip:port\" or \"[v6]:port\"", b.get_ref()),
            )
        })?;
        if bind.contains(&addr) {
            return Err(at.at(b, "tunnels.bind", format!("{addr} is listed twice")));
        }
        bind.push(addr);
    }
    // A relative key path is relative to the config file, as an operator reading it expects.
    let key_path = config_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(t.key.get_ref());
    let key = keys::read_private(&key_path).map_err(|e| at.at(&t.key, "tunnels.key", e))?;
    let heartbeat = match &t.heartbeat {
        None => DEFAULT_HEARTBEAT,
        Some(v) => {
            let d = duration::parse(v.get_ref()).map_err(|e| at.at(v, "tunnels.heartbeat", e))?;
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                return Err(at.at(v, "tunnels.heartbeat", "must be between 100ms and 1h"));
            }
            d
        }
    };
    let mut peers = HashMap::new();
    let mut names = HashSet::new();
    for (i, p) in raw.tunnel.iter().enumerate() {
        let p = p.get_ref();
        let key_of = |k: &str| format!("tunnel[{i}].{k}");
        let name = p.name.get_ref().trim();
        if !crate::target::valid_tunnel_name(name) {
            return Err(at.at(
                &p.name,
                &key_of("name"),
                "use up to 64 letters, digits, `-`, `_` or `.`",
            ));
        }
        if !names.insert(name.to_string()) {
            return Err(at.at(&p.name, &key_of("name"), "duplicate tunnel name"));
        }
        let public = keys::parse(p.key.get_ref()).map_err(|e| at.at(&p.key, &key_of("key"), e))?;
        if let Some(other) = peers.insert(public, name.to_string()) {
            return Err(at.at(
                &p.key,
                &key_of("key"),
                format!("tunnel `{other}` has the same key: one key serves one tunnel"),
            ));
        }
    }
    check_targets(raw, &names, at)?;
    Ok(Some(TunnelsConfig {
        bind,
        key_path,
        key,
        heartbeat,
        peers,
    }))
}

/// Every `tunnel:NAME` target must name a `[[tunnel]]`.
fn check_targets(
    raw: &raw::RawConfig,
    names: &HashSet<String>,
    at: &Locator<'_>,
) -> Result<(), ConfigError> {
    let check = |v: &Spanned<String>, key: String| -> Result<(), ConfigError> {
        if let Ok(Target {
            host: TargetHost::Tunnel(name),
            ..
        }) = v.get_ref().parse::<Target>()
        {
            if !names.contains(&name) {
                return Err(at.at(v, &key, format!("no [[tunnel]] is named `{name}`")));
            }
        }
        Ok(())
    };
    for (i, l) in raw.listener.iter().enumerate() {
        let l = l.get_ref();
        for (v, k) in [(&l.to, "to"), (&l.default, "default")] {
            if let Some(v) = v {
                check(v, format!("listener[{i}].{k}"))?;
            }
        }
    }
    for (i, r) in raw.route.iter().enumerate() {
        let r = r.get_ref();
        check(&r.to, format!("route[{i}].to"))?;
        if let Some(v) = &r.acme {
            check(v, format!("route[{i}].acme"))?;
        }
    }
    Ok(())
}
