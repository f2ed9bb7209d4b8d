//! The over-limit event ring.
use super::*;

/// Reads over-limit events and wakes the task that owns the direction.
pub(super) async fn read_events(path: Weak<KernelPath>, mut events: AsyncFd<RingBuf<MapData>>) {
    loop {
        let Ok(mut guard) = events.readable_mut().await else {
            tracing::error!("kernel path: over-limit events can no longer be read");
            return;
        };
        let Some(path) = path.upgrade() else {
            return;
        };
        // Clear first, then drain: the ring wakes its reader only when it was caught up, so an
        // event landing after the drain but before a later clear would be lost for good, and
        // with it every event behind it.
        guard.clear_ready();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<OverLimit>() {
                continue;
            }
            let notice: OverLimit =
                bytemuck::pod_read_unaligned(&item[..std::mem::size_of::<OverLimit>()]);
            if let Some(signal) = path.registry().signals.get(&notice.cookie) {
                signal.over_limit.notify_one();
            }
        }
    }
}
