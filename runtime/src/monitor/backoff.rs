//! kubelet's restart back-off: the first restart is immediate, then 10 s doubling up to
//! 5 minutes; a container that ran for 10 minutes before exiting starts over.

use std::time::Duration;

pub const MAX_DELAY: Duration = Duration::from_secs(300);
pub const RESET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    /// Consecutive quick failures so far.
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration) -> Self {
        Self { base, failures: 0 }
    }

    /// Record an exit after `ran` of running time; returns how long to wait before the
    /// next start.
    pub fn next_delay(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures == 1 {
            return Duration::ZERO;
        }
        let exp = (self.failures - 2).min(16);
        self.base.saturating_mul(1u32 << exp).min(MAX_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_five_minutes_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(10));
        let quick = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay(quick).as_secs()).collect();
        assert_eq!(delays, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next_delay(Duration::from_secs(601)), Duration::ZERO);
        assert_eq!(b.next_delay(quick), Duration::from_secs(10));
    }
}
