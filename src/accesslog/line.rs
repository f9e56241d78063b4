//! One access-log line: a [`Record`] of a connection's facts written as
//! text (fixed field order, `-` for what is absent) or as a JSON object;
//! the strings a peer controls escaped and cut. Pure: no I/O.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// Bytes of a peer-controlled string kept (before escaping).
pub const MAX_FIELD: usize = 128;
/// Appended to a string cut at [`MAX_FIELD`] bytes.
pub const CUT_MARK: &str = "[...]";

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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn record() -> Record<'static> {
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
}
