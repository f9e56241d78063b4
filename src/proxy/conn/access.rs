//! What a connection's access-log line will say: filled in by the stages
//! as they learn it, written once when the `Conn` is dropped — whatever
//! path the task took, including a task dropped at the shutdown drain's
//! deadline (`drained`).
//!
//! Nothing of this exists while the access log is off: `Conn` holds one
//! empty pointer. When it is on, one heap block per connection holds the
//! start instant, the step timings, the client id (and user name, with
//! `access_username`) copied and cut at `accesslog::MAX_FIELD`, and a few
//! small facts; SNI, TLS version and cipher are read from the `TlsInfo`
//! the connection keeps anyway.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::Conn;
use crate::accesslog::{End, Record, Timings, cap};
use crate::balance::Backend;
use crate::mqtt::ProtocolVersion;

/// The line's facts while the connection runs.
pub(super) struct Access {
    started: Instant,
    facts: Mutex<Facts>,
}

#[derive(Default)]
pub(super) struct Facts {
    pub timings: Steps,
    pub protocol: Option<ProtocolVersion>,
    pub client_id: Option<Box<str>>,
    pub username: Option<Box<str>>,
    /// The route's position in the listener's routes (at most 257).
    pub route: Option<u16>,
    pub backend: Option<Arc<Backend>>,
    pub connack: Option<u8>,
    /// (in, out): bytes from and to the client, once it was relayed.
    pub bytes: Option<(u64, u64)>,
    /// `None` at the drop: the task was dropped (shutdown drain's
    /// deadline).
    pub end: Option<End>,
}

/// The steps' timings as kept while the connection runs: microseconds in
/// a `u32` each (16 bytes, against 64 for four `Option<Duration>`s; every
/// step is bounded by a timeout far below the 71 minutes a `u32` holds).
#[derive(Default, Clone, Copy)]
pub(super) struct Steps {
    pub tls: Micros,
    pub connect: Micros,
    pub backend: Micros,
    pub connack: Micros,
}

/// A step's duration in microseconds; [`Micros::NONE`]: not reached.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Micros(u32);

impl Micros {
    const NONE: Micros = Micros(u32::MAX);

    fn get(self) -> Option<Duration> {
        (self != Micros::NONE).then(|| Duration::from_micros(u64::from(self.0)))
    }
}

impl Default for Micros {
    fn default() -> Self {
        Micros::NONE
    }
}

impl From<Duration> for Micros {
    fn from(d: Duration) -> Micros {
        Micros(
            u32::try_from(d.as_micros())
                .unwrap_or(u32::MAX - 1)
                .min(u32::MAX - 1),
        )
    }
}

impl From<Option<Duration>> for Micros {
    fn from(d: Option<Duration>) -> Micros {
        d.map_or(Micros::NONE, Micros::from)
    }
}

impl Access {
    pub(super) fn new() -> Box<Access> {
        Box::new(Access {
            started: Instant::now(),
            facts: Mutex::new(Facts::default()),
        })
    }
}

/// A peer's string as the line needs it: cut a little past
/// [`MAX_FIELD`], so the line still shows it was cut, and no more is kept.
pub(super) fn keep(s: &str) -> Box<str> {
    let (kept, cut) = cap(s);
    if !cut {
        return s.into();
    }
    let next = s
        .get(kept.len()..)
        .and_then(|rest| rest.chars().next())
        .map_or(0, char::len_utf8);
    s.get(..kept.len() + next).unwrap_or(kept).into()
}

impl Conn {
    /// Record something for the access line; nothing while it is off.
    pub(super) fn note(&self, f: impl FnOnce(&mut Facts)) {
        if let Some(access) = &self.access {
            f(&mut access.facts.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// Whether the access line wants the user name.
    pub(super) fn wants_username(&self) -> bool {
        self.ctx.access.as_ref().is_some_and(|log| log.username())
    }

    /// Write the line (from `Drop`).
    fn write_access_line(&mut self) {
        let (Some(access), Some(log)) = (self.access.take(), self.ctx.access.as_ref()) else {
            return;
        };
        let Access { started, facts } = *access;
        let facts = facts.into_inner().unwrap_or_else(|p| p.into_inner());
        let tls = self.tls.as_ref();
        let route = facts.route.and_then(|i| self.ctx.routes.at(usize::from(i)));
        let end = facts.end.unwrap_or(End::Drained);
        let record = Record {
            route: route.map(|r| r.name.as_str()),
            pool: route.map(|r| r.pool.name.as_str()),
            sni: tls.and_then(|t| t.sni.as_deref()),
            tls_version: tls.map(|t| t.version),
            cipher: tls.map(|t| t.cipher),
            resumed: tls.map(|t| t.resumed),
            protocol: facts.protocol.map(ProtocolVersion::as_str),
            client_id: facts.client_id.as_deref(),
            username: facts.username.as_deref(),
            backend: facts.backend.as_ref().map(|b| b.name.as_str()),
            connack: facts.connack,
            // A dropped task's splice totals went with it.
            bytes_in: facts.bytes.filter(|_| facts.end.is_some()).map(|b| b.0),
            bytes_out: facts.bytes.filter(|_| facts.end.is_some()).map(|b| b.1),
            timings: Timings {
                tls: facts.timings.tls.get(),
                connect: facts.timings.connect.get(),
                backend: facts.timings.backend.get(),
                connack: facts.timings.connack.get(),
                total: started.elapsed(),
            },
            ..Record::new(&self.ctx.name, self.peer, end)
        };
        log.log(&record);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.write_access_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_timings_keep_microseconds_and_absence() {
        assert_eq!(Micros::default().get(), None);
        assert_eq!(Micros::from(None).get(), None);
        let d = Duration::from_micros(1_234_567);
        assert_eq!(Micros::from(d).get(), Some(d));
        assert_eq!(
            Micros::from(Some(Duration::ZERO)).get(),
            Some(Duration::ZERO)
        );
        // Beyond 71 minutes it saturates; it never reads as "not reached".
        let long = Micros::from(Duration::from_secs(10_000));
        assert_eq!(
            long.get(),
            Some(Duration::from_micros(u64::from(u32::MAX - 1)))
        );
    }
    use crate::accesslog::MAX_FIELD;

    /// The heap block a connection holds while the access log is on
    /// (docs/access-log.md), besides its copied strings.
    #[test]
    fn the_facts_stay_small() {
        let size = std::mem::size_of::<Access>();
        eprintln!("access facts: {size} bytes");
        assert!(size <= 224, "{size}");
    }

    #[test]
    fn kept_strings_are_bounded_and_still_show_the_cut() {
        assert_eq!(&*keep("dev-1"), "dev-1");
        let long = "x".repeat(10_000);
        let kept = keep(&long);
        assert_eq!(kept.len(), MAX_FIELD + 1);
        assert!(cap(&kept).1, "still cut when written");
        let wide = "€".repeat(100);
        let kept = keep(&wide);
        assert!(kept.len() <= MAX_FIELD + 3 && cap(&kept).1);
    }
}
