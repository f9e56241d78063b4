//! Listening sockets that come from outside the process: from the running
//! proxy a new binary takes over (`mqttlb proxy --takeover PATH`), or from
//! systemd socket activation (`LISTEN_FDS`).
//!
//! # Why pass descriptors
//!
//! A listening TCP socket is one kernel object with one accept queue. If
//! the new process *receives the same socket* (a duplicate descriptor, sent
//! with `SCM_RIGHTS` over a Unix socket, as HAProxy's `expose-fd
//! listeners` + `-x` does), that queue never closes during the hand-over:
//! a connection that arrives while both processes hold the socket waits in
//! the queue until one of them accepts it, and when the old process drops
//! its copy the socket lives on in the new one. Nothing is refused.
//!
//! The alternatives lose connections or need what this crate forbids:
//! binding the new process alongside with `SO_REUSEPORT` creates *new*
//! sockets, and the kernel resets whatever sits in the old sockets' queues
//! when the old process closes them; NGINX's USR2 (fork and exec the new
//! binary with the descriptors left open) makes the new process a child
//! of the old one, which confuses supervisors, and needs `fork` (unsafe).
//!
//! # Protocol
//!
//! The running proxy listens on `upgrade.socket` (created 0600, in a
//! private directory first and renamed into place, so it is never
//! reachable with looser permissions; a stale file is replaced, a live one
//! is an error) and only answers peers of its own user (or root). A new
//! process connects; the old one sends, per listener, one or more messages
//!
//! ```text
//! "MQU1" | u32 BE payload length | u32 BE descriptor count   (+ SCM_RIGHTS)
//! payload: {"type":"listener","listener":"mqtts","addr":"0.0.0.0:8883"}
//! ```
//!
//! (at most [`MAX_FDS_PER_MESSAGE`] sockets each: `SO_REUSEPORT` groups
//! can be large), then `{"type":"done","listeners":N}`. The new process
//! builds its listeners from them, starts accepting, and answers
//! `{"type":"serving","pid":P}`. Only then does the old process stop
//! accepting and drain. Until that answer nothing changes for the old
//! process: a new process that fails, hangs (`upgrade.timeout`) or sends
//! anything else is disconnected and the old one keeps serving.
//!
//! After `serving` the old process sends its own session-ticket keys,
//! `{"type":"ticket_keys","keys":[{"key":BASE64,"since":S,"retired":R}]}`,
//! and closes; the new process seals and opens tickets with them, so
//! clients resume across the takeover. They come last for compatibility
//! both ways: a new process of an older version reads nothing after
//! `serving` but the close (it logs the extra bytes and serves on), and
//! an old process of an older version closes without them (the new
//! process keeps its own keys). Everything earlier is unchanged, so the
//! magic stays `MQU1`.
//!
//! Everything a peer sends is bounded: header size, payload size
//! ([`MAX_PAYLOAD`]), descriptors per message and in total
//! ([`MAX_FDS`]), number of messages, and a deadline for the whole
//! exchange; malformed input is an error, never a panic.
//!
//! # Layout
//!
//! * `wire` — the message format: header, JSON payload, the bounds, encode
//!   and decode (pure).
//! * `exchange` — the Unix-socket exchange over `wire`: the running
//!   proxy's `UpgradeSocket` (serving side; Unix only) and [`take_over`] /
//!   [`Handover`] (the new process's side).
//! * `systemd` — socket activation ([`systemd_listeners`]) and
//!   [`sd_notify`]; independent of the other two.
//! * `inherited` — [`InheritedListener`], what both sources yield, and
//!   [`assign`], which configured listener takes which.
//! * `error` — [`UpgradeError`].
//!
//! Arrows point one way: `exchange` uses `wire`; both it and `systemd` use
//! `inherited` and `error`; nothing here uses the rest of the crate.

// Off Unix only the pure parts (matching, names) are used.
#![cfg_attr(not(unix), allow(dead_code))]

mod error;
mod exchange;
mod inherited;
mod systemd;
mod wire;

pub use error::UpgradeError;
#[cfg(unix)]
pub use exchange::UpgradeSocket;
pub use exchange::{Handover, Offer, Offers, Received, take_over};
pub use inherited::{Assignment, InheritedListener, assign};
pub use systemd::{fd_names, notify_to, sd_notify, systemd_listeners};
pub use wire::{HandedKey, MAX_FDS, MAX_FDS_PER_MESSAGE, MAX_MESSAGES, MAX_PAYLOAD};
