//! The wall clock, read in one place. Here, in the lowest crate that does
//! IO, because every crate that stamps times (the orchestrator, the
//! scheduler, the agents' runtime, the backup catalogue) depends on it;
//! `domain` stays pure and is handed the time instead.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 if the clock is set before it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_ms_is_after_2020_and_does_not_go_back() {
        let first = now_ms();
        assert!(first > 1_577_836_800_000, "{first}");
        assert!(now_ms() >= first);
    }
}
