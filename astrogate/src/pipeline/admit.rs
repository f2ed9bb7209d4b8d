//! The admit stage: whether a connection may be served at all, before a byte is read.
//!
//! The listener's `allow` and `deny` lists, the gateway's `max_connections` and the listener's
//! `max_connections_per_source` are checked here, where a refusal costs nothing but the
//! accepted socket.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use super::Snapshot;
use crate::{config::ListenerConfig, reply::Refusal};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Refused by an access list: told so in its protocol.
    Refused(Refusal),
    /// Over a connection limit: closed at once, without reading a byte.
    Limited(&'static str),
}

/// The open client connections, over all listeners, and per listener and source. Runtime
/// state: it outlives every config, so a reload that lowers a limit counts the connections
/// already open.
#[derive(Debug, Default)]
pub struct Limiter {
    open: AtomicUsize,
    per_source: Mutex<HashMap<(Arc<str>, SourceKey), usize>>,
}

/// What `max_connections_per_source` counts: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64, so counting single IPv6 addresses would count nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl SourceKey {
    fn of(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                SourceKey::V6(prefix)
            }
        }
    }
}

impl Limiter {
    pub fn new() -> Arc<Limiter> {
        Arc::new(Limiter::default())
    }

    /// Open client connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn per_source(&self) -> std::sync::MutexGuard<'_, HashMap<(Arc<str>, SourceKey), usize>> {
        self.per_source.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An admitted connection's place in the counts, given back when it is dropped.
#[derive(Debug)]
pub struct Admission {
    limiter: Arc<Limiter>,
    key: (Arc<str>, SourceKey),
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.limiter.open.fetch_sub(1, Ordering::Relaxed);
        let mut per_source = self.limiter.per_source();
        if let Some(n) = per_source.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per_source.remove(&self.key);
            }
        }
    }
}

pub fn admit(
    snapshot: &Snapshot,
    listener: &ListenerConfig,
    client: SocketAddr,
    limiter: &Arc<Limiter>,
) -> Result<Admission, Rejection> {
    if !listener.acl.permits(client.ip()) {
        return Err(Rejection::Refused(Refusal::Denied));
    }
    let key = (
        Arc::from(listener.name.as_str()),
        SourceKey::of(client.ip()),
    );
    let open = limiter.open.fetch_add(1, Ordering::Relaxed) + 1;
    let from_source = {
        let mut per_source = limiter.per_source();
        let n = per_source.entry(key.clone()).or_insert(0);
        *n += 1;
        *n
    };
    // From here on the admission gives both counts back, whatever happens.
    let admission = Admission {
        limiter: limiter.clone(),
        key,
    };
    if snapshot
        .settings
        .max_connections
        .is_some_and(|max| open > max)
    {
        return Err(Rejection::Limited("gateway.max_connections"));
    }
    if listener
        .max_connections_per_source
        .is_some_and(|max| from_source > max)
    {
        return Err(Rejection::Limited("max_connections_per_source"));
    }
    Ok(admission)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_count_by_64_and_mapped_ipv4_as_ipv4() {
        let a = SourceKey::of("2001:db8:1:2::1".parse().unwrap());
        let b = SourceKey::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = SourceKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            SourceKey::of("::ffff:192.0.2.1".parse().unwrap()),
            SourceKey::of("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn admissions_give_their_counts_back() {
        let limiter = Limiter::new();
        let key = (
            Arc::from("web"),
            SourceKey::of("192.0.2.1".parse().unwrap()),
        );
        let admissions: Vec<_> = (0..3)
            .map(|_| {
                limiter.open.fetch_add(1, Ordering::Relaxed);
                *limiter.per_source().entry(key.clone()).or_insert(0) += 1;
                Admission {
                    limiter: limiter.clone(),
                    key: key.clone(),
                }
            })
            .collect();
        assert_eq!(limiter.open(), 3);
        assert_eq!(limiter.per_source().get(&key), Some(&3));
        drop(admissions);
        assert_eq!(limiter.open(), 0);
        assert!(limiter.per_source().is_empty());
    }
}
