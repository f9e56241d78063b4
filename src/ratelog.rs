//! Rate limits for log lines a network peer can trigger at will (session
//! takeovers, refused CONNECTs, handshake failures): a storm must not fill
//! the disk or drown the lines that matter. The metrics still count every
//! event; the log shows a sample and how many lines it left out.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// At most `burst` lines per `period`; the first line after a suppressed
/// stretch says how many were left out.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    period: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(burst: u32, period: Duration) -> LogLimiter {
        LogLimiter {
            burst,
            period,
            state: Mutex::new(Window {
                start: None,
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when this event may be logged, `n` being the number of
    /// events suppressed since the last one logged; `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut w = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if w.start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.period)
        {
            w.start = Some(now);
            w.used = 0;
        }
        if w.used < self.burst {
            w.used += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// The usual budget: 10 lines per 10 s for each kind of event.
pub const fn per_kind() -> LogLimiter {
    LogLimiter::new(10, Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_silence_then_a_count_of_what_was_left_out() {
        let l = LogLimiter::new(3, Duration::from_secs(10));
        let first: Vec<Option<u64>> = (0..5).map(|_| l.allow()).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None]);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(l.allow(), Some(2), "reports the two left out");
        assert_eq!(l.allow(), Some(0));
    }
}
