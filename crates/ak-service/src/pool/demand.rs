//! How many spares one pool should hold: enough to cover the hand-outs expected while a
//! spare is being built (Little's law: recent request rate × build time), with headroom,
//! between `min_warm` and `max_warm`. Every method takes the time as an argument, so the
//! rule is tested with a made-up clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Hand-outs older than this no longer count towards the request rate.
const WINDOW: Duration = Duration::from_secs(1);
/// The shortest span a rate is computed over: three requests a millisecond apart are not a
/// rate of 3000/s, yet a burst must show within a tenth of a second.
const MIN_SPAN: Duration = Duration::from_millis(100);
/// Spares beyond the expected need: requests arrive in clumps, and a refill competes with
/// the very runs it follows for the same CPUs, so it takes longer during a burst.
const HEADROOM: f64 = 2.0;
/// What a build is assumed to take before one has been timed.
const FIRST_REFILL_GUESS: Duration = Duration::from_millis(20);
/// The newest build time counts for 1/REFILL_SMOOTHING of the moving average.
const REFILL_SMOOTHING: u32 = 4;
/// From this request rate on (one every 50 ms, the daemon's maintenance tick) a spare taken
/// is replaced at once instead of at the next tick, which would leave the pool empty for
/// most of a burst. Slower than this, the replacement waits for the tick, so that it does
/// not compete for the CPUs with the very run that took the spare.
const BUSY_RATE: f64 = 20.0;
/// Spares beyond the target are released after this long without a request, so that an
/// idle pool shrinks back to `min_warm` but a pause within a burst keeps its spares.
pub(super) const IDLE_AFTER: Duration = Duration::from_secs(5);

/// Recent requests of one pool and how long its spares take to build.
#[derive(Debug, Default)]
pub(super) struct Demand {
    /// Requests within the last [`WINDOW`], oldest first.
    recent: VecDeque<Instant>,
    last_request: Option<Instant>,
    /// Moving average of build times, once one was timed.
    refill: Option<Duration>,
    refills: u64,
}

impl Demand {
    /// Counts a request for a sandbox of this pool.
    pub(super) fn record_request(&mut self, now: Instant) {
        self.forget_before(now);
        self.recent.push_back(now);
        self.last_request = Some(now);
    }

    /// Counts a spare built in `took`.
    pub(super) fn record_refill(&mut self, took: Duration) {
        self.refills += 1;
        self.refill = Some(match self.refill {
            None => took,
            Some(average) => (average * (REFILL_SMOOTHING - 1) + took) / REFILL_SMOOTHING,
        });
    }

    fn forget_before(&mut self, now: Instant) {
        while let Some(&oldest) = self.recent.front() {
            if now.saturating_duration_since(oldest) > WINDOW {
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }

    /// Requests per second over the last [`WINDOW`] (at least [`MIN_SPAN`]).
    pub(super) fn rate(&self, now: Instant) -> f64 {
        let recent: Vec<&Instant> = self
            .recent
            .iter()
            .filter(|&&at| now.saturating_duration_since(at) <= WINDOW)
            .collect();
        let Some(&&oldest) = recent.first() else {
            return 0.0;
        };
        let span = now.saturating_duration_since(oldest).max(MIN_SPAN);
        recent.len() as f64 / span.as_secs_f64()
    }

    /// The moving average of build times, if any was timed.
    pub(super) fn refill_time(&self) -> Option<Duration> {
        self.refill
    }

    pub(super) fn refills(&self) -> u64 {
        self.refills
    }

    /// Spares to hold now: the requests expected while one is built, with headroom, no
    /// fewer than `min_warm` and no more than `max_warm`.
    pub(super) fn target(&self, now: Instant, min_warm: usize, max_warm: usize) -> usize {
        let build = self.refill.unwrap_or(FIRST_REFILL_GUESS).as_secs_f64();
        let expected = (self.rate(now) * build * HEADROOM).ceil();
        // `as` saturates; max_warm bounds it anyway.
        (expected as usize).max(min_warm).min(max_warm)
    }

    /// Whether requests come faster than [`BUSY_RATE`].
    pub(super) fn busy(&self, now: Instant) -> bool {
        self.rate(now) >= BUSY_RATE
    }

    /// Whether no request came for [`IDLE_AFTER`] (or ever).
    pub(super) fn idle(&self, now: Instant) -> bool {
        self.last_request
            .is_none_or(|at| now.saturating_duration_since(at) >= IDLE_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A demand that saw `count` requests `every` apart, ending at the returned time.
    fn requests(demand: &mut Demand, start: Instant, count: u32, every: Duration) -> Instant {
        let mut now = start;
        for i in 0..count {
            now = start + every * i;
            demand.record_request(now);
        }
        now
    }

    #[test]
    fn a_quiet_pool_keeps_the_minimum() {
        let start = Instant::now();
        let mut demand = Demand::default();
        assert_eq!(demand.target(start, 2, 8), 2);
        // One request every 150 ms: ~6.7/s × 20 ms × 2 is well under one spare.
        let now = requests(&mut demand, start, 20, 150 * MS);
        demand.record_refill(20 * MS);
        assert_eq!(demand.target(now, 2, 8), 2);
        assert_eq!(
            demand.target(now, 0, 8),
            1,
            "a steady trickle still wants one"
        );
    }

    #[test]
    fn a_burst_raises_the_target_within_a_tenth_of_a_second() {
        let start = Instant::now();
        let mut demand = Demand::default();
        demand.record_refill(10 * MS);
        // Back to back, one every 5 ms: 200/s × 10 ms × 2 = 4 spares.
        let now = requests(&mut demand, start, 20, 5 * MS);
        assert!((now - start) < 100 * MS);
        assert_eq!(demand.target(now, 2, 8), 4);
        // Concurrency pushes the rate up; max_warm caps the target.
        let now = requests(&mut demand, now, 100, MS);
        assert_eq!(demand.target(now, 2, 8), 8);
        assert_eq!(demand.target(now, 2, 5), 5);
    }

    #[test]
    fn slower_builds_need_more_spares_for_the_same_rate() {
        let start = Instant::now();
        let mut fast = Demand::default();
        let mut slow = Demand::default();
        fast.record_refill(5 * MS);
        slow.record_refill(20 * MS);
        // 50 requests 20 ms apart: ~51/s.
        let now = requests(&mut fast, start, 50, 20 * MS);
        requests(&mut slow, start, 50, 20 * MS);
        assert_eq!(fast.target(now, 0, 64), 1);
        assert_eq!(slow.target(now, 0, 64), 3);
    }

    #[test]
    fn after_the_burst_the_target_falls_back_and_the_pool_goes_idle() {
        let start = Instant::now();
        let mut demand = Demand::default();
        demand.record_refill(10 * MS);
        let end = requests(&mut demand, start, 100, 2 * MS);
        assert_eq!(demand.target(end, 2, 8), 8);
        assert!(!demand.idle(end));
        // Past the rate window, the target is the minimum again ...
        let later = end + WINDOW + MS;
        assert_eq!(demand.rate(later), 0.0);
        assert_eq!(demand.target(later, 2, 8), 2);
        // ... but surplus spares are only released once the pool has been idle a while.
        assert!(!demand.idle(later));
        assert!(demand.idle(end + IDLE_AFTER));
    }

    #[test]
    fn back_to_back_requests_are_busy_and_paused_ones_are_not() {
        let start = Instant::now();
        let mut paused = Demand::default();
        let now = requests(&mut paused, start, 10, 150 * MS);
        assert!(!paused.busy(now));
        let mut back_to_back = Demand::default();
        let now = requests(&mut back_to_back, start, 2, 30 * MS);
        assert!(back_to_back.busy(now));
        // The same pool once the requests stop.
        assert!(!back_to_back.busy(now + WINDOW + MS));
    }

    #[test]
    fn build_times_are_a_moving_average() {
        let mut demand = Demand::default();
        assert_eq!(demand.refill_time(), None);
        demand.record_refill(8 * MS);
        assert_eq!(demand.refill_time(), Some(8 * MS));
        demand.record_refill(16 * MS);
        assert_eq!(demand.refill_time(), Some(10 * MS));
        assert_eq!(demand.refills(), 2);
    }

    #[test]
    fn a_single_request_is_not_a_burst() {
        let start = Instant::now();
        let mut demand = Demand::default();
        demand.record_refill(10 * MS);
        demand.record_request(start);
        // 1 request over the 100 ms minimum span: 10/s × 10 ms × 2 = 0.2, so one spare.
        assert_eq!(demand.rate(start), 10.0);
        assert_eq!(demand.target(start, 0, 8), 1);
    }
}
