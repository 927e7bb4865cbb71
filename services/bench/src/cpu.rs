//! CPU time spent by each side of a throughput round, read from /proc.
//!
//! Throughput on this 2-core machine drifts by tens of percent between
//! rounds; CPU time per event barely does. So a round reports, next to its
//! events/s, how many microseconds of CPU each event cost the client (this
//! process), the dbswarm server and PostgreSQL (every `postgres` process).

use std::fs;

/// Clock ticks per second of /proc's utime and stime (`getconf CLK_TCK`
/// is 100 on every Linux this runs on).
const TICKS_PER_S: f64 = 100.0;

/// Cumulative CPU ticks of the three sides at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    client_ticks: u64,
    server_ticks: u64,
    postgres_ticks: u64,
    /// The machine's (all cores) idle and total ticks from /proc/stat.
    idle_ticks: u64,
    total_ticks: u64,
}

/// Microseconds of CPU per event between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuPerEvent {
    pub client_us: f64,
    pub server_us: f64,
    pub postgres_us: f64,
    /// Share of the machine's CPU time nobody used, in percent.
    pub idle_pct: f64,
}

impl CpuPerEvent {
    pub fn total_us(&self) -> f64 {
        self.client_us + self.server_us + self.postgres_us
    }

    pub fn json(&self) -> serde_json::Value {
        let round1 = |x: f64| (x * 10.0).round() / 10.0;
        serde_json::json!({
            "client": round1(self.client_us),
            "server": round1(self.server_us),
            "postgres": round1(self.postgres_us),
            "total": round1(self.total_us()),
            "machine_idle_pct": round1(self.idle_pct),
        })
    }

    /// The per-side medians of several rounds.
    pub fn median(rounds: &[CpuPerEvent]) -> CpuPerEvent {
        let side = |f: fn(&CpuPerEvent) -> f64| crate::median(&rounds.iter().map(f).collect::<Vec<_>>());
        CpuPerEvent {
            client_us: side(|c| c.client_us),
            server_us: side(|c| c.server_us),
            postgres_us: side(|c| c.postgres_us),
            idle_pct: side(|c| c.idle_pct),
        }
    }
}

impl CpuSample {
    /// Now; `server_pid` is None when no server takes part.
    pub fn now(server_pid: Option<u32>) -> CpuSample {
        let (idle_ticks, total_ticks) = machine_ticks().unwrap_or((0, 0));
        CpuSample {
            idle_ticks,
            total_ticks,
            client_ticks: process_ticks(std::process::id()).unwrap_or(0),
            server_ticks: server_pid.and_then(process_ticks).unwrap_or(0),
            postgres_ticks: postgres_ticks(),
        }
    }

    /// CPU per event from `self` (the earlier sample) to `later`.
    pub fn per_event(&self, later: &CpuSample, events: usize) -> CpuPerEvent {
        let us =
            |from: u64, to: u64| to.saturating_sub(from) as f64 / TICKS_PER_S * 1e6 / events.max(1) as f64;
        CpuPerEvent {
            client_us: us(self.client_ticks, later.client_ticks),
            server_us: us(self.server_ticks, later.server_ticks),
            postgres_us: us(self.postgres_ticks, later.postgres_ticks),
            idle_pct: later.idle_ticks.saturating_sub(self.idle_ticks) as f64 * 100.0
                / later.total_ticks.saturating_sub(self.total_ticks).max(1) as f64,
        }
    }
}

/// (idle + iowait, all) ticks of all cores since boot: the first line of
/// /proc/stat is `cpu user nice system idle iowait irq softirq steal ...`.
fn machine_ticks() -> Option<(u64, u64)> {
    parse_machine_ticks(fs::read_to_string("/proc/stat").ok()?.lines().next()?)
}

fn parse_machine_ticks(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // Guest time is already counted in user time.
    let counted = ticks.get(..8)?;
    Some((counted[3] + counted[4], counted.iter().sum()))
}

/// utime + stime of a process (all its threads), or None once it is gone.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_ticks(&stat).map(|(_, ticks)| ticks)
}

/// The summed ticks of every process whose command is `postgres`.
fn postgres_ticks() -> u64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| parse_ticks(&stat))
        .filter(|(command, _)| command == "postgres")
        .map(|(_, ticks)| ticks)
        .sum()
}

/// (command, utime + stime) from a /proc/PID/stat line. The command is in
/// parentheses and may itself hold spaces or parentheses, so the fields
/// are counted from the last ')'.
fn parse_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let command = stat.get(open + 1..close)?.to_owned();
    // After ')': state is field 3; utime and stime are fields 14 and 15.
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((command, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_command_with_spaces_and_parentheses() {
        let stat = "4242 (tokio rt (x)) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0 4";
        assert_eq!(parse_ticks(stat), Some(("tokio rt (x)".to_owned(), 267)));
    }

    #[test]
    fn refuses_a_truncated_line() {
        assert_eq!(parse_ticks("4242 (postgres) S 1 2"), None);
    }

    #[test]
    fn parses_the_machine_line() {
        let line = "cpu  4340537 0 808361 4172771 58317 0 65288 4412 0 0";
        assert_eq!(
            parse_machine_ticks(line),
            Some((4172771 + 58317, 4340537 + 808361 + 4172771 + 58317 + 65288 + 4412))
        );
        assert_eq!(parse_machine_ticks("cpu0 1 2 3 4 5 6 7 8"), None);
    }

    #[test]
    fn this_process_has_ticks() {
        assert!(process_ticks(std::process::id()).is_some());
    }
}
