//! Rebalance runs (`[pool.X] rebalance = { after, rate }` and
//! `POST /api/v1/pools/{pool}/rebalance`): who moves is decided by
//! `balance::rebalance`; here a watcher starts a run when a node has been
//! back long enough, and a run asks its clients to move at `rate` per
//! second.
//!
//! A node's return is taken once it has been in rotation `after` and is
//! past its slow start (while it ramps, a client sent home could be sent
//! to its runner-up again). One run per pool at a time; a return that
//! comes due meanwhile waits for the run to end. A run for a node stops
//! when that node leaves rotation again, and every run stops at shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::{ProxyHandle, ProxyState};
use crate::balance::Pool;
use crate::balance::rebalance::{self, Target, Trigger};
use crate::config::defaults;

/// How often the watcher looks for nodes whose return is due.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Why a rebalance by hand did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebalanceError {
    #[error("no pool is named {0:?}")]
    NoPool(String),
    #[error("a rebalance of pool {0:?} is running")]
    Running(String),
}

impl ProxyHandle {
    /// Start a rebalance of `pool` by hand, at `rate` (else the pool's
    /// `rebalance.rate`, else the default): every client out of place
    /// moves. Returns how many are planned.
    pub fn rebalance(&self, pool: &str, rate: Option<u32>) -> Result<usize, RebalanceError> {
        let generation = self.state.current.load();
        let Some(p) = generation.pools.get(pool) else {
            return Err(RebalanceError::NoPool(pool.to_string()));
        };
        let configured = generation
            .config
            .pools
            .get(pool)
            .and_then(|c| c.rebalance)
            .map(|r| r.rate);
        let rate = rate.or(configured).unwrap_or(defaults::REBALANCE_RATE);
        self.state
            .start_rebalance(p.clone(), Target::All, Trigger::Manual, rate)
            .ok_or_else(|| RebalanceError::Running(pool.to_string()))
    }
}

impl ProxyState {
    /// Plan and start a run; `None` if one is running for the pool.
    fn start_rebalance(
        &self,
        pool: Arc<Pool>,
        target: Target<'_>,
        trigger: Trigger,
        rate: u32,
    ) -> Option<usize> {
        let movers = rebalance::plan(pool.strategy, &pool.backends(), target);
        let planned = movers.len();
        if !pool.nodes.rebalance.begin(trigger.clone(), rate, planned) {
            return None;
        }
        info!(pool = %pool.name, ?trigger, planned, rate, "rebalance: moving clients");
        let node = match target {
            Target::Home(b) => Some(b.clone()),
            Target::All => None,
        };
        let stop = self.shutdown.clone();
        self.background.spawn(async move {
            let start = Instant::now();
            let mut stopped = None;
            for (i, mover) in movers.into_iter().enumerate() {
                tokio::select! {
                    biased; // a shutdown wins over a turn that is due
                    _ = stop.cancelled() => {
                        stopped = Some("shutdown");
                        break;
                    }
                    _ = tokio::time::sleep_until(start + rebalance::due(i, rate)) => {}
                }
                if node.as_ref().is_some_and(|n| !n.in_rotation()) {
                    stopped = Some("the node left rotation");
                    break;
                }
                pool.nodes.rebalance.step(mover.kick());
            }
            pool.nodes.rebalance.end(stopped);
            let p = pool.nodes.rebalance.progress();
            info!(
                pool = %pool.name,
                moved = p.as_ref().map_or(0, |p| p.moved),
                gone = p.as_ref().map_or(0, |p| p.gone),
                stopped,
                "rebalance: run ended"
            );
        });
        Some(planned)
    }

    /// Start a run for every node whose return is due, in pools with
    /// `rebalance`, until shutdown.
    pub(super) async fn watch_rebalance(self: Arc<Self>) {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let generation = self.current.load_full();
            for (name, pool) in &generation.pools {
                let Some(cfg) = generation.config.pools.get(name) else {
                    continue;
                };
                let Some(settings) = cfg.rebalance else {
                    continue;
                };
                if pool.nodes.rebalance.running() {
                    continue;
                }
                let wait = settings.after.max(cfg.slow_start);
                let backends = pool.backends();
                if let Some(b) = backends
                    .iter()
                    .find(|b| b.in_rotation() && b.take_return(wait))
                {
                    self.start_rebalance(
                        pool.clone(),
                        Target::Home(b),
                        Trigger::Node(b.name.clone()),
                        settings.rate,
                    );
                }
            }
        }
    }
}
