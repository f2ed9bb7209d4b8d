use astrogate_common::{
    Counter, PeerEntry, SockCookie, SockStats, TunnelAddr, TunnelFlow, TunnelFlowStats,
    UdpFlowAction, UdpFlowKey,
};
use aya::{
    maps::{
        Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf,
        SockHash,
    },
    programs::{ProgramError, SchedClassifier, SkSkb, TcAttachType},
    Ebpf, EbpfError,
};

/// The object `cargo xtask build-ebpf` produced, embedded at build time (empty if it was not
/// built).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/astrogate.bpf.o"));

const VERDICT_PROGRAM: &str = "astrogate_verdict";
const TUNNEL_PROGRAM: &str = "astrogate_tunnel_egress";
const STEER_PROGRAM: &str = "astrogate_tunnel_steer";
const UDP_PROGRAM: &str = "astrogate_udp_forward";

/// Size of the embedded eBPF object; 0 when the binary was built without one.
pub fn embedded_object_len() -> usize {
    OBJECT.len()
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this binary has no eBPF object embedded: build it with `cargo xtask build-ebpf`")]
    NotEmbedded,
    #[error("loading the eBPF object failed (root, or CAP_BPF and CAP_NET_ADMIN, is needed): {0}")]
    Load(#[from] EbpfError),
    #[error("the eBPF object has no {kind} named `{name}`")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("eBPF program `{name}`: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("eBPF map `{name}`: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
}

/// The maps the kernel forwarding path reads and writes.
pub struct SpliceMaps {
    /// Sockets whose input the verdict program redirects, keyed by socket cookie.
    pub socks: SockHash<MapData, SockCookie>,
    /// Every spliced socket: the redirect targets.
    pub targets: SockHash<MapData, SockCookie>,
    /// Where each socket's input goes, and its backlog limit.
    pub peers: HashMap<MapData, SockCookie, PeerEntry>,
    /// Per-socket byte counts kept by the program.
    pub stats: HashMap<MapData, SockCookie, SockStats>,
    /// Per-CPU counters indexed by `Counter`.
    pub counters: PerCpuArray<MapData, u64>,
}

impl SpliceMaps {
    /// Sum of a counter over all CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, MapError> {
        Ok(self.counters.get(&(counter as u32), 0)?.iter().sum())
    }
}

/// The loaded programs. Dropping it detaches them and frees the maps that nothing else holds.
pub struct Kernel {
    _ebpf: Ebpf,
    logs: Option<aya_log::EbpfLogger<super::logs::TracingLog>>,
}

impl Kernel {
    /// The reader of the programs' log ring, once.
    pub fn take_logs(&mut self) -> Option<aya_log::EbpfLogger<super::logs::TracingLog>> {
        self.logs.take()
    }
}

impl Kernel {
    /// Loads the embedded object, attaches the stream verdict to the sockhash, and returns the
    /// map handles and the over-limit event ring.
    pub fn load() -> Result<(Kernel, SpliceMaps, RingBuf<MapData>), LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NotEmbedded);
        }
        let mut ebpf = Ebpf::load(OBJECT)?;
        let socks: SockHash<MapData, SockCookie> = take_map(&mut ebpf, "SOCKS")?;
        let targets = take_map(&mut ebpf, "TARGETS")?;
        let peers = take_map(&mut ebpf, "PEERS")?;
        let stats = take_map(&mut ebpf, "STATS")?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let events = take_map(&mut ebpf, "EVENTS")?;
        let program_error = |source| LoadError::Program {
            name: VERDICT_PROGRAM,
            source,
        };
        let verdict: &mut SkSkb = ebpf
            .program_mut(VERDICT_PROGRAM)
            .ok_or(LoadError::Missing {
                kind: "program",
                name: VERDICT_PROGRAM,
            })?
            .try_into()
            .map_err(program_error)?;
        verdict.load().map_err(program_error)?;
        verdict.attach(socks.fd()).map_err(program_error)?;
        let maps = SpliceMaps {
            socks,
            targets,
            peers,
            stats,
            counters,
        };
        let logs = match aya_log::EbpfLogger::init_with_logger(&mut ebpf, super::logs::TracingLog) {
            Ok(logs) => Some(logs),
            Err(e) => {
                tracing::warn!(error = %e, "the eBPF programs' log is not available");
                None
            }
        };
        Ok((Kernel { _ebpf: ebpf, logs }, maps, events))
    }
}

/// A classifier of the object, loaded.
fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LoadError> {
    let program_error = |source| LoadError::Program { name, source };
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(LoadError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(program_error)?;
    program.load().map_err(program_error)?;
    Ok(program)
}

/// This network namespace's Ethernet interfaces other than `except` (ARPHRD_ETHER in sysfs):
/// where a reply routed by the main table can leave. Interfaces added later are not watched.
fn ethernet_interfaces(except: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != except)
        .filter(|name| {
            std::fs::read_to_string(format!("/sys/class/net/{name}/type"))
                .is_ok_and(|t| t.trim() == "1")
        })
        .collect()
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, LoadError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(LoadError::Missing { kind: "map", name })?;
    M::try_from(map).map_err(|source| LoadError::Map { name, source })
}

/// The tunnel client's program: the TC classifier on its TUN's egress, and its flow map.
/// Dropping it detaches the program (a TCX link, on kernels 6.6 and later).
pub struct TunnelKernel {
    _ebpf: Ebpf,
    /// Open flows, as their packets leave the service host through the TUN.
    pub flows: HashMap<MapData, TunnelFlow, TunnelFlowStats>,
    counters: PerCpuArray<MapData, u64>,
}

impl TunnelKernel {
    /// Loads the embedded object, attaches the counting classifier to `interface`'s egress
    /// (the TUN, whose addresses are `v4` and `v6`) and the steering one to every other
    /// Ethernet interface's egress.
    pub fn attach(
        interface: &str,
        v4: Option<std::net::Ipv4Addr>,
        v6: Option<std::net::Ipv6Addr>,
    ) -> Result<TunnelKernel, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NotEmbedded);
        }
        let mut ebpf = Ebpf::load(OBJECT)?;
        let flows = take_map(&mut ebpf, "TUNNEL_FLOWS")?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let mut addrs: Array<MapData, TunnelAddr> = take_map(&mut ebpf, "TUNNEL_ADDRS")?;
        let ifindex = nix::net::if_::if_nametoindex(interface).unwrap_or(0);
        let entries = [
            v4.map(|a| {
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&a.octets());
                addr
            }),
            v6.map(|a| a.octets()),
        ];
        for (i, addr) in entries.into_iter().enumerate() {
            if let Some(addr) = addr {
                let entry = TunnelAddr { addr, ifindex };
                addrs
                    .set(i as u32, entry, 0)
                    .map_err(|source| LoadError::Map {
                        name: "TUNNEL_ADDRS",
                        source,
                    })?;
            }
        }
        classifier(&mut ebpf, TUNNEL_PROGRAM)?
            .attach(interface, TcAttachType::Egress)
            .map_err(|source| LoadError::Program {
                name: TUNNEL_PROGRAM,
                source,
            })?;
        let steer = classifier(&mut ebpf, STEER_PROGRAM)?;
        for uplink in ethernet_interfaces(interface) {
            if let Err(e) = steer.attach(&uplink, TcAttachType::Egress) {
                tracing::warn!(
                    interface = %uplink, error = %e,
                    "cannot watch this interface for UDP replies that belong in the tunnel"
                );
            }
        }
        Ok(TunnelKernel {
            _ebpf: ebpf,
            flows,
            counters,
        })
    }

    /// Sum of a counter over all CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, MapError> {
        Ok(self.counters.get(&(counter as u32), 0)?.iter().sum())
    }
}

/// The gateway's UDP program: the classifier on the ingress of its Ethernet interfaces that
/// forwards established sessions' datagrams, and its flow map. Dropping it detaches the
/// program.
pub struct UdpKernel {
    _ebpf: Ebpf,
    flows: PerCpuHashMap<MapData, UdpFlowKey, UdpFlowAction>,
    counters: PerCpuArray<MapData, u64>,
    /// The interfaces the program watches, by index.
    pub interfaces: Vec<u32>,
}

/// What the program forwarded for one direction of a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpFlowCounts {
    pub datagrams: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC ns of the last one; 0 if none.
    pub last_ns: u64,
}

impl UdpKernel {
    /// Loads the embedded object and attaches the classifier to the ingress of every Ethernet
    /// interface there is now.
    pub fn attach() -> Result<UdpKernel, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NotEmbedded);
        }
        let mut ebpf = Ebpf::load(OBJECT)?;
        let flows = take_map(&mut ebpf, "UDP_FLOWS")?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let program = classifier(&mut ebpf, UDP_PROGRAM)?;
        let mut interfaces = Vec::new();
        for name in ethernet_interfaces("") {
            match program.attach(&name, TcAttachType::Ingress) {
                Ok(_) => interfaces.extend(nix::net::if_::if_nametoindex(name.as_str()).ok()),
                Err(e) => tracing::warn!(
                    interface = %name, error = %e,
                    "cannot forward UDP sessions arriving on this interface in the kernel"
                ),
            }
        }
        Ok(UdpKernel {
            _ebpf: ebpf,
            flows,
            counters,
            interfaces,
        })
    }

    /// Starts forwarding datagrams that match `key` as `action` says, on every CPU.
    pub fn insert(&mut self, key: UdpFlowKey, action: UdpFlowAction) -> std::io::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let values = PerCpuValues::try_from(vec![action; cpus])?;
        self.flows
            .insert(key, values, 0)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// What was forwarded for `key` so far, summed over CPUs.
    pub fn counts(&self, key: &UdpFlowKey) -> UdpFlowCounts {
        let Ok(values) = self.flows.get(key, 0) else {
            return UdpFlowCounts::default();
        };
        values
            .iter()
            .fold(UdpFlowCounts::default(), |c, v| UdpFlowCounts {
                datagrams: c.datagrams + v.datagrams,
                bytes: c.bytes + v.bytes,
                last_ns: c.last_ns.max(v.last_ns),
            })
    }

    /// Stops forwarding `key` in the kernel.
    pub fn remove(&mut self, key: &UdpFlowKey) {
        let _ = self.flows.remove(key);
    }

    /// Sum of a counter over all CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, MapError> {
        Ok(self.counters.get(&(counter as u32), 0)?.iter().sum())
    }
}
