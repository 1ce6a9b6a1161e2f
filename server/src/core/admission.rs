//! Admission by expected wait: a core refuses a client's request at once
//! when it would wait longer than the admission budget (or its own
//! deadline), instead of queueing it behind work it cannot reach in time.
//!
//! The expected wait of a new request is what the core holds (requests
//! queued on its shards, plus those applied and waiting for their barrier)
//! divided by the rate at which it answers them. By Little's law that
//! quotient is the time a request spends in the core. The rate is measured
//! over short windows of answers:
//!
//! - a window in which the core never ran empty saw the core at its
//!   capacity for the work of the moment: the estimate moves halfway to it
//!   (so it follows a change of workload within a few windows, up or down);
//! - a window with idle time only shows what was offered: it can raise the
//!   estimate, never lower it.
//!
//! A request always waits for two rounds (the write and barrier in flight,
//! then its own), whatever is admitted. The budget is therefore at least
//! twice what a round costs however little it holds (the shortest round of
//! the last second or two): on a disk whose barrier alone outlasts the
//! budget, refusing more would only empty the rounds (the rate estimate
//! would fall with them, and with it what is admitted, until only the
//! floor was), never shorten a wait. Rounds made long by what they hold
//! do not widen it.
//!
//! Until a first window has closed, and while the core holds fewer than
//! `ADMISSION_FLOOR_OPS` requests, everything is admitted: a handful of
//! requests never waits long, and an estimate from a quiet start cannot
//! refuse the first burst wholesale. Over `ADMITTED_OPS_PER_CORE_MAX` held
//! requests, everything from clients is refused, whatever the estimate says.
//!
//! A batch is weighed once, on the core that read it: admitted, all its
//! requests for that core are queued (up to the hard bound); refused, all
//! are answered `Overloaded`. Its requests forwarded to other cores are
//! weighed there one by one.
//!
//! Work the node started itself (checkout steps, expiry ticks) is counted
//! but never refused: it was admitted when its client's request was.
//!
//! Everything here takes the time as an argument; the caller reads the clock.

use std::time::{Duration, Instant};

use crate::limits::{
    ADMISSION_FLOOR_OPS, ADMISSION_RATE_WINDOW, ADMITTED_OPS_PER_CORE_MAX, RETRY_AFTER_MAX_MS,
    ROUND_FLOOR_WINDOW,
};

/// What to do with a client's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Queue it.
    Admit,
    /// Refuse it as `Overloaded`, with this retry-after hint in ms.
    Shed {
        /// When the core expects to be back under the budget, in ms.
        retry_after_ms: u32,
    },
}

/// One core's view of the work it holds and how fast it answers.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Requests queued on the core's shards or applied and unanswered.
    held: usize,
    /// Answers per second when busy; `None` before the first window.
    rate: Option<f64>,
    window_start: Instant,
    window_answers: u64,
    /// The core ran empty during the current window.
    window_idle: bool,
    /// The shortest round (journal write and barrier) of the previous
    /// `ROUND_FLOOR_WINDOW`, and of the current one so far.
    round_floor: Option<Duration>,
    round_min: Option<Duration>,
    round_window_start: Instant,
}

impl Admission {
    /// A core holding nothing, with no estimate yet.
    pub fn new(now: Instant) -> Self {
        Admission {
            held: 0,
            rate: None,
            window_start: now,
            window_answers: 0,
            window_idle: true,
            round_floor: None,
            round_min: None,
            round_window_start: now,
        }
    }

    /// Requests held now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The measured answer rate (per second), if any window closed yet.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// One request was queued.
    pub fn queued(&mut self) {
        self.held += 1;
    }

    /// Sets the held count from a recount of the queues and batches (it
    /// corrects any drift, for example around shard moves).
    pub fn recount(&mut self, held: usize) {
        self.held = held;
    }

    /// A round's journal write and barrier took `d`, ending at `now`.
    pub fn round_took(&mut self, d: Duration, now: Instant) {
        self.round_min = Some(self.round_min.map_or(d, |m| m.min(d)));
        if now.saturating_duration_since(self.round_window_start) >= ROUND_FLOOR_WINDOW {
            self.round_floor = self.round_min.take();
            self.round_window_start = now;
        }
    }

    /// What a round costs however little it holds: the shortest round of
    /// the last one to two `ROUND_FLOOR_WINDOW`s, if any was measured.
    pub fn round(&self) -> Option<Duration> {
        match (self.round_floor, self.round_min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `n` requests were answered at `now`.
    pub fn answered(&mut self, n: usize, now: Instant) {
        self.held = self.held.saturating_sub(n);
        self.window_answers += n as u64;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= ADMISSION_RATE_WINDOW {
            let sample = self.window_answers as f64 / elapsed.as_secs_f64();
            self.rate = match (self.rate, self.window_idle) {
                (None, _) if sample > 0.0 => Some(sample),
                (None, _) => None,
                (Some(r), false) => Some((r + sample) / 2.0),
                (Some(r), true) => Some(r.max(sample)),
            };
            self.window_start = now;
            self.window_answers = 0;
            self.window_idle = false;
        }
        if self.held == 0 {
            self.window_idle = true;
        }
    }

    /// The time a request queued now is expected to spend in the core.
    pub fn expected_wait(&self) -> Duration {
        match self.rate {
            Some(r) if r > 0.0 => Duration::from_secs_f64(self.held as f64 / r),
            _ => Duration::ZERO,
        }
    }

    /// Whether a client's request may be queued now, given the admission
    /// budget and the time left before the request's own deadline.
    pub fn decide(&self, budget: Duration, deadline_left: Option<Duration>) -> Decision {
        // Two rounds (the one in flight and the request's own) are what a
        // request waits however little is admitted: a budget below them
        // would refuse work without making anyone wait less.
        let floor = self.round().map_or(Duration::ZERO, |r| r * 2);
        let budget = budget.max(floor);
        let budget = deadline_left.map_or(budget, |left| left.min(budget));
        if self.held >= ADMITTED_OPS_PER_CORE_MAX {
            return self.over_bound(budget);
        }
        if self.held < ADMISSION_FLOOR_OPS {
            return Decision::Admit;
        }
        let wait = self.expected_wait();
        if wait <= budget {
            Decision::Admit
        } else {
            Decision::Shed {
                retry_after_ms: retry_after(wait - budget),
            }
        }
    }

    /// Whether a request of a batch this core already admitted (against
    /// `budget`) may be queued: only the hard bound applies.
    pub fn decide_admitted(&self, budget: Duration) -> Decision {
        if self.held >= ADMITTED_OPS_PER_CORE_MAX {
            self.over_bound(budget)
        } else {
            Decision::Admit
        }
    }

    /// The refusal at the hard bound: the hint is the excess over `budget`.
    fn over_bound(&self, budget: Duration) -> Decision {
        Decision::Shed {
            retry_after_ms: retry_after(self.expected_wait().saturating_sub(budget)),
        }
    }
}

/// The hint for a core that is `over` its budget: the time its excess takes
/// to drain, in whole ms, at least 1 and at most `RETRY_AFTER_MAX_MS`.
fn retry_after(over: Duration) -> u32 {
    let ms = over.as_micros().div_ceil(1_000);
    u32::try_from(ms)
        .unwrap_or(u32::MAX)
        .clamp(1, RETRY_AFTER_MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BUDGET: Duration = Duration::from_millis(20);

    /// A core that answered `rate` requests per second while busy for a
    /// whole window, now holding `held`.
    fn measured(rate: f64, held: usize) -> (Admission, Instant) {
        let t0 = Instant::now();
        let mut a = Admission::new(t0);
        let n = (rate * ADMISSION_RATE_WINDOW.as_secs_f64()) as usize;
        // One more than `held`, so that the window is a busy one; the count
        // is then set to `held`.
        for _ in 0..n + held + 1 {
            a.queued();
        }
        a.answered(n, t0 + ADMISSION_RATE_WINDOW);
        assert_eq!(a.held(), held + 1);
        a.recount(held);
        (a, t0 + ADMISSION_RATE_WINDOW)
    }

    #[test]
    fn admits_everything_before_an_estimate_and_below_the_floor() {
        let mut a = Admission::new(Instant::now());
        for _ in 0..10_000 {
            a.queued();
        }
        assert_eq!(a.decide(BUDGET, None), Decision::Admit);
        let (a, _) = measured(1_000.0, ADMISSION_FLOOR_OPS - 1);
        assert_eq!(a.decide(BUDGET, None), Decision::Admit);
    }

    #[test]
    fn sheds_what_would_wait_past_the_budget_with_the_excess_as_hint() {
        // 10,000/s: 100 held wait 10 ms, 400 held wait 40 ms.
        let (a, _) = measured(10_000.0, 100);
        assert_eq!(a.decide(BUDGET, None), Decision::Admit);
        let (a, _) = measured(10_000.0, 400);
        let Decision::Shed { retry_after_ms } = a.decide(BUDGET, None) else {
            panic!("40 ms of work against a 20 ms budget is admitted");
        };
        assert!((19..=21).contains(&retry_after_ms), "{retry_after_ms}");
        // A request whose own deadline is nearer is held to it.
        let (a, _) = measured(10_000.0, 100);
        assert!(matches!(
            a.decide(BUDGET, Some(Duration::from_millis(5))),
            Decision::Shed { .. }
        ));
    }

    #[test]
    fn the_hard_bound_holds_whatever_the_rate() {
        let (mut a, _) = measured(1e9, 0);
        for _ in 0..ADMITTED_OPS_PER_CORE_MAX {
            a.queued();
        }
        assert!(matches!(a.decide(BUDGET, None), Decision::Shed { .. }));
        assert!(matches!(a.decide_admitted(BUDGET), Decision::Shed { .. }));
    }

    #[test]
    fn a_busy_window_lowers_the_estimate_an_idle_one_only_raises_it() {
        let (mut a, t) = measured(10_000.0, 1_000);
        // A busy window at 2,000/s (the core never ran empty).
        a.answered(50, t + ADMISSION_RATE_WINDOW);
        assert_eq!(a.rate(), Some(6_000.0));
        // Everything answered: the next, long window is idle (what it saw
        // was the offered load) and cannot lower the estimate.
        let held = a.held();
        a.answered(held, t + ADMISSION_RATE_WINDOW + Duration::from_millis(1));
        a.queued();
        a.answered(1, t + 10 * ADMISSION_RATE_WINDOW);
        assert_eq!(a.rate(), Some(6_000.0));
    }

    #[test]
    fn long_rounds_from_big_batches_do_not_widen_the_budget() {
        let budget = Duration::from_millis(8);
        let (mut a, _) = measured(20_000.0, 400);
        let t = Instant::now();
        // One short round in the window: the floor is 2 x 0.2 ms.
        a.round_took(Duration::from_micros(200), t);
        for i in 1..50 {
            a.round_took(Duration::from_millis(15), t + Duration::from_millis(15 * i));
        }
        assert_eq!(a.round(), Some(Duration::from_micros(200)));
        assert!(matches!(a.decide(budget, None), Decision::Shed { .. }));
    }

    #[test]
    fn a_slow_disk_widens_the_budget_to_two_rounds() {
        // 20 ms barriers: rounds of 400 answered every 20 ms, 800 held (one
        // round in flight, one filling) is 40 ms of expected wait. Against
        // an 8 ms budget it would be refused, and refusing could only shrink
        // the rounds; two rounds (40 ms) admit it.
        let budget = Duration::from_millis(8);
        let (mut a, _) = measured(20_000.0, 800);
        assert!(matches!(a.decide(budget, None), Decision::Shed { .. }));
        let t = Instant::now();
        for i in 0..20 {
            a.round_took(Duration::from_millis(20), t + Duration::from_millis(20 * i));
        }
        assert_eq!(a.decide(budget, None), Decision::Admit);
        // More than two rounds of work waiting is still refused.
        for _ in 0..400 {
            a.queued();
        }
        assert!(matches!(a.decide(budget, None), Decision::Shed { .. }));
        // A caller's own deadline still holds.
        let (a2, _) = measured(20_000.0, 800);
        let mut a2 = a2;
        a2.round_took(Duration::from_millis(20), Instant::now());
        assert!(matches!(
            a2.decide(budget, Some(Duration::from_millis(5))),
            Decision::Shed { .. }
        ));
    }

    proptest! {
        /// The rule: a client's request is admitted exactly when the core
        /// holds less than the hard bound and either less than the floor or
        /// no more work than it answers within the budget (and the request's
        /// deadline); a refusal's hint is within bounds.
        #[test]
        fn admission_rule(
            rate in 100.0f64..1e6,
            held in 0usize..2 * ADMITTED_OPS_PER_CORE_MAX,
            budget_ms in 1u64..200,
            left_ms in proptest::option::of(0u64..300),
        ) {
            let (a, _) = measured(rate, held);
            let budget = Duration::from_millis(budget_ms);
            let left = left_ms.map(Duration::from_millis);
            let limit = left.map_or(budget, |l| l.min(budget));
            let measured_rate = a.rate().unwrap_or(rate);
            let wait = held as f64 / measured_rate;
            let should_admit = held < ADMITTED_OPS_PER_CORE_MAX
                && (held < ADMISSION_FLOOR_OPS || wait <= limit.as_secs_f64() + 1e-9);
            match a.decide(budget, left) {
                Decision::Admit => prop_assert!(should_admit, "admitted {held} at {measured_rate}/s"),
                Decision::Shed { retry_after_ms } => {
                    prop_assert!(!should_admit, "shed {held} at {measured_rate}/s");
                    prop_assert!((1..=RETRY_AFTER_MAX_MS).contains(&retry_after_ms));
                }
            }
        }

        /// However answers and arrivals interleave, the held count never
        /// underflows and the estimate stays positive once set.
        #[test]
        fn the_estimate_stays_sane(steps in proptest::collection::vec((0usize..50, 0usize..60, 0u64..40), 1..200)) {
            let t0 = Instant::now();
            let mut a = Admission::new(t0);
            let mut t = t0;
            let mut held = 0usize;
            for (arrive, answer, dt) in steps {
                for _ in 0..arrive { a.queued(); }
                held += arrive;
                let n = answer.min(held);
                t += Duration::from_millis(dt);
                a.answered(n, t);
                held -= n;
                prop_assert_eq!(a.held(), held);
                if let Some(r) = a.rate() { prop_assert!(r.is_finite() && r >= 0.0); }
            }
        }
    }
}
