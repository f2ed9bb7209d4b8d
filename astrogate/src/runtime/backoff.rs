//! What an accept loop does when `accept` fails.
//!
//! Out of descriptors (EMFILE, ENFILE) or kernel memory, `accept` fails at once and the
//! listener stays readable, so a loop that simply retries spins a core at 100% (tokio #3529).
//! The loop sleeps instead, briefly at first and up to [`MAX`], so it resumes within a fraction
//! of a second once descriptors free up; meanwhile new clients wait in the listen backlog, as
//! they would behind HAProxy's paused listeners, rather than being turned away. An episode is
//! logged once when it starts and once when it ends, not once per attempt.
//!
//! Errors that belong to one connection (it was aborted or reset before it was accepted) are
//! not episodes: the next connection is accepted at once, as hyper does.
use std::{io, time::Duration};

/// The first pause after a resource error.
const FIRST: Duration = Duration::from_millis(5);
/// The longest pause: how late a freed descriptor can be noticed.
pub const MAX: Duration = Duration::from_millis(100);

/// One accept loop's state: how long the current episode has been going.
#[derive(Default)]
pub struct AcceptBackoff {
    pause: Option<Duration>,
    failures: u64,
}

impl AcceptBackoff {
    /// After a failed accept: how long to pause before the next one (`None`: go on at once).
    pub fn failed(&mut self, what: &str, e: &io::Error) -> Option<Duration> {
        if per_connection(e) {
            tracing::debug!(%what, error = %e, "a connection failed before it was accepted");
            return None;
        }
        self.failures += 1;
        let pause = match self.pause {
            None => {
                tracing::warn!(
                    %what, error = %e,
                    "accept failed; pausing this listener until it succeeds again"
                );
                FIRST
            }
            Some(p) => (p * 2).min(MAX),
        };
        self.pause = Some(pause);
        Some(pause)
    }

    /// After a successful accept: ends an episode, if one was going.
    pub fn succeeded(&mut self, what: &str) {
        if self.pause.take().is_some() {
            tracing::warn!(%what, failed_attempts = self.failures, "accepting again");
            self.failures = 0;
        }
    }
}

fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_errors_back_off_up_to_the_cap_and_reset_on_success() {
        let mut b = AcceptBackoff::default();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let pauses: Vec<_> = (0..8).map(|_| b.failed("t", &emfile).unwrap()).collect();
        assert_eq!(pauses[0], FIRST);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap(), MAX);
        b.succeeded("t");
        assert_eq!(b.failed("t", &emfile), Some(FIRST));
    }

    #[test]
    fn a_connection_aborted_before_accept_is_no_reason_to_pause() {
        let mut b = AcceptBackoff::default();
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(b.failed("t", &aborted), None);
    }
}
