//! The sniff stage: read the first bytes until the listener's sniffers decide.
use std::io::ErrorKind;

use tokio::{net::TcpStream, time::Instant};

use crate::{
    access_log::Outcome,
    config::GatewaySettings,
    sniff::{classify, Classified, Detected, Malformed, Protocol},
};

#[derive(Debug, thiserror::Error)]
pub enum SniffError {
    #[error("no host named within the sniff timeout")]
    Timeout,
    #[error("no host named within max_sniff_bytes")]
    Limit,
    #[error("client closed before naming a host")]
    ClientClosed,
    #[error("{0}: {1}")]
    Malformed(Protocol, Malformed),
    #[error("reading the client: {0}")]
    Io(std::io::Error),
}

impl SniffError {
    pub fn outcome(&self) -> Outcome {
        match self {
            SniffError::Timeout => Outcome::SniffTimeout,
            SniffError::Limit => Outcome::SniffLimit,
            SniffError::ClientClosed => Outcome::ClientClosed,
            SniffError::Malformed(..) => Outcome::Malformed,
            SniffError::Io(_) => Outcome::ClientReset,
        }
    }
}

/// Reads until the listener's sniffers decide, within the time and byte budget. The whole
/// budget is one deadline (shared with the preamble stage), so a client trickling a byte at a
/// time gains nothing. `buf` may already hold bytes that followed a PROXY header.
///
/// Classifying reads the whole buffer, so doing it after every read made a one-byte trickle
/// cost O(n^2) up to `max_sniff_bytes`. A buffer past `CHEAP_SNIFF` bytes is classified again
/// only once it has grown by an eighth, or when the client has gone quiet for `SNIFF_QUIET`
/// (it may have sent all it will before an answer), or at the byte limit: O(n log n) bytes
/// scanned, plus one scan per quiet pause.
pub async fn sniff(
    client: &TcpStream,
    protocols: &[Protocol],
    settings: &GatewaySettings,
    deadline: Instant,
    buf: &mut Vec<u8>,
) -> Result<Option<Detected>, SniffError> {
    let max = settings.max_sniff_bytes;
    let mut rescan = Rescan::default();
    let mut quiet = false;
    loop {
        if rescan.due(buf.len(), max, quiet) {
            match classify(protocols, buf) {
                Classified::NeedMore => {}
                Classified::Detected(d) => return Ok(Some(d)),
                Classified::Unrecognized => return Ok(None),
                Classified::Malformed(p, m) => return Err(SniffError::Malformed(p, m)),
            }
            if buf.len() >= max {
                return Err(SniffError::Limit);
            }
        }
        // Bytes not yet classified: wait only briefly for more before classifying them.
        let pending = rescan.pending(buf.len());
        let wait_until = if pending {
            deadline.min(Instant::now() + SNIFF_QUIET)
        } else {
            deadline
        };
        match tokio::time::timeout_at(wait_until, client.readable()).await {
            Err(_) if pending && Instant::now() < deadline => {
                quiet = true;
                continue;
            }
            Err(_) => return Err(SniffError::Timeout),
            Ok(Err(e)) => return Err(SniffError::Io(e)),
            Ok(Ok(())) => {}
        }
        quiet = false;
        let mut chunk = Vec::with_capacity((max - buf.len()).min(8192));
        match client.try_read_buf(&mut chunk) {
            Ok(0) if pending => {
                // The client is done sending: decide on what it sent.
                if let Some(d) = decide_final(protocols, buf)? {
                    return Ok(d);
                }
                return Err(SniffError::ClientClosed);
            }
            Ok(0) => return Err(SniffError::ClientClosed),
            Ok(_) => buf.extend_from_slice(&chunk),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(SniffError::Io(e)),
        }
    }
}

/// When the growing sniff buffer is worth classifying again.
#[derive(Default)]
struct Rescan {
    /// Buffer length at the last classification; `None` before the first.
    classified: Option<usize>,
}

impl Rescan {
    /// Whether to classify a buffer of `len` bytes now; if so, it counts as classified.
    fn due(&mut self, len: usize, max: usize, quiet: bool) -> bool {
        let due = match self.classified {
            None => true,
            Some(at) => {
                len > at && (len <= CHEAP_SNIFF || len >= at + at / 8 || len >= max || quiet)
            }
        };
        if due {
            self.classified = Some(len);
        }
        due
    }

    /// Whether some of a buffer of `len` bytes has not been classified.
    fn pending(&self, len: usize) -> bool {
        self.classified.is_some_and(|at| len > at)
    }
}

/// A buffer up to this size is classified after every read: cheap, and most preambles are
/// this small.
const CHEAP_SNIFF: usize = 4096;
/// How long a larger buffer with unclassified bytes waits for more before it is classified.
const SNIFF_QUIET: std::time::Duration = std::time::Duration::from_millis(10);

/// The classification of bytes a client sent before half-closing: a decision, or `None`
/// when they still do not decide anything.
fn decide_final(
    protocols: &[Protocol],
    buf: &[u8],
) -> Result<Option<Option<Detected>>, SniffError> {
    match classify(protocols, buf) {
        Classified::NeedMore => Ok(None),
        Classified::Detected(d) => Ok(Some(Some(d))),
        Classified::Unrecognized => Ok(Some(None)),
        Classified::Malformed(p, m) => Err(SniffError::Malformed(p, m)),
    }
}

#[cfg(test)]
mod tests {
    use super::Rescan;

    /// A client trickling one byte per read up to a 1 MiB budget: classifying after every
    /// read scanned n^2/2 = 550 GB; the rescan schedule must keep it to O(n log n).
    #[test]
    fn a_one_byte_trickle_is_scanned_in_n_log_n() {
        const MAX: usize = 1 << 20;
        let mut rescan = Rescan::default();
        let mut scanned = 0u64;
        for len in 1..=MAX {
            if rescan.due(len, MAX, false) {
                scanned += len as u64;
            }
        }
        assert!(scanned < 32 << 20, "scanned {scanned} bytes");
        // The full buffer is always looked at before the byte limit refuses it.
        assert!(!rescan.pending(MAX));
    }

    #[test]
    fn quiet_clients_and_small_buffers_are_classified_at_once() {
        let mut rescan = Rescan::default();
        assert!(rescan.due(10, 1 << 20, false));
        assert!(rescan.due(11, 1 << 20, false), "small buffers: every read");
        assert!(rescan.due(100_000, 1 << 20, false));
        assert!(!rescan.due(100_001, 1 << 20, false));
        assert!(rescan.pending(100_001));
        assert!(
            rescan.due(100_001, 1 << 20, true),
            "a quiet client is not kept waiting"
        );
        assert!(
            !rescan.due(100_001, 1 << 20, true),
            "nothing new, nothing to do"
        );
    }
}
