//! Rebalance: which clients to move, and a pool's progress at it.
//!
//! When a node enters rotation again (back up, added, enabled) it has no
//! clients; with client-id (username, certificate CN) hashing its own
//! clients stay piled on the survivors until they happen to reconnect.
//! A rebalance asks them to move, a few per second, at a packet boundary
//! (MQTT 5: DISCONNECT 0x9C "use another server"; 3.1.1: the connection is
//! closed, a plain reconnect to the client), and their reconnects land at
//! home. This module decides *who* moves (pure given the nodes and their
//! connections); `proxy::rebalance` paces the moves and starts runs.
//!
//! * **Hash pools**, a node `x` back: every client on another node whose
//!   home — the first node of its key's ranking among the nodes in
//!   rotation, ignoring slow start and caps — is `x`. Never a client whose
//!   home is elsewhere. By hand (`POST /api/v1/pools/{pool}/rebalance`):
//!   every client not on its home. Clients without a key stay.
//! * **Round robin, least connections**: clients over their node's fair
//!   share (by weight, over the nodes in rotation) move, newest first;
//!   their reconnects go where the strategy sends them, which is the
//!   least-loaded node for least connections.
//!
//! Only connections that passed a CONNECT (MQTT listeners) can be moved;
//! a draining or down node's clients are the drain's business, not ours.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use super::config::Strategy;
use super::strategy::hrw_score;
use super::{Backend, KickSignal};

/// One client to ask to move.
pub struct Mover {
    pub backend: Arc<Backend>,
    pub id: u64,
    token: Arc<KickSignal>,
}

impl Mover {
    pub(super) fn new(backend: Arc<Backend>, id: u64, token: Arc<KickSignal>) -> Mover {
        Mover { backend, id, token }
    }

    /// Ask the client to move, if it is still connected there. `false`:
    /// it left meanwhile (not counted as moved).
    pub fn kick(&self) -> bool {
        if !self.backend.holds(self.id) || self.token.is_kicked() {
            return false;
        }
        self.token.kick();
        true
    }
}

/// What a run moves.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// The clients of a node back in rotation (hash pools: those whose
    /// home it is; others: as [`Target::All`]).
    Home(&'a Arc<Backend>),
    /// Everything out of place (by hand).
    All,
}

/// The clients to move from `backends` (one pool's nodes) for `target`,
/// oldest first for hash pools, newest first for the others.
pub fn plan(strategy: Strategy, backends: &[Arc<Backend>], target: Target<'_>) -> Vec<Mover> {
    let rotation: Vec<&Arc<Backend>> = backends.iter().filter(|b| b.in_rotation()).collect();
    if rotation.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    match strategy {
        Strategy::ClientId => {
            let seeds: Vec<u64> = rotation.iter().map(|b| b.seed).collect();
            for b in backends {
                let Some(here) = rotation.iter().position(|r| Arc::ptr_eq(r, b)) else {
                    // Down or draining: not ours to move.
                    continue;
                };
                let wanted = match target {
                    Target::Home(x) => match rotation.iter().position(|r| Arc::ptr_eq(r, x)) {
                        Some(home) if home != here => Some(home),
                        _ => continue,
                    },
                    Target::All => None,
                };
                b.each_movable(|id, key, token| {
                    let Some(key) = key.filter(|k| !k.is_empty()) else {
                        return;
                    };
                    let home = home_of(key, &seeds);
                    let moves = match wanted {
                        Some(w) => home == w,
                        None => home != here,
                    };
                    if moves {
                        out.push(Mover::new(b.clone(), id, token.clone()));
                    }
                });
            }
            out.sort_by_key(|m| m.id);
        }
        Strategy::RoundRobin | Strategy::LeastConnections => {
            let counts: Vec<u64> = rotation.iter().map(|b| b.movable_count()).collect();
            let weights: Vec<u32> = rotation.iter().map(|b| b.weight()).collect();
            for (b, excess) in rotation.iter().zip(over_share(&counts, &weights)) {
                if excess == 0 {
                    continue;
                }
                let mut mine: Vec<Mover> = Vec::new();
                b.each_movable(|id, _, token| {
                    mine.push(Mover::new((*b).clone(), id, token.clone()));
                });
                mine.sort_by_key(|m| std::cmp::Reverse(m.id));
                mine.truncate(usize::try_from(excess).unwrap_or(usize::MAX));
                out.extend(mine);
            }
            // Take from every crowded node in turn, not one after another.
            out.sort_by_key(|m| std::cmp::Reverse(m.id));
        }
    }
    out
}

/// The index (into `seeds`) of a key's home: its highest rendezvous
/// score, ties to the higher seed — the first node `strategy::order`
/// ranks for it.
pub fn home_of(key: &[u8], seeds: &[u64]) -> usize {
    (0..seeds.len())
        .max_by_key(|&i| seeds.get(i).map(|&s| (hrw_score(key, s), s)))
        .unwrap_or(0)
}

/// How many clients each node holds over its fair share: `counts` split
/// by `weights`, the share rounded up (so a balanced pool moves nobody).
pub fn over_share(counts: &[u64], weights: &[u32]) -> Vec<u64> {
    let total: u128 = counts.iter().map(|&c| u128::from(c)).sum();
    let weight: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    counts
        .iter()
        .zip(weights)
        .map(|(&c, &w)| {
            if weight == 0 {
                return 0;
            }
            let share = (total * u128::from(w)).div_ceil(weight);
            u64::try_from(u128::from(c).saturating_sub(share)).unwrap_or(0)
        })
        .collect()
}

/// Why a run started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The node came back (`rebalance.after` past its return).
    Node(String),
    /// `POST /api/v1/pools/{pool}/rebalance`.
    Manual,
}

/// A pool's last (or current) rebalance run, for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub trigger: Trigger,
    pub rate: u32,
    pub planned: u64,
    pub moved: u64,
    /// Planned but gone before their turn.
    pub gone: u64,
    pub started: Instant,
    /// `None` while it runs.
    pub finished: Option<Instant>,
    /// Why it ended early (a node left rotation, shutdown), if it did.
    pub stopped: Option<&'static str>,
}

impl Progress {
    pub fn running(&self) -> bool {
        self.finished.is_none()
    }

    /// Seconds the run took (so far).
    pub fn seconds(&self) -> f64 {
        self.finished
            .unwrap_or_else(Instant::now)
            .duration_since(self.started)
            .as_secs_f64()
    }
}

/// A pool's rebalance runs: one at a time, its progress kept for the
/// admin API and the metrics. Owned by the pool's node set, so a reload
/// neither forgets nor restarts a run.
pub struct Rebalancer {
    // A std Mutex: held for a few instructions, never across an await.
    progress: Mutex<Option<Progress>>,
    moved: Counter,
    pending: Gauge,
}

impl Rebalancer {
    pub fn new(moved: Counter, pending: Gauge) -> Rebalancer {
        Rebalancer {
            progress: Mutex::new(None),
            moved,
            pending,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Progress>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current run, or the last one.
    pub fn progress(&self) -> Option<Progress> {
        self.lock().clone()
    }

    pub fn running(&self) -> bool {
        self.lock().as_ref().is_some_and(Progress::running)
    }

    /// Start a run of `planned` moves; `false` if one is running.
    pub fn begin(&self, trigger: Trigger, rate: u32, planned: usize) -> bool {
        let mut p = self.lock();
        if p.as_ref().is_some_and(Progress::running) {
            return false;
        }
        let planned = planned as u64;
        *p = Some(Progress {
            trigger,
            rate,
            planned,
            moved: 0,
            gone: 0,
            started: Instant::now(),
            finished: None,
            stopped: None,
        });
        self.pending.set(i64::try_from(planned).unwrap_or(i64::MAX));
        true
    }

    /// One planned client had its turn: moved, or gone before it.
    pub fn step(&self, moved: bool) {
        if let Some(p) = self.lock().as_mut() {
            if moved {
                p.moved += 1;
                self.moved.inc();
            } else {
                p.gone += 1;
            }
        }
        self.pending.dec();
    }

    /// The run ended (`stopped`: why, if early).
    pub fn end(&self, stopped: Option<&'static str>) {
        if let Some(p) = self.lock().as_mut() {
            p.finished = Some(Instant::now());
            p.stopped = stopped;
        }
        self.pending.set(0);
    }
}

/// When the `i`-th move of a run at `rate` per second is due after its
/// start (the first at once).
pub fn due(i: usize, rate: u32) -> Duration {
    let rate = u64::from(rate.max(1));
    let i = u64::try_from(i).unwrap_or(u64::MAX);
    Duration::from_micros(i.saturating_mul(1_000_000) / rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::strategy::{self, NodeView, SmoothWrr};

    #[test]
    fn the_home_is_what_the_strategy_ranks_first() {
        let names = ["node1", "node2", "node3"];
        let seeds: Vec<u64> = names.iter().map(|n| strategy::name_seed(n)).collect();
        let views: Vec<NodeView> = seeds
            .iter()
            .map(|&seed| NodeView {
                seed,
                weight: 1,
                active: 0,
                ramp: strategy::FULL,
            })
            .collect();
        for i in 0..500 {
            let key = format!("dev-{i}");
            let order = strategy::order(
                Strategy::ClientId,
                &views,
                &[0, 1, 2],
                Some(key.as_bytes()),
                &mut SmoothWrr::default(),
                0,
            );
            assert_eq!(order[0], home_of(key.as_bytes(), &seeds), "{key}");
        }
    }

    #[test]
    fn a_balanced_pool_moves_nobody_and_a_crowded_node_sheds_its_excess() {
        assert_eq!(over_share(&[10, 10, 10], &[1, 1, 1]), [0, 0, 0]);
        assert_eq!(over_share(&[11, 10, 10], &[1, 1, 1]), [0, 0, 0]);
        assert_eq!(over_share(&[45, 45, 0], &[1, 1, 1]), [15, 15, 0]);
        assert_eq!(over_share(&[30, 0], &[2, 1]), [10, 0]);
        assert_eq!(over_share(&[], &[]), Vec::<u64>::new());
        assert_eq!(over_share(&[5, 5], &[0, 0]), [0, 0]);
    }

    #[test]
    fn moves_are_spread_at_the_rate() {
        assert_eq!(due(0, 100), Duration::ZERO);
        assert_eq!(due(1, 100), Duration::from_millis(10));
        assert_eq!(due(250, 100), Duration::from_millis(2500));
        assert_eq!(
            due(3, 0),
            Duration::from_secs(3),
            "a zero rate is one a second"
        );
        assert_eq!(due(usize::MAX, 1), Duration::from_micros(u64::MAX));
    }
}
