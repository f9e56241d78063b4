//! The access log: one line per client connection when it ends, and one
//! per refused client, in text (fixed field order, `-` for what is
//! absent) or JSON (one object per line). `docs/access-log.md` documents
//! every field.
//!
//! A connection task builds its line ([`Record`] → [`AccessLog::log`])
//! and hands it to a bounded queue ([`QUEUE`] lines); one writer thread
//! owns the destination and writes what arrived in batches (every
//! 20 ms while lines keep coming), flushing after each. The connection
//! task never waits: when the queue is full the line is dropped and
//! counted (`mqttlb_access_log_dropped_total`). The
//! writer re-opens a file destination when asked ([`AccessLog::reopen`]:
//! SIGUSR1, a reload), so logrotate's rename-then-signal works.
//!
//! Strings a peer controls (SNI, client id, user name) are escaped (no
//! control characters, no line breaks, no unescaped quotes) and cut at
//! [`MAX_FIELD`] bytes, marked with [`CUT_MARK`]. Refusal lines are
//! rate-limited like other lines a peer can trigger ([`crate::ratelog`]);
//! the next line written says how many were left out.
//!
//! # Layout
//!
//! * this file — the `[log]` settings, [`AccessLog`] and its writer
//!   thread;
//! * `line` — a [`Record`] as a text or JSON line, escaping and cutting
//!   (pure).

mod line;

pub use line::{CUT_MARK, End, MAX_FIELD, Record, Timings, cap};

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tracing::warn;

use crate::ratelog::LogLimiter;

/// Lines waiting for the writer, at most (≈ 3 MiB at 400 bytes a line);
/// past it lines are dropped and counted.
pub const QUEUE: usize = 8192;
/// Refusal lines: at most this many per [`REFUSAL_PERIOD`].
pub const REFUSAL_BURST: u32 = 100;
pub const REFUSAL_PERIOD: Duration = Duration::from_secs(10);

/// `[log] access`: where the lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Destination {
    #[default]
    Stderr,
    Off,
    /// Appended to; created when missing; re-opened on SIGHUP and SIGUSR1.
    File(PathBuf),
}

/// The `[log]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessConfig {
    pub destination: Destination,
    /// `access_username`: log the CONNECT's user name.
    pub username: bool,
}

/// How lines are written: the process's `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// What the writer thread is sent.
enum Msg {
    Line(String),
    /// Look at the destination again (re-open).
    Wake,
}

/// What the writer and the handles share.
struct Shared {
    destination: Mutex<Destination>,
    /// Bumped by every re-open request; the writer re-opens when it sees a
    /// new value.
    generation: AtomicU64,
}

/// The process's access log: cheap to share, never blocks a caller.
pub struct AccessLog {
    /// `Format::Json` when set.
    json: AtomicBool,
    username: AtomicBool,
    on: AtomicBool,
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    dropped: Counter,
    refusals: LogLimiter,
    /// Refusal lines left out since the last line written.
    skipped: AtomicU64,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("json", &self.json)
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Open the destination (an error names what failed) and start the
    /// writer thread, which ends when the log is dropped.
    pub fn start(
        config: &AccessConfig,
        format: Format,
        dropped: Counter,
    ) -> std::io::Result<AccessLog> {
        let sink = Sink::open(&config.destination)?;
        let (tx, rx) = sync_channel(QUEUE);
        let shared = Arc::new(Shared {
            destination: Mutex::new(config.destination.clone()),
            generation: AtomicU64::new(0),
        });
        let writer_shared = shared.clone();
        let writer_dropped = dropped.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, sink, &writer_shared, &writer_dropped))?;
        Ok(AccessLog {
            json: AtomicBool::new(format == Format::Json),
            username: AtomicBool::new(config.username),
            on: AtomicBool::new(config.destination != Destination::Off),
            tx,
            shared,
            dropped,
            refusals: LogLimiter::new(REFUSAL_BURST, REFUSAL_PERIOD),
            skipped: AtomicU64::new(0),
        })
    }

    /// Write lines in `format` from now on.
    pub fn set_format(&self, format: Format) {
        self.json.store(format == Format::Json, Ordering::Relaxed);
    }

    /// Check that `destination` can be opened (for a reload, before it
    /// swaps anything).
    pub fn check(destination: &Destination) -> std::io::Result<()> {
        Sink::open(destination).map(drop)
    }

    /// Apply a (re)loaded `[log]` table and re-open the destination.
    pub fn configure(&self, config: &AccessConfig) {
        self.username.store(config.username, Ordering::Relaxed);
        self.on
            .store(config.destination != Destination::Off, Ordering::Relaxed);
        *self
            .shared
            .destination
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = config.destination.clone();
        self.reopen();
    }

    /// Re-open the destination (logrotate: after the file was renamed).
    pub fn reopen(&self) {
        self.shared.generation.fetch_add(1, Ordering::Relaxed);
        // Full: the writer is busy and looks at the generation before its
        // next batch anyway.
        let _ = self.tx.try_send(Msg::Wake);
    }

    /// Lines are written (`access` is not "off").
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// `access_username`.
    pub fn username(&self) -> bool {
        self.username.load(Ordering::Relaxed)
    }

    /// Write `record`'s line (refusals: within their rate).
    pub fn log(&self, record: &Record<'_>) {
        if !self.on() {
            return;
        }
        if matches!(record.end, End::Refused(_)) && self.refusals.allow().is_none() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let skipped = self.skipped.swap(0, Ordering::Relaxed);
        let mut line = String::with_capacity(384);
        if self.json.load(Ordering::Relaxed) {
            record.json(SystemTime::now(), skipped, &mut line);
        } else {
            record.text(SystemTime::now(), skipped, &mut line);
        }
        line.push('\n');
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// A batch written to stderr at most this large: a pipe takes a write of
/// up to `PIPE_BUF` (4096 on Linux) whole, so the process's other log
/// lines never land inside one of these.
const STDERR_BATCH: usize = 4096;

/// Where the writer writes.
enum Sink {
    Off,
    /// Whole lines only: a line never outgrows the buffer (three fields
    /// of at most 128 bytes, each escaped character at most 8 bytes).
    Stderr(std::io::BufWriter<std::io::Stderr>),
    File(std::io::BufWriter<File>),
}

impl Sink {
    fn open(destination: &Destination) -> std::io::Result<Sink> {
        Ok(match destination {
            Destination::Off => Sink::Off,
            Destination::Stderr => Sink::Stderr(std::io::BufWriter::with_capacity(
                STDERR_BATCH,
                std::io::stderr(),
            )),
            Destination::File(path) => Sink::File(std::io::BufWriter::with_capacity(
                64 * 1024,
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
        })
    }

    fn write(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Sink::Off => Ok(()),
            Sink::Stderr(w) => w.write_all(line.as_bytes()),
            Sink::File(f) => f.write_all(line.as_bytes()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Off => Ok(()),
            Sink::Stderr(w) => w.flush(),
            Sink::File(f) => f.flush(),
        }
    }
}

/// While lines keep coming, the writer takes them in batches this far
/// apart: connection tasks then never wake it (a sender only wakes a
/// receiver blocked in `recv`), which would cost a futex wake and a
/// context switch per line. Idle, it blocks, and the first line wakes it.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// The writer thread: lines in arrival order, a flush after each batch, a
/// re-open whenever the generation moved.
fn writer(rx: Receiver<Msg>, mut sink: Sink, shared: &Shared, dropped: &Counter) {
    let mut seen = 0;
    // The destination could not be re-opened: lines are lost until it can.
    let mut failed = false;
    static FAILED: LogLimiter = crate::ratelog::per_kind();
    let complain = |what: &str, e: &std::io::Error| {
        if let Some(suppressed) = FAILED.allow() {
            warn!(error = %e, suppressed, "access log: {what}");
        }
    };
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let generation = shared.generation.load(Ordering::Relaxed);
        if generation != seen {
            seen = generation;
            if let Err(e) = sink.flush() {
                complain("flush failed", &e);
            }
            let destination = shared
                .destination
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match Sink::open(&destination) {
                Ok(new) => {
                    sink = new;
                    failed = false;
                }
                Err(e) => {
                    complain("cannot re-open; lines are dropped until it can", &e);
                    sink = Sink::Off;
                    failed = true;
                    // Try again at the next line or in a second.
                    seen = generation.wrapping_sub(1);
                }
            }
        }
        let busy = first.is_some();
        let mut next = first;
        while let Some(msg) = next {
            if let Msg::Line(line) = msg {
                if failed {
                    dropped.inc();
                } else if let Err(e) = sink.write(&line) {
                    dropped.inc();
                    complain("write failed", &e);
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = sink.flush() {
            complain("flush failed", &e);
        }
        if busy {
            // More may follow: let them gather (module documentation).
            std::thread::sleep(BATCH_PAUSE);
        }
    }
    let _ = sink.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use line::tests::record;

    /// Lines reach a file in order; a rename then `reopen` starts a new
    /// file, as logrotate expects.
    #[test]
    fn a_file_is_written_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let config = AccessConfig {
            destination: Destination::File(path.clone()),
            username: false,
        };
        let dropped = Counter::default();
        let log = AccessLog::start(&config, Format::Json, dropped.clone()).unwrap();
        let wait_for = |p: &std::path::Path, lines: usize| {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                if text.lines().count() >= lines {
                    return text;
                }
                assert!(tokio::time::Instant::now() < deadline, "{p:?}: {text}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        log.log(&record());
        wait_for(&path, 1);
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(tokio::time::Instant::now() < deadline, "not re-opened");
            std::thread::sleep(Duration::from_millis(10));
        }
        log.log(&record());
        let new = wait_for(&path, 1);
        assert_eq!(new.lines().count(), 1);
        assert_eq!(wait_for(&rotated, 1).lines().count(), 1);
        assert_eq!(dropped.get(), 0);
    }

    #[test]
    fn refusals_are_rate_limited_and_counted_in_the_next_line() {
        let log = AccessLog::start(
            &AccessConfig {
                destination: Destination::Off,
                username: false,
            },
            Format::Text,
            Counter::default(),
        )
        .unwrap();
        // Off: nothing is built, nothing counted.
        let refused = Record::new("l", "10.0.0.1:1".parse().unwrap(), End::Refused("http"));
        log.log(&refused);
        assert_eq!(log.skipped.load(Ordering::Relaxed), 0);
        log.on.store(true, Ordering::Relaxed);
        for _ in 0..REFUSAL_BURST + 5 {
            log.log(&refused);
        }
        assert_eq!(log.skipped.load(Ordering::Relaxed), 5);
        log.log(&record());
        assert_eq!(log.skipped.load(Ordering::Relaxed), 0, "reported");
    }
}
