//! The health state machine of one backend (pure): consecutive successes
//! bring a down node up after `rise`, consecutive failures take an up node
//! down after `fall`, as HAProxy's `rise`/`fall` do.
//!
//! Two kinds of evidence feed it, each with its own streak, and the node
//! goes down when the two failure streaks together reach `fall`:
//!
//! * Active checks: a success ends the check failure streak and counts
//!   towards `rise`; a failure counts towards `fall`.
//! * Client connections (passive): a CONNECT the node did not answer
//!   (refused TCP connect, no CONNACK in time, closed first, "server
//!   unavailable") counts towards `fall`; a CONNECT it answered ends the
//!   passive failure streak.
//!
//! Neither kind of success ends the other kind's streak, as in HAProxy's
//! `observe layer4`: answered clients do not hide failing checks (a stalled
//! node that still answers some clients slowly goes down as it would with
//! no traffic), and passing checks do not hide a node that swallows its
//! clients (a black hole that accepts TCP behind `check = "tcp"`). Passive
//! results never bring a node up (a node out of rotation gets no clients);
//! coming up starts both streaks afresh.

/// Health of one backend as seen by checks and client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    pub up: bool,
    /// Active check successes in a row.
    successes: u32,
    /// Active check failures in a row.
    check_failures: u32,
    /// Unanswered client CONNECTs since the last answered one.
    passive_failures: u32,
}

impl HealthState {
    /// A new backend starts up, as HAProxy servers do, so a proxy starting
    /// in front of a live cluster serves at once; checks take it down within
    /// `fall` intervals if it is not.
    pub fn new() -> Self {
        HealthState {
            up: true,
            successes: 0,
            check_failures: 0,
            passive_failures: 0,
        }
    }

    /// Record an active check result. Returns the new state on a transition.
    pub fn observe_check(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.check_failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= rise {
                self.up = true;
                self.passive_failures = 0;
                return Some(true);
            }
            None
        } else {
            self.successes = 0;
            self.check_failures = self.check_failures.saturating_add(1);
            self.fall_if_due(fall)
        }
    }

    /// Record the outcome of placing a client on the node. Returns the new
    /// state on a transition (only ever down).
    pub fn observe_passive(&mut self, ok: bool, fall: u32) -> Option<bool> {
        if ok {
            self.passive_failures = 0;
            None
        } else {
            // A node that fails clients has not earned its way back up yet.
            self.successes = 0;
            self.passive_failures = self.passive_failures.saturating_add(1);
            self.fall_if_due(fall)
        }
    }

    fn fall_if_due(&mut self, fall: u32) -> Option<bool> {
        let failures = self.check_failures.saturating_add(self.passive_failures);
        if self.up && failures >= fall {
            self.up = false;
            return Some(false);
        }
        None
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

    /// One observation: an active check or a client placement.
    #[derive(Clone, Copy)]
    enum Ev {
        Check(bool),
        Client(bool),
    }
    use Ev::*;

    /// Apply `steps` with rise 2, fall 3; each step names the transition
    /// it must cause.
    fn run(steps: &[(Ev, Option<bool>)]) -> HealthState {
        let mut s = HealthState::new();
        for (i, (ev, want)) in steps.iter().enumerate() {
            let got = match *ev {
                Check(ok) => s.observe_check(ok, 2, 3),
                Client(ok) => s.observe_passive(ok, 3),
            };
            assert_eq!(got, *want, "step {i}");
        }
        s
    }

    /// A flapping node (every other check fails) never changes state with
    /// rise = fall = 2: no oscillation, whichever state it starts in.
    #[test]
    fn a_flapping_node_does_not_oscillate() {
        for start_up in [true, false] {
            let mut s = HealthState::new();
            if !start_up {
                assert_eq!(s.observe_check(false, 2, 2), None);
                assert_eq!(s.observe_check(false, 2, 2), Some(false));
            }
            for i in 0..1000 {
                assert_eq!(s.observe_check(i % 2 == 0, 2, 2), None, "flap {i}");
            }
        }
    }

    #[test]
    fn rise_and_fall() {
        let s = run(&[
            (Check(false), None),
            (Check(false), None),
            (Check(true), None), // streak broken
            (Check(false), None),
            (Check(false), None),
            (Check(false), Some(false)),
            (Check(false), None),
            (Check(true), None),
            (Check(false), None),
            (Check(true), None),
            (Check(true), Some(true)),
            (Check(true), None),
        ]);
        assert!(s.up);
    }

    #[test]
    fn unanswered_clients_count_towards_fall() {
        // A black hole under traffic: checks and clients both fail.
        run(&[
            (Check(false), None),
            (Client(false), None),
            (Client(false), Some(false)),
        ]);
        // Clients alone take it down too.
        run(&[
            (Client(false), None),
            (Client(false), None),
            (Client(false), Some(false)),
        ]);
    }

    #[test]
    fn answered_clients_do_not_hide_failing_checks() {
        // A stalled node that still answers a client now and then: its
        // checks decide, as they would with no traffic.
        run(&[
            (Check(false), None),
            (Client(true), None),
            (Check(false), None),
            (Client(true), None),
            (Check(false), Some(false)),
        ]);
    }

    #[test]
    fn passing_checks_do_not_hide_unanswered_clients() {
        // A node that passes TCP checks but swallows every CONNECT.
        run(&[
            (Client(false), None),
            (Check(true), None),
            (Client(false), None),
            (Check(true), None),
            (Client(false), Some(false)),
        ]);
    }

    #[test]
    fn answered_clients_end_only_the_passive_streak() {
        run(&[
            (Client(false), None),
            (Client(false), None),
            (Client(true), None),
            (Client(false), None),
            (Check(false), None),
            (Client(true), None),
            (Check(false), None),
            (Client(true), None),
            (Check(false), Some(false)),
        ]);
    }

    #[test]
    fn coming_up_starts_afresh() {
        let s = run(&[
            (Client(false), None),
            (Client(false), None),
            (Client(false), Some(false)),
            (Check(true), None),
            (Check(true), Some(true)),
            (Client(false), None),
            (Client(false), None),
        ]);
        assert!(s.up);
    }

    #[test]
    fn clients_never_bring_a_node_up_and_failures_reset_rise() {
        let s = run(&[
            (Check(false), None),
            (Check(false), None),
            (Check(false), Some(false)),
            (Client(true), None),
            (Client(true), None),
            (Check(true), None),
            (Client(false), None),
            (Check(true), None),
            (Check(true), Some(true)),
        ]);
        assert!(s.up);
    }
}
