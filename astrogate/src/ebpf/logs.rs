//! The programs' own log lines (aya-log), as tracing events with target `astrogate::ebpf`.
//! The programs log only rare events (a segment that could not be trimmed, a sequence gap),
//! never per packet.
use aya_log::EbpfLogger;
use tokio::io::{unix::AsyncFd, Interest};

/// Forwards `log` records to tracing.
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "astrogate::ebpf", "{message}"),
            log::Level::Warn => tracing::warn!(target: "astrogate::ebpf", "{message}"),
            log::Level::Info => tracing::info!(target: "astrogate::ebpf", "{message}"),
            log::Level::Debug => tracing::debug!(target: "astrogate::ebpf", "{message}"),
            log::Level::Trace => tracing::trace!(target: "astrogate::ebpf", "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Reads the programs' log ring as records arrive. Runs until the runtime stops.
pub async fn forward(logger: EbpfLogger<TracingLog>) {
    // SAFETY: the logger owns its ring's fd and keeps it open, unchanged, until it is dropped
    // together with the AsyncFd.
    let mut logger = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "the eBPF programs' log cannot be read");
            return;
        }
    };
    loop {
        let Ok(mut guard) = logger.readable_mut().await else {
            return;
        };
        // Clear first, then drain, so a record landing in between still wakes us.
        guard.clear_ready();
        guard.get_inner_mut().flush();
    }
}
