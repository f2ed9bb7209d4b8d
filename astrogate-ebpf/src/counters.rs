//! The per-CPU counters every program may bump.
use astrogate_common::Counter;

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; nothing else on this CPU runs while the program does.
        unsafe { *slot += n };
    }
}
