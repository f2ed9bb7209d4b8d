//! The admit stage: whether a connection may be served at all.
//!
//! The gateway's `max_connections` is checked before a byte is read. The listener's `allow`
//! and `deny` lists and its `max_connections_per_source` are checked as soon as the client is
//! known: at once for an ordinary connection, after the PROXY header for one from a trusted
//! load balancer. Either way a refusal costs nothing but the accepted socket.
use std::{
    collections::HashMap,
    net::IpAddr,
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
    /// Set once the source is known and counted.
    key: Option<(Arc<str>, SourceKey)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.limiter.open.fetch_sub(1, Ordering::Relaxed);
        let Some(key) = &self.key else { return };
        let mut per_source = self.limiter.per_source();
        if let Some(n) = per_source.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                per_source.remove(key);
            }
        }
    }
}

/// Counts a new connection against `gateway.max_connections`, before a byte is read.
pub fn admit(snapshot: &Snapshot, limiter: &Arc<Limiter>) -> Result<Admission, Rejection> {
    let open = limiter.open.fetch_add(1, Ordering::Relaxed) + 1;
    // From here on the admission gives the count back, whatever happens.
    let admission = Admission {
        limiter: limiter.clone(),
        key: None,
    };
    if snapshot
        .settings
        .max_connections
        .is_some_and(|max| open > max)
    {
        return Err(Rejection::Limited("gateway.max_connections"));
    }
    Ok(admission)
}

impl Admission {
    /// Checks the client's address against the listener's `allow` and `deny` lists and counts
    /// it against `max_connections_per_source`. The client is the connection's peer, or the
    /// one a trusted peer's PROXY header names, so this runs after the preamble stage.
    pub fn source(&mut self, listener: &ListenerConfig, client: IpAddr) -> Result<(), Rejection> {
        if !listener.acl.permits(client) {
            return Err(Rejection::Refused(Refusal::Denied));
        }
        let key = (Arc::from(listener.name.as_str()), SourceKey::of(client));
        let from_source = {
            let mut per_source = self.limiter.per_source();
            let n = per_source.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        self.key = Some(key);
        if listener
            .max_connections_per_source
            .is_some_and(|max| from_source > max)
        {
            return Err(Rejection::Limited("max_connections_per_source"));
        }
        Ok(())
    }
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
                    key: Some(key.clone()),
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
