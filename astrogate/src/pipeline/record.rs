//! The record stage: where a finished connection's record goes. The access log, and the
//! metrics.
use crate::{access_log::AccessRecord, metrics::Metrics};

pub fn record(rec: &AccessRecord, metrics: &Metrics) {
    rec.emit();
    metrics.record(rec);
}
