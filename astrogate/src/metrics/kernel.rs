//! The kernel path's own counters, read from its per-CPU map at each scrape.
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, MetricType},
};

use crate::forward::kernel::KernelPath;

/// Reads the counters of whichever kernel path runs at scrape time; none, no series.
pub struct KernelCounters(pub Arc<ArcSwapOption<KernelPath>>);

impl std::fmt::Debug for KernelCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCounters")
    }
}

impl Collector for KernelCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(kernel) = self.0.load_full() else {
            return Ok(());
        };
        let mut counters = kernel.counters();
        // Bytes get their own family; the rest count events (skbs, FINs, lost log records).
        if let Some(i) = counters
            .iter()
            .position(|(name, _)| *name == "redirected_bytes")
        {
            let (_, bytes) = counters.remove(i);
            let family = encoder.encode_descriptor(
                "kernel_path_redirected_bytes",
                "Payload bytes the kernel path redirected from one socket to its peer",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(bytes).encode(family)?;
        }
        let mut family = encoder.encode_descriptor(
            "kernel_path_events",
            "The kernel path's counters: skbs redirected or passed up to the gateway, skbs with no peer or a failed redirect, FINs held back, log records lost",
            None,
            MetricType::Counter,
        )?;
        for (name, value) in counters {
            let labels = [("event", name)];
            let series = family.encode_family(&labels)?;
            ConstCounter::new(value).encode(series)?;
        }
        Ok(())
    }
}
