//! The record stage: where a finished connection's record goes. The access log now; metrics
//! will be a second sink (issue 10).
use crate::access_log::AccessRecord;

pub fn record(rec: &AccessRecord) {
    rec.emit();
}
