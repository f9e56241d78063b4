//! Draining a backend: out of rotation for new clients, and optionally its
//! MQTT 5 clients asked to move (DISCONNECT 0x9C "use another server"), one
//! at a time spread over a window so that they do not reconnect at once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::ProxyHandle;
use crate::balance::{Backend, KickSignal};

impl ProxyHandle {
    /// Take a backend out of rotation (`true`) or put it back; open
    /// connections are untouched. `false` if no backend has that name.
    pub fn set_draining(&self, name: &str, draining: bool) -> bool {
        self.drain(name, draining, None)
    }

    /// Drain (or enable) a backend. When draining with `disconnect` —
    /// `Some(window)`, or the pool's `drain_disconnect` when `None` — its
    /// MQTT 5 clients are sent DISCONNECT 0x9C "use another server", one
    /// by one spread over the window, until the backend is enabled again.
    pub fn drain(&self, name: &str, draining: bool, disconnect: Option<Option<Duration>>) -> bool {
        let generation = self.state.current.load();
        let mut found = false;
        for pool in generation.pools.values() {
            let Some(b) = pool.find(name) else { continue };
            found = true;
            b.set_draining(draining);
            info!(backend = %b.name, draining, "backend drain state changed by the admin API");
            let window = match disconnect {
                Some(w) => w,
                None => generation
                    .config
                    .pools
                    .get(&pool.name)
                    .filter(|p| p.drain_disconnect)
                    .map(|p| p.drain_window),
            };
            if let (true, Some(window)) = (draining, window) {
                self.kick_paced(b.clone(), window);
            }
        }
        found
    }

    fn kick_paced(&self, backend: Arc<Backend>, window: Duration) {
        let tokens = backend.kick_tokens();
        let n = tokens.len();
        if n == 0 {
            return;
        }
        info!(backend = %backend.name, clients = n, ?window, "drain: asking MQTT 5 clients to use another server");
        let stop = self.state.shutdown.clone();
        self.state.background.spawn(async move {
            let moved = pace(tokens, window, &stop, || backend.is_draining()).await;
            if moved < n && !stop.is_cancelled() {
                info!(backend = %backend.name, moved, "drain cancelled; no more clients asked to move");
            }
        });
    }
}

/// Cancel `tokens` one by one, the i-th of n at `i/n × window` from now,
/// while `still_draining()` holds and `stop` is not cancelled. Returns how
/// many were cancelled.
async fn pace(
    tokens: Vec<Arc<KickSignal>>,
    window: Duration,
    stop: &CancellationToken,
    still_draining: impl Fn() -> bool,
) -> usize {
    let start = tokio::time::Instant::now();
    let n = tokens.len();
    for (i, token) in tokens.into_iter().enumerate() {
        let at = start + offset(i, n, window);
        tokio::select! {
            biased; // a shutdown wins over a turn that is due
            _ = stop.cancelled() => return i,
            _ = tokio::time::sleep_until(at) => {}
        }
        if !still_draining() {
            return i;
        }
        token.kick();
    }
    n
}

/// When the i-th of n clients is asked to move: evenly over the window,
/// the first at once.
fn offset(i: usize, n: usize, window: Duration) -> Duration {
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let i = u32::try_from(i).unwrap_or(u32::MAX).min(n);
    window / n * i
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    async fn kicked(signal: &KickSignal) {
        std::future::poll_fn(|cx| {
            if signal.poll_kicked(cx) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }

    #[test]
    fn offsets_spread_over_the_window() {
        let w = Duration::from_secs(10);
        let got: Vec<Duration> = (0..4).map(|i| offset(i, 4, w)).collect();
        assert_eq!(got, [0, 2500, 5000, 7500].map(Duration::from_millis));
        assert_eq!(offset(0, 0, w), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn clients_are_asked_one_by_one_and_a_cancelled_drain_stops() {
        let tokens: Vec<Arc<KickSignal>> = (0..4).map(|_| Arc::default()).collect();
        let stop = CancellationToken::new();
        let draining = std::sync::Arc::new(AtomicBool::new(true));
        let task = tokio::spawn({
            let (tokens, stop, draining) = (tokens.clone(), stop.clone(), draining.clone());
            async move {
                pace(tokens, Duration::from_secs(4), &stop, || {
                    draining.load(Ordering::Relaxed)
                })
                .await
            }
        });
        let start = tokio::time::Instant::now();
        kicked(&tokens[0]).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        kicked(&tokens[1]).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert!(!tokens[2].is_kicked());
        // The backend is enabled again before the third client's turn.
        draining.store(false, Ordering::Relaxed);
        assert_eq!(task.await.unwrap(), 2);
        assert!(!tokens[2].is_kicked() && !tokens[3].is_kicked());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_the_pacing() {
        let tokens: Vec<Arc<KickSignal>> = (0..3).map(|_| Arc::default()).collect();
        let stop = CancellationToken::new();
        stop.cancel();
        assert_eq!(
            pace(tokens.clone(), Duration::from_secs(3), &stop, || true).await,
            0
        );
        assert!(tokens.iter().all(|t| !t.is_kicked()));
    }
}
