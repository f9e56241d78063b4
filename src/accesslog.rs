//! The access log: one line per client connection when it ends, and one
//! per refused client, in text (fixed field order, `-` for what is
//! absent) or JSON (one object per line). `docs/access-log.md` documents
//! every field.
//!
//! A connection task builds its line ([`Record`] → [`AccessLog::log`])
//! and hands it to a bounded queue ([`QUEUE`] lines); one writer thread
//! owns the destination and writes what arrived in batches (every
//! 20 ms while lines keep coming), flushing after each. The connection task never waits: when the queue is full the
//! line is dropped and counted (`mqttlb_access_log_dropped_total`). The
//! writer re-opens a file destination when asked ([`AccessLog::reopen`]:
//! SIGUSR1, a reload), so logrotate's rename-then-signal works.
//!
//! Strings a peer controls (SNI, client id, user name) are escaped (no
//! control characters, no line breaks, no unescaped quotes) and cut at
//! [`MAX_FIELD`] bytes, marked with [`CUT_MARK`]. Refusal lines are
//! rate-limited like other lines a peer can trigger ([`crate::ratelog`]);
//! the next line written says how many were left out.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
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
/// Bytes of a peer-controlled string kept (before escaping).
pub const MAX_FIELD: usize = 128;
/// Appended to a string cut at [`MAX_FIELD`] bytes.
pub const CUT_MARK: &str = "[...]";
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

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed; the client's side first.
    ClosedByClient,
    /// Both sides closed; the broker's side first.
    ClosedByBroker,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
    /// Still open when the shutdown drain's deadline passed.
    Drained,
    /// Asked to move by a backend drain or a rebalance.
    Moved,
    ClientError,
    BackendError,
    /// Refused before it was relayed; the `reason` label of
    /// `mqttlb_connections_rejected_total`.
    Refused(&'static str),
}

impl End {
    fn write(self, out: &mut String) {
        let name = match self {
            End::ClosedByClient => "closed_by_client",
            End::ClosedByBroker => "closed_by_broker",
            End::IdleTimeout => "idle_timeout",
            End::Drained => "drained",
            End::Moved => "moved",
            End::ClientError => "client_error",
            End::BackendError => "backend_error",
            End::Refused(reason) => {
                out.push_str("refused:");
                reason
            }
        };
        out.push_str(name);
    }
}

/// Where the time of a connection went; `None`: the step did not happen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub tls: Option<Duration>,
    pub connect: Option<Duration>,
    pub backend: Option<Duration>,
    pub connack: Option<Duration>,
    pub total: Duration,
}

/// One line's facts, borrowed from the connection that ends.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub listener: &'a str,
    pub client: SocketAddr,
    pub route: Option<&'a str>,
    pub pool: Option<&'a str>,
    pub sni: Option<&'a str>,
    pub tls_version: Option<&'a str>,
    pub cipher: Option<&'a str>,
    /// `Some(true)`: the handshake resumed a session.
    pub resumed: Option<bool>,
    pub protocol: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub username: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub connack: Option<u8>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub timings: Timings,
    pub end: End,
}

impl<'a> Record<'a> {
    /// A record with only the listener, the client and how it ended.
    pub fn new(listener: &'a str, client: SocketAddr, end: End) -> Record<'a> {
        Record {
            listener,
            client,
            route: None,
            pool: None,
            sni: None,
            tls_version: None,
            cipher: None,
            resumed: None,
            protocol: None,
            client_id: None,
            username: None,
            backend: None,
            connack: None,
            bytes_in: None,
            bytes_out: None,
            timings: Timings::default(),
            end,
        }
    }
}

/// `s` cut at [`MAX_FIELD`] bytes (on a character boundary), and whether
/// it was cut.
pub fn cap(s: &str) -> (&str, bool) {
    if s.len() <= MAX_FIELD {
        return (s, false);
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s.get(..end).unwrap_or_default(), true)
}

/// Characters that may not appear as they are in a line: controls (C0,
/// DEL, C1) and the Unicode line and paragraph separators.
fn unsafe_char(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `"s"` for the text format: `"` and `\` backslashed, unsafe characters
/// as `\xHH` or `\u{HHHH}`; cut at [`MAX_FIELD`] bytes.
fn text_string(out: &mut String, s: &str) {
    let (s, cut) = cap(s);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if unsafe_char(c) && u32::from(c) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    if cut {
        out.push_str(CUT_MARK);
    }
    out.push('"');
}

/// A JSON string (RFC 8259), cut at [`MAX_FIELD`] bytes.
fn json_string(out: &mut String, s: &str) {
    let (s, cut) = cap(s);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    if cut {
        out.push_str(CUT_MARK);
    }
    out.push('"');
}

/// Milliseconds with microsecond precision: `12.345`.
fn millis(out: &mut String, d: Duration) {
    let us = d.as_micros();
    let _ = write!(out, "{}.{:03}", us / 1000, us % 1000);
}

impl Record<'_> {
    /// The text line (no newline): fields in the documented order, one
    /// space between them, `-` for what is absent.
    pub fn text(&self, now: SystemTime, skipped: u64, out: &mut String) {
        let _ = write!(out, "{} ", humantime::format_rfc3339_millis(now));
        // Listener names come from the configuration: no spaces or quotes
        // to fear, but escaped all the same if they had any.
        plain(out, self.listener);
        let _ = write!(out, " {} ", self.client);
        match (self.route, self.pool) {
            (None, None) => out.push('-'),
            (route, pool) => {
                plain(out, route.unwrap_or("-"));
                out.push('/');
                plain(out, pool.unwrap_or("-"));
            }
        }
        out.push(' ');
        opt_text(out, self.sni);
        out.push(' ');
        match (self.tls_version, self.cipher) {
            (Some(v), Some(c)) => {
                let _ = write!(out, "{v}/{c}");
            }
            _ => out.push('-'),
        }
        out.push_str(match self.resumed {
            None => " - ",
            Some(true) => " resumed ",
            Some(false) => " full ",
        });
        out.push_str(self.protocol.unwrap_or("-"));
        out.push(' ');
        opt_text(out, self.client_id);
        out.push(' ');
        opt_text(out, self.username);
        out.push(' ');
        plain(out, self.backend.unwrap_or("-"));
        match self.connack {
            Some(code) => {
                let _ = write!(out, " 0x{code:02x} ");
            }
            None => out.push_str(" - "),
        }
        num(out, self.bytes_in);
        out.push(' ');
        num(out, self.bytes_out);
        out.push(' ');
        let t = &self.timings;
        for step in [t.tls, t.connect, t.backend, t.connack] {
            match step {
                Some(d) => millis(out, d),
                None => out.push('-'),
            }
            out.push('/');
        }
        millis(out, t.total);
        out.push(' ');
        self.end.write(out);
        let _ = write!(out, " {skipped}");
    }

    /// The JSON object (no newline); absent fields are `null`.
    pub fn json(&self, now: SystemTime, skipped: u64, out: &mut String) {
        let _ = write!(
            out,
            "{{\"time\":\"{}\",\"listener\":",
            humantime::format_rfc3339_millis(now)
        );
        json_string(out, self.listener);
        let _ = write!(out, ",\"client\":\"{}\"", self.client);
        let strings = [
            ("route", self.route),
            ("pool", self.pool),
            ("sni", self.sni),
            ("tls_version", self.tls_version),
            ("tls_cipher", self.cipher),
        ];
        for (key, value) in strings {
            let _ = write!(out, ",\"{key}\":");
            opt_json(out, value);
        }
        out.push_str(match self.resumed {
            None => ",\"tls_resumed\":null",
            Some(true) => ",\"tls_resumed\":true",
            Some(false) => ",\"tls_resumed\":false",
        });
        let strings = [
            ("mqtt", self.protocol),
            ("client_id", self.client_id),
            ("username", self.username),
            ("backend", self.backend),
        ];
        for (key, value) in strings {
            let _ = write!(out, ",\"{key}\":");
            opt_json(out, value);
        }
        out.push_str(",\"connack\":");
        match self.connack {
            Some(code) => {
                let _ = write!(out, "{code}");
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"bytes_in\":");
        num_json(out, self.bytes_in);
        out.push_str(",\"bytes_out\":");
        num_json(out, self.bytes_out);
        let t = &self.timings;
        for (key, step) in [
            ("tls_ms", t.tls),
            ("connect_ms", t.connect),
            ("backend_ms", t.backend),
            ("connack_ms", t.connack),
            ("total_ms", Some(t.total)),
        ] {
            let _ = write!(out, ",\"{key}\":");
            match step {
                Some(d) => millis(out, d),
                None => out.push_str("null"),
            }
        }
        out.push_str(",\"end\":\"");
        self.end.write(out);
        let _ = write!(out, "\",\"skipped\":{skipped}}}");
    }
}

/// A name from the configuration, written bare; anything unsafe in it
/// (there should be nothing) escaped as in a quoted string.
fn plain(out: &mut String, s: &str) {
    if s.chars().any(|c| unsafe_char(c) || c == ' ' || c == '"') {
        text_string(out, s);
    } else {
        out.push_str(s);
    }
}

fn opt_text(out: &mut String, v: Option<&str>) {
    match v {
        Some(s) => text_string(out, s),
        None => out.push('-'),
    }
}

fn opt_json(out: &mut String, v: Option<&str>) {
    match v {
        Some(s) => json_string(out, s),
        None => out.push_str("null"),
    }
}

fn num(out: &mut String, v: Option<u64>) {
    match v {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push('-'),
    }
}

fn num_json(out: &mut String, v: Option<u64>) {
    match v {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
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

    fn record() -> Record<'static> {
        Record {
            route: Some("default"),
            pool: Some("brokers"),
            sni: Some("mqtt.example.com"),
            tls_version: Some("TLSv1.3"),
            cipher: Some("TLS13_AES_128_GCM_SHA256"),
            resumed: Some(false),
            protocol: Some("5.0"),
            client_id: Some("dev-1"),
            username: None,
            backend: Some("node1"),
            connack: Some(0),
            bytes_in: Some(120),
            bytes_out: Some(64),
            timings: Timings {
                tls: Some(Duration::from_micros(1_234)),
                connect: Some(Duration::from_micros(56)),
                backend: Some(Duration::from_micros(300)),
                connack: Some(Duration::from_micros(700)),
                total: Duration::from_millis(60_000),
            },
            ..Record::new(
                "mqtts",
                "192.0.2.7:51234".parse().unwrap(),
                End::ClosedByClient,
            )
        }
    }

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    #[test]
    fn a_text_line_has_its_fields_in_order() {
        let mut out = String::new();
        record().text(T0, 0, &mut out);
        assert_eq!(
            out,
            "1970-01-01T00:00:00.000Z mqtts 192.0.2.7:51234 default/brokers \
             \"mqtt.example.com\" TLSv1.3/TLS13_AES_128_GCM_SHA256 full 5.0 \"dev-1\" - \
             node1 0x00 120 64 1.234/0.056/0.300/0.700/60000.000 closed_by_client 0"
        );
        let mut out = String::new();
        Record::new(
            "mqtts",
            "[::1]:9".parse().unwrap(),
            End::Refused("tls_handshake_failed"),
        )
        .text(T0, 7, &mut out);
        assert_eq!(
            out,
            "1970-01-01T00:00:00.000Z mqtts [::1]:9 - - - - - - - - - - - -/-/-/-/0.000 \
             refused:tls_handshake_failed 7"
        );
    }

    #[test]
    fn a_json_line_parses_back() {
        let mut out = String::new();
        record().json(T0, 3, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["client"], "192.0.2.7:51234");
        assert_eq!(v["client_id"], "dev-1");
        assert_eq!(v["username"], serde_json::Value::Null);
        assert_eq!(v["tls_resumed"], false);
        assert_eq!(v["connack"], 0);
        assert_eq!(v["tls_ms"], 1.234);
        assert_eq!(v["total_ms"], 60000.0);
        assert_eq!(v["end"], "closed_by_client");
        assert_eq!(v["skipped"], 3);
        assert_eq!(v.as_object().unwrap().len(), 23);
    }

    /// Client ids, user names and SNI are the peer's: whatever they hold,
    /// the line stays one line, its quotes balanced, its JSON valid.
    #[test]
    fn injection_attempts_stay_inside_their_field() {
        let attacks = [
            "evil\n1970-01-01T00:00:00.000Z mqtts 10.0.0.1:1 forged",
            "quote\" end=\"forged",
            "back\\slash\\\"",
            "nul\0bel\x07esc\x1b[31mred",
            "del\x7f c1\u{85} ls\u{2028} ps\u{2029}",
            "\r\n\r\n",
            "ünïcødé ✓ kept",
        ];
        for attack in attacks {
            let r = Record {
                client_id: Some(attack),
                username: Some(attack),
                sni: Some(attack),
                ..record()
            };
            let mut text = String::new();
            r.text(T0, 0, &mut text);
            assert!(
                !text.contains(['\n', '\r', '\0', '\x1b', '\x7f']),
                "{text:?}"
            );
            assert!(
                !text.contains(['\u{85}', '\u{2028}', '\u{2029}']),
                "{text:?}"
            );
            // Quotes: only the three fields' own, each pair balanced once
            // escapes are taken out.
            let unescaped = text.replace("\\\\", "").replace("\\\"", "");
            assert_eq!(unescaped.matches('"').count(), 6, "{text:?}");
            // The fields after the strings are where they belong.
            assert!(
                text.ends_with(
                    " node1 0x00 120 64 1.234/0.056/0.300/0.700/60000.000 closed_by_client 0"
                ),
                "{text:?}"
            );

            let mut json = String::new();
            r.json(T0, 0, &mut json);
            assert!(!json.contains(['\n', '\r']), "{json:?}");
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["client_id"], attack, "round trip of {attack:?}");
            assert_eq!(v["end"], "closed_by_client");
        }
        assert!(attacks.len() >= 7);
    }

    #[test]
    fn long_strings_are_cut_and_marked() {
        let long = "é".repeat(100); // 200 bytes
        let (kept, cut) = cap(&long);
        assert!(cut);
        assert_eq!(kept.len(), MAX_FIELD);
        let mut json = String::new();
        Record {
            client_id: Some(&long),
            ..record()
        }
        .json(T0, 0, &mut json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let id = v["client_id"].as_str().unwrap();
        assert_eq!(id, format!("{}{CUT_MARK}", "é".repeat(64)));
        let odd = format!("a{}", "é".repeat(100)); // boundary inside a char
        let (kept, cut) = cap(&odd);
        assert!(cut && kept.len() == MAX_FIELD - 1);
        assert_eq!(cap("short"), ("short", false));
    }

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
