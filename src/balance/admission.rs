//! Pool admission: how fast new clients reach a pool's nodes
//! (`max_connect_rate`), how many may wait for it and for how long
//! (`queue`), and what waits for a node under its `max_connections`.
//!
//! What is paced is what reaches the brokers: a client takes its token when
//! it is placed, right before the TCP connect to its node, never during its
//! TLS handshake (the proxy can afford handshakes; a broker that has just
//! lost a neighbour cannot afford its sessions at the rate clients return).
//!
//! The structure, and why it is this one:
//!
//! * a **turnstile** — a `tokio::sync::Semaphore` of one permit. Tokio's
//!   semaphore is fair: waiters are served in the order they asked, and
//!   `try_acquire` fails while anyone waits, so a newcomer never overtakes
//!   the queue. Its waiters are intrusive list nodes inside the waiting
//!   futures, which live in each client's own connection task: waiting
//!   costs no task, no channel and no allocation per client beyond what
//!   the connection already holds. A waiter that goes away (the client
//!   left, its wait timed out) unlinks itself when its future is dropped.
//! * the **head** — whoever holds the permit (a [`Turn`]) — is the only one
//!   that looks at the token bucket and the nodes' caps, so a token and a
//!   node's slot are taken together and nobody races for them. It waits
//!   for the next token (a timer to the instant it is due), or for a slot
//!   (a `Notify` woken when a connection on a capped node ends, a node
//!   enters rotation, or the settings change), never polling.
//! * the **token bucket** — `max_connect_rate` tokens a second, holding at
//!   most one second's worth; one token per client admitted, whatever
//!   the number of nodes it is then offered to.
//! * a **length** — clients in the queue ([`Ticket`]s), bounded by
//!   `queue.size` on entry; the turnstile's own list holds them in order.
//!
//! Off (rate 0 and no node with a cap), none of this is touched: clients go
//! straight to placement, as without admission. The state is long-lived:
//! a pool's [`super::NodeSet`] owns its `Admission`, so a reload keeps the
//! queue, the bucket's tokens and the waiting clients, and applies new
//! settings in place ([`Admission::configure`]).
//!
//! **Pacing**, for the passive health rule (a late CONNACK is no failure
//! while the pool paces, [`Admission::pacing`]): a client waits in the
//! queue now, or one left it (admitted, refused or gone) or was refused
//! for a full queue within the last `queue.timeout`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::config::AdmissionConfig;
use crate::metrics::{AdmissionMetrics, AdmissionResult};

/// A pool's admission state; see the module documentation.
pub struct Admission {
    rate: AtomicU32,
    size: AtomicUsize,
    timeout_ms: AtomicU64,
    /// Some node of the set has a connection cap.
    capped: AtomicBool,
    turnstile: Semaphore,
    // A std Mutex: only the turn's holder and `configure` take it, for a
    // few instructions, never across an await.
    bucket: Mutex<Bucket>,
    queued: AtomicUsize,
    /// The head looks again: a slot freed, a node entered rotation, the
    /// settings changed.
    changed: Notify,
    /// When a client last left the queue or was refused, in ms after
    /// `epoch`, plus one (0: never).
    last_paced: AtomicU64,
    epoch: Instant,
    metrics: AdmissionMetrics,
}

/// The queue is full (or `queue.size` is 0): refused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl Admission {
    /// Off until [`Admission::configure`] says otherwise.
    pub fn new(metrics: AdmissionMetrics) -> Admission {
        Admission {
            rate: AtomicU32::new(0),
            size: AtomicUsize::new(0),
            timeout_ms: AtomicU64::new(0),
            capped: AtomicBool::new(false),
            turnstile: Semaphore::new(1),
            bucket: Mutex::new(Bucket::full(0)),
            queued: AtomicUsize::new(0),
            changed: Notify::new(),
            last_paced: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
        }
    }

    /// Apply a pool's settings in place: waiting clients stay (a smaller
    /// size refuses newcomers only), tokens above a lower rate's burst are
    /// cut to it, and the head looks again.
    pub fn configure(&self, cfg: &AdmissionConfig) {
        self.rate.store(cfg.max_connect_rate, Ordering::Relaxed);
        self.size.store(cfg.queue_size, Ordering::Relaxed);
        let ms = u64::try_from(cfg.queue_timeout.as_millis()).unwrap_or(u64::MAX);
        self.timeout_ms.store(ms, Ordering::Relaxed);
        self.lock_bucket().cap(cfg.max_connect_rate);
        self.metrics
            .queue_capacity
            .set(i64::try_from(cfg.queue_size).unwrap_or(i64::MAX));
        self.wake();
    }

    /// Whether some node of the set has a cap (the node set says).
    pub fn set_capped(&self, capped: bool) {
        self.capped.store(capped, Ordering::Relaxed);
        self.wake();
    }

    /// Whether admission does anything: a rate, or a node with a cap.
    pub fn enabled(&self) -> bool {
        self.rate.load(Ordering::Relaxed) > 0 || self.capped.load(Ordering::Relaxed)
    }

    /// `queue.timeout`: the longest wait, and the pacing window.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// Clients waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The pool is pacing: a client waits now, or one left the queue or
    /// was refused by it within the last `queue.timeout`.
    pub fn pacing(&self) -> bool {
        if self.queued() > 0 {
            return true;
        }
        match self.last_paced.load(Ordering::Acquire) {
            0 => false,
            at => {
                let since = Duration::from_millis(at - 1);
                self.epoch.elapsed().saturating_sub(since) < self.timeout()
            }
        }
    }

    fn mark_paced(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_paced.store(ms + 1, Ordering::Release);
    }

    /// The head looks again (a node entered rotation, settings changed).
    pub fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// A connection on a capped node ended: wake the head if anyone waits.
    pub fn slot_freed(&self) {
        if self.queued() > 0 {
            self.changed.notify_waiters();
        }
    }

    /// The turn at once, when nobody holds or waits for it.
    pub fn try_turn(&self) -> Option<Turn<'_>> {
        self.turnstile.try_acquire().ok().map(|permit| Turn {
            admission: self,
            _permit: permit,
        })
    }

    /// The turn, after everyone who asked before (FIFO). Cancel safe:
    /// dropping the future leaves the line.
    pub async fn turn(&self) -> Turn<'_> {
        match self.turnstile.acquire().await {
            Ok(permit) => Turn {
                admission: self,
                _permit: permit,
            },
            // The turnstile is never closed; a caller's deadline ends this.
            Err(_) => std::future::pending().await,
        }
    }

    /// Take a place in the queue, if it has room. Counts `queue_full`
    /// when it has none.
    pub fn join(&self) -> Result<Ticket<'_>, QueueFull> {
        let size = self.size.load(Ordering::Relaxed);
        let joined = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < size).then_some(n + 1)
            });
        if joined.is_err() {
            self.mark_paced();
            self.metrics.result(AdmissionResult::QueueFull);
            return Err(QueueFull);
        }
        self.metrics.queue_length.inc();
        Ok(Ticket {
            admission: self,
            since: Instant::now(),
            result: Some(AdmissionResult::Abandoned),
        })
    }

    /// A future that completes when the head should look again; create it
    /// (and `enable` it) before looking, so no wake-up is lost.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Count a client let through without waiting.
    pub fn admitted_at_once(&self) {
        self.metrics.result(AdmissionResult::Immediate);
    }

    fn lock_bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        // A poisoned lock only means a panic elsewhere mid-update of two
        // numbers; the bucket is still usable.
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The right to admit the next client: one holder at a time, in arrival
/// order. Dropping it lets the next in line look.
pub struct Turn<'a> {
    admission: &'a Admission,
    _permit: SemaphorePermit<'a>,
}

impl Turn<'_> {
    /// `Ok` when a token is there (not taken), else when the next is due.
    pub fn token(&self, now: Instant) -> Result<(), Instant> {
        let rate = self.admission.rate.load(Ordering::Relaxed);
        self.admission.lock_bucket().ready(now, rate)
    }

    /// Take the token [`Turn::token`] found.
    pub fn take_token(&self, now: Instant) {
        let rate = self.admission.rate.load(Ordering::Relaxed);
        self.admission.lock_bucket().take(now, rate);
    }
}

/// A client's place in the queue: counted in its length while it lives.
/// Dropped without [`Ticket::admitted`] or [`Ticket::refused`], the client
/// left while waiting (`abandoned`).
pub struct Ticket<'a> {
    admission: &'a Admission,
    since: Instant,
    /// What its end counts under (`None`: nothing).
    result: Option<AdmissionResult>,
}

impl Ticket<'_> {
    /// When the client joined.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// The client was let through after waiting (`paced`).
    pub fn admitted(mut self) {
        self.admission
            .metrics
            .wait
            .observe(self.since.elapsed().as_secs_f64());
        self.result = Some(AdmissionResult::Paced);
    }

    /// The client waited `queue.timeout` in vain (`queue_timeout`).
    pub fn timed_out(mut self) {
        self.result = Some(AdmissionResult::QueueTimeout);
    }

    /// The client left the queue with nothing to count under admission
    /// (no node in rotation any more: it is refused as `no_backend`).
    pub fn dismissed(mut self) {
        self.result = None;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let a = self.admission;
        a.queued.fetch_sub(1, Ordering::AcqRel);
        a.metrics.queue_length.dec();
        a.mark_paced();
        if let Some(result) = self.result {
            a.metrics.result(result);
        }
    }
}

/// A token bucket of `rate` tokens a second holding at most `rate` (one
/// second's worth; at least one token). Pure: the caller says what time
/// it is.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    /// Full: the first second's clients go at once.
    fn full(rate: u32) -> Bucket {
        Bucket {
            tokens: burst(rate),
            at: None,
        }
    }

    fn refill(&mut self, now: Instant, rate: u32) {
        if let Some(at) = self.at {
            let gained = now.saturating_duration_since(at).as_secs_f64() * f64::from(rate);
            self.tokens = (self.tokens + gained).min(burst(rate));
        }
        self.at = Some(now);
    }

    fn ready(&mut self, now: Instant, rate: u32) -> Result<(), Instant> {
        if rate == 0 {
            return Ok(());
        }
        self.refill(now, rate);
        if self.tokens >= 1.0 {
            return Ok(());
        }
        let missing = (1.0 - self.tokens) / f64::from(rate);
        // At least a millisecond: the timer's resolution.
        Err(now + Duration::from_secs_f64(missing).max(Duration::from_millis(1)))
    }

    fn take(&mut self, now: Instant, rate: u32) {
        if rate == 0 {
            return;
        }
        self.refill(now, rate);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    /// A new rate: what was saved above its burst is cut to it; a bucket
    /// never drawn from is full at it.
    fn cap(&mut self, rate: u32) {
        self.tokens = match self.at {
            None => burst(rate),
            Some(_) => self.tokens.min(burst(rate)),
        };
    }
}

fn burst(rate: u32) -> f64 {
    f64::from(rate.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn admission(rate: u32, size: usize) -> Admission {
        let metrics = crate::metrics::Metrics::new(&mut Registry::default());
        let a = Admission::new(metrics.admission("p"));
        a.configure(&AdmissionConfig {
            max_connect_rate: rate,
            queue_size: size,
            queue_timeout: Duration::from_secs(10),
        });
        a
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_bursts_one_second_then_paces() {
        let mut b = Bucket::full(10);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(b.ready(t0, 10), Ok(()));
            b.take(t0, 10);
        }
        assert_eq!(b.ready(t0, 10), Err(t0 + Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.ready(t1, 10), Ok(()), "one token per 100 ms");
        b.take(t1, 10);
        // Idle for a minute: still one second's worth, no more.
        let t2 = t1 + Duration::from_secs(60);
        let taken = (0..20)
            .take_while(|_| {
                let ok = b.ready(t2, 10).is_ok();
                if ok {
                    b.take(t2, 10);
                }
                ok
            })
            .count();
        assert_eq!(taken, 10);
        // A lower rate cuts the saved tokens to its own burst.
        let mut b = Bucket::full(100);
        b.take(t0, 100);
        b.cap(2);
        assert_eq!(b.tokens, 2.0);
        // Configured before its first use: full at its rate.
        let mut b = Bucket::full(0);
        b.cap(25);
        assert_eq!(b.tokens, 25.0);
        assert_eq!(Bucket::full(0).ready(t0, 0), Ok(()), "rate 0: no limit");
    }

    async fn take_turn(a: &Admission, ticket: Ticket<'_>, n: u32, order: &Mutex<Vec<u32>>) {
        let _turn = a.turn().await;
        order.lock().unwrap_or_else(|p| p.into_inner()).push(n);
        ticket.admitted();
    }

    #[tokio::test(start_paused = true)]
    async fn turns_are_taken_in_arrival_order_and_the_queue_is_bounded() {
        let a = admission(1, 2);
        assert!(a.enabled());
        let head = a.try_turn().expect("nobody waits");
        assert!(a.try_turn().is_none(), "one turn at a time");
        let first = a.join().expect("room");
        let second = a.join().expect("room");
        assert_eq!(a.join().err(), Some(QueueFull), "size 2");
        assert_eq!(a.queued(), 2);
        assert!(a.pacing());

        let order = Mutex::new(Vec::new());
        let mut both = Box::pin(async {
            tokio::join!(
                take_turn(&a, second, 2, &order),
                take_turn(&a, first, 1, &order)
            )
        });
        // Polled (second first), both wait for the head's turn.
        let waited = tokio::time::timeout(Duration::from_millis(5), &mut both).await;
        assert!(waited.is_err(), "the head holds the turn");
        drop(head);
        both.await;
        assert_eq!(
            *order.lock().unwrap_or_else(|p| p.into_inner()),
            [2, 1],
            "in the order they asked for the turn"
        );
        assert_eq!(a.queued(), 0);
        assert!(a.pacing(), "within queue.timeout of the last wait");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!a.pacing());
        assert!(a.try_turn().is_some(), "free again");
        let none = admission(0, 0);
        assert!(!none.enabled(), "no rate and no caps: off");
        assert_eq!(none.join().err(), Some(QueueFull), "size 0: no waiting");
    }
}
