//! The health state machine of one backend (pure): consecutive successes
//! bring a down node up after `rise`, consecutive failures take an up node
//! down after `fall`, as HAProxy's `rise`/`fall` do.

/// Health of one backend as seen by checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    pub up: bool,
    successes: u32,
    failures: u32,
}

impl HealthState {
    /// A new backend starts up, as HAProxy servers do, so a proxy starting
    /// in front of a live cluster serves at once; checks take it down within
    /// `fall` intervals if it is not.
    pub fn new() -> Self {
        HealthState {
            up: true,
            successes: 0,
            failures: 0,
        }
    }

    /// Record an active check result. Returns the new state on a transition.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }

    /// A client connection reached the backend: evidence it is alive, so a
    /// failure streak ends (it does not count towards `rise`).
    pub fn passive_success(&mut self) {
        self.failures = 0;
    }
}

impl Default for HealthState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut s = HealthState::new();
        // (ok, expected transition) with rise 2, fall 3.
        let steps = [
            (false, None),
            (false, None),
            (true, None), // streak broken
            (false, None),
            (false, None),
            (false, Some(false)),
            (false, None),
            (true, None),
            (false, None),
            (true, None),
            (true, Some(true)),
            (true, None),
        ];
        for (i, (ok, want)) in steps.iter().enumerate() {
            assert_eq!(s.observe(*ok, 2, 3), *want, "step {i}");
        }
        assert!(s.up);
    }

    #[test]
    fn passive_success_resets_the_failure_streak() {
        let mut s = HealthState::new();
        s.observe(false, 1, 2);
        s.passive_success();
        assert_eq!(s.observe(false, 1, 2), None);
        assert_eq!(s.observe(false, 1, 2), Some(false));
    }
}
