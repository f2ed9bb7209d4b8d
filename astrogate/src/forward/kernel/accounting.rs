//! The kernel path's arithmetic, apart from any socket or map, so it is tested without root.
use super::KernelLimits;

/// The least allowance a direction gets when the global budget is shared by many connections.
pub(super) const MIN_ALLOWANCE: u64 = 64 * 1024;

/// Bytes one direction may have redirected but not yet queued on its destination, when
/// `directions` share the global budget: an equal share, at least `MIN_ALLOWANCE`, at most
/// the per-direction limit.
pub(super) fn allowance(limits: KernelLimits, directions: usize) -> u64 {
    let share = limits.max_backlog_total / (directions.max(1) as u64);
    limits.max_backlog.min(share.max(MIN_ALLOWANCE))
}

/// The SO_RCVBUF value for an allowance: half of it (the kernel doubles what it is given),
/// within what setsockopt's C int can say. Cast unchecked, half of 8 GiB wrapped to 0.
pub(super) fn recv_buffer_for(allowance: u64) -> usize {
    (allowance / 2).min(i32::MAX as u64) as usize
}

/// Bytes a direction moved to its destination (redirected by the program, written by user
/// space) that the destination has not queued for sending yet. `queued` is what the
/// destination queued since the pair was registered.
pub(super) fn backlog(redirected: u64, user_written: u64, queued: u64) -> u64 {
    (redirected + user_written).saturating_sub(queued)
}

/// New (soft, hard) limits for a direction whose destination is draining: the soft limit
/// leaves room for one allowance less what is still backlogged, the hard limit one allowance
/// more.
pub(super) fn raised_limits(redirected: u64, allowance: u64, backlog: u64) -> (u64, u64) {
    let limit = redirected + allowance.saturating_sub(backlog);
    (limit, limit + allowance)
}

/// Bytes a source that sent FIN has received (TCP_INFO `bytes_received`, which counts the FIN
/// too) that neither user space read before the splice (`consumed`) nor the program has seen
/// (`seen`: redirected plus passed, each byte once).
pub(super) fn unverdicted(received: u64, consumed: u64, seen: u64) -> u64 {
    received.saturating_sub(1 + consumed + seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn allowances_share_the_total_within_bounds() {
        let limits = KernelLimits {
            max_backlog: 4 * MIB,
            max_backlog_total: 256 * MIB,
        };
        assert_eq!(allowance(limits, 2), 4 * MIB, "capped per direction");
        assert_eq!(allowance(limits, 128), 2 * MIB, "an equal share");
        assert_eq!(
            allowance(limits, 1 << 20),
            MIN_ALLOWANCE,
            "never below the floor"
        );
        assert_eq!(allowance(limits, 0), 4 * MIB, "no division by zero");
    }

    #[test]
    fn receive_buffers_fit_a_c_int() {
        assert_eq!(recv_buffer_for(4 * MIB), 2 * MIB as usize);
        // 8 GiB: half is 2^32, which a C int cannot hold; it used to become 0.
        assert_eq!(recv_buffer_for(8 << 30), i32::MAX as usize);
        assert_eq!(recv_buffer_for(u64::MAX), i32::MAX as usize);
    }

    #[test]
    fn backlog_is_what_the_destination_has_not_queued() {
        assert_eq!(backlog(10 * MIB, MIB, 11 * MIB), 0);
        assert_eq!(backlog(10 * MIB, MIB, 3 * MIB), 8 * MIB);
        // Acks landing between the two reads can only make it look drained later, never early.
        assert_eq!(backlog(MIB, 0, 2 * MIB), 0);
    }

    #[test]
    fn raised_limits_leave_room_for_one_allowance() {
        assert_eq!(
            raised_limits(100 * MIB, 4 * MIB, MIB),
            (103 * MIB, 107 * MIB)
        );
        assert_eq!(
            raised_limits(100 * MIB, 4 * MIB, 9 * MIB),
            (100 * MIB, 104 * MIB)
        );
    }

    #[test]
    fn unverdicted_counts_the_fin_once() {
        // 1000 payload bytes and a FIN received; 10 sniffed; 990 seen by the program.
        assert_eq!(unverdicted(1001, 10, 990), 0);
        assert_eq!(unverdicted(1001, 10, 900), 90);
        assert_eq!(unverdicted(0, 10, 0), 0);
    }
}
