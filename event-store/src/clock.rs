//! The wall clock, read in one place. Here, in the lowest crate that does
//! IO, because every crate that stamps times (the orchestrator, the
//! scheduler, the agents' runtime, the backup catalogue, the benches)
//! depends on it; `domain` stays pure and is handed the time instead (its
//! `Clock` value, made by [`workflow_clock`]).

use std::time::{SystemTime, UNIX_EPOCH};

use domain::workflow::Clock;
use uuid::Uuid;

/// Milliseconds since the Unix epoch; 0 if the clock is set before it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch; 0 if the clock is set before it.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The clock workflow decisions use: now, and a fresh jitter in [0, 1).
pub fn workflow_clock() -> Clock {
    let random = Uuid::new_v4().as_u64_pair().0 >> 11;
    Clock {
        now_ms: now_ms(),
        jitter: random as f64 / (1u64 << 53) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_ms_is_after_2020_and_does_not_go_back() {
        let first = now_ms();
        assert!(first > 1_577_836_800_000, "{first}");
        assert!(now_ms() >= first);
        assert!(now_us() / 1000 >= first);
    }

    #[test]
    fn the_workflow_clock_jitters_in_0_to_1() {
        for _ in 0..100 {
            let clock = workflow_clock();
            assert!((0.0..1.0).contains(&clock.jitter), "{}", clock.jitter);
            assert!(clock.now_ms > 1_577_836_800_000);
        }
    }
}
