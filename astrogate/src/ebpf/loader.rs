use astrogate_common::{Counter, PeerEntry, SockCookie, SockStats, TunnelFlow, TunnelFlowStats};
use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf, SockHash},
    programs::{ProgramError, SchedClassifier, SkSkb, TcAttachType},
    Ebpf, EbpfError,
};

/// The object `cargo xtask build-ebpf` produced, embedded at build time (empty if it was not
/// built).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/astrogate.bpf.o"));

const VERDICT_PROGRAM: &str = "astrogate_verdict";
const TUNNEL_PROGRAM: &str = "astrogate_tunnel_egress";

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
    /// Loads the embedded object and attaches the classifier to `interface`'s egress.
    pub fn attach(interface: &str) -> Result<TunnelKernel, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NotEmbedded);
        }
        let mut ebpf = Ebpf::load(OBJECT)?;
        let flows = take_map(&mut ebpf, "TUNNEL_FLOWS")?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let program_error = |source| LoadError::Program {
            name: TUNNEL_PROGRAM,
            source,
        };
        let program: &mut SchedClassifier = ebpf
            .program_mut(TUNNEL_PROGRAM)
            .ok_or(LoadError::Missing {
                kind: "program",
                name: TUNNEL_PROGRAM,
            })?
            .try_into()
            .map_err(program_error)?;
        program.load().map_err(program_error)?;
        program
            .attach(interface, TcAttachType::Egress)
            .map_err(program_error)?;
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
