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
//! Everything a peer sends is bounded: header size, payload size
//! ([`MAX_PAYLOAD`]), descriptors per message and in total
//! ([`MAX_FDS`]), number of messages, and a deadline for the whole
//! exchange; malformed input is an error, never a panic.

// Off Unix only the pure parts (matching, names) are used.
#![cfg_attr(not(unix), allow(dead_code))]

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Descriptors in one message (Linux caps one `SCM_RIGHTS` at 253).
pub const MAX_FDS_PER_MESSAGE: usize = 64;
/// Descriptors in one hand-over.
pub const MAX_FDS: usize = 4096;
/// Bytes of one message's JSON payload.
pub const MAX_PAYLOAD: usize = 4096;
/// Messages in one hand-over.
pub const MAX_MESSAGES: usize = 1024;

const MAGIC: &[u8; 4] = b"MQU1";
const HEADER: usize = 12;

/// Why a hand-over or socket activation failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: timed out (upgrade.timeout)")]
    Timeout { what: String },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(String),
    #[error("handing sockets between processes needs a Unix system")]
    Unsupported,
}

impl UpgradeError {
    /// An I/O error while doing `what`. A socket timeout (reported by the
    /// OS as EAGAIN, "Resource temporarily unavailable") says so.
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpgradeError {
        let what = what.into();
        move |source| match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                UpgradeError::Timeout { what }
            }
            _ => UpgradeError::Io { what, source },
        }
    }
}

/// One message of the protocol (the JSON payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Message {
    Listener {
        listener: String,
        addr: SocketAddr,
    },
    /// The admin HTTP listener (one socket).
    Admin {
        addr: SocketAddr,
    },
    Done {
        listeners: u32,
    },
    Serving {
        pid: u32,
    },
}

/// Sockets of one listener from outside: its name (if known) and address.
#[derive(Debug)]
pub struct InheritedListener {
    pub name: Option<String>,
    pub addr: SocketAddr,
    pub sockets: Vec<std::net::TcpListener>,
}

/// What the running proxy offers: a listener's name, address and
/// duplicates of its listening sockets.
#[derive(Debug)]
pub struct Offer {
    /// The listener's name; `None` for the admin HTTP listener.
    pub name: Option<String>,
    pub addr: SocketAddr,
    pub sockets: Vec<socket2::Socket>,
}

/// What a new process received from the running one.
#[derive(Debug, Default)]
pub struct Received {
    pub listeners: Vec<InheritedListener>,
    /// The admin HTTP listener, if the running proxy had one.
    pub admin: Option<(SocketAddr, std::net::TcpListener)>,
}

/// Where a configured listener's sockets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// The inherited entry at this index.
    Inherit(usize),
    /// The entry at this index has the listener's name but another
    /// address: bind fresh (the old sockets close with the old process).
    AddressChanged(usize),
    /// Nothing inherited: bind fresh.
    Fresh,
}

/// Match configured listeners (`name`, `addr`) to inherited entries
/// (`name` if known, bound address): by name first; an unnamed entry (or
/// one whose name no listener has) by address. A configured port 0 takes
/// any port on the same IP. Each entry goes to at most one listener.
pub fn assign(
    wanted: &[(&str, SocketAddr)],
    offered: &[(Option<&str>, SocketAddr)],
) -> Vec<Assignment> {
    let fits = |want: SocketAddr, have: SocketAddr| {
        want == have || (want.port() == 0 && want.ip() == have.ip())
    };
    let mut used = vec![false; offered.len()];
    let mut out = Vec::with_capacity(wanted.len());
    for &(name, addr) in wanted {
        let by_name = offered
            .iter()
            .zip(used.iter())
            .position(|((n, _), u)| !u && *n == Some(name));
        let by_addr = || {
            offered.iter().zip(used.iter()).position(|((n, a), u)| {
                let claimed = n.is_some_and(|n| wanted.iter().any(|(w, _)| *w == n));
                !u && !claimed && fits(addr, *a)
            })
        };
        let choice = match by_name {
            Some(i) => match offered.get(i) {
                Some((_, a)) if fits(addr, *a) => Assignment::Inherit(i),
                _ => Assignment::AddressChanged(i),
            },
            None => by_addr().map_or(Assignment::Fresh, Assignment::Inherit),
        };
        if let Assignment::Inherit(i) | Assignment::AddressChanged(i) = choice {
            if let Some(u) = used.get_mut(i) {
                *u = true;
            }
        }
        out.push(choice);
    }
    out
}

/// Parse `LISTEN_FDNAMES` (colon-separated, one per descriptor).
pub fn fd_names(value: &str, count: usize) -> Vec<Option<String>> {
    let mut names: Vec<Option<String>> = value
        .split(':')
        .take(count)
        .map(|n| (!n.is_empty()).then(|| n.to_string()))
        .collect();
    names.resize(count, None);
    names
}

fn encode(msg: &Message, fds: usize) -> Result<Vec<u8>, UpgradeError> {
    let payload =
        serde_json::to_vec(msg).map_err(|e| UpgradeError::Protocol(format!("encode: {e}")))?;
    if payload.len() > MAX_PAYLOAD || fds > MAX_FDS_PER_MESSAGE {
        return Err(UpgradeError::Protocol(
            "message over the protocol's bounds".into(),
        ));
    }
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let n = u32::try_from(fds).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// A header: payload length and descriptor count, both checked.
fn decode_header(h: &[u8; HEADER]) -> Result<(usize, usize), UpgradeError> {
    let [m0, m1, m2, m3, l0, l1, l2, l3, n0, n1, n2, n3] = *h;
    if [m0, m1, m2, m3] != *MAGIC {
        return Err(UpgradeError::Protocol(
            "not an mqttlb upgrade socket (or another protocol version)".into(),
        ));
    }
    let len = usize::try_from(u32::from_be_bytes([l0, l1, l2, l3])).unwrap_or(usize::MAX);
    let fds = usize::try_from(u32::from_be_bytes([n0, n1, n2, n3])).unwrap_or(usize::MAX);
    if len > MAX_PAYLOAD {
        return Err(UpgradeError::Protocol(format!(
            "payload of {len} bytes (at most {MAX_PAYLOAD})"
        )));
    }
    if fds > MAX_FDS_PER_MESSAGE {
        return Err(UpgradeError::Protocol(format!(
            "{fds} descriptors in one message (at most {MAX_FDS_PER_MESSAGE})"
        )));
    }
    Ok((len, fds))
}

fn decode_payload(payload: &[u8]) -> Result<Message, UpgradeError> {
    serde_json::from_slice(payload).map_err(|e| UpgradeError::Protocol(format!("payload: {e}")))
}

/// Time left before `deadline`, or a timeout error.
fn left(deadline: tokio::time::Instant, what: &str) -> Result<Duration, UpgradeError> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if left.is_zero() {
        Err(UpgradeError::Timeout {
            what: what.to_string(),
        })
    } else {
        Ok(left)
    }
}

#[cfg(unix)]
pub use unix::{Handover, UpgradeSocket, notify_to, sd_notify, systemd_listeners, take_over};

#[cfg(unix)]
mod unix {
    use std::io::{IoSlice, IoSliceMut, Read, Write};
    use std::mem::MaybeUninit;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use rustix::net::{
        RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags,
    };
    use tokio_util::sync::CancellationToken;
    use tracing::{info, warn};

    use super::*;

    // Received descriptors close on exec at once where the kernel can do
    // that (elsewhere `tcp_listener` sets it); writes to a closed peer
    // return EPIPE instead of raising SIGPIPE (Rust ignores SIGPIPE anyway).
    #[cfg(target_os = "linux")]
    const RECV_FLAGS: RecvFlags = RecvFlags::CMSG_CLOEXEC;
    #[cfg(not(target_os = "linux"))]
    const RECV_FLAGS: RecvFlags = RecvFlags::empty();
    #[cfg(target_os = "linux")]
    const SEND_FLAGS: SendFlags = SendFlags::NOSIGNAL;
    #[cfg(not(target_os = "linux"))]
    const SEND_FLAGS: SendFlags = SendFlags::empty();

    /// A connection to the running proxy whose sockets were received:
    /// [`Handover::confirm`] once this process accepts on them.
    #[derive(Debug)]
    pub struct Handover {
        stream: UnixStream,
        deadline: tokio::time::Instant,
    }

    impl Handover {
        /// Tell the old process this one serves: it stops accepting and
        /// drains.
        pub fn confirm(mut self) -> Result<(), UpgradeError> {
            let timeout = left(self.deadline, "confirming the takeover")?;
            self.stream
                .set_write_timeout(Some(timeout))
                .map_err(UpgradeError::io("upgrade socket"))?;
            let msg = encode(
                &Message::Serving {
                    pid: std::process::id(),
                },
                0,
            )?;
            self.stream
                .write_all(&msg)
                .map_err(UpgradeError::io("confirming the takeover"))?;
            // The old process closes once it has read the answer; wait for
            // that so the caller knows it was heard.
            let mut byte = [0u8; 1];
            let _ = self.stream.set_read_timeout(Some(timeout));
            match self.stream.read(&mut byte) {
                Ok(0) => Ok(()),
                Ok(_) => Err(UpgradeError::Protocol(
                    "unexpected bytes after the takeover".into(),
                )),
                Err(e) => Err(UpgradeError::io("confirming the takeover")(e)),
            }
        }
    }

    /// Connect to the running proxy at `path` and receive its listening
    /// sockets, all within `timeout`. Blocking; call before serving.
    pub fn take_over(path: &Path, timeout: Duration) -> Result<(Received, Handover), UpgradeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let what = format!("upgrade socket {}", path.display());
        let stream = UnixStream::connect(path).map_err(UpgradeError::io(what.clone()))?;
        let mut listeners: Vec<InheritedListener> = Vec::new();
        let mut admin = None;
        let mut total_fds = 0usize;
        for _ in 0..MAX_MESSAGES {
            let (msg, fds) = receive(&stream, deadline)?;
            total_fds = total_fds.saturating_add(fds.len());
            if total_fds > MAX_FDS {
                return Err(UpgradeError::Protocol(format!(
                    "more than {MAX_FDS} descriptors"
                )));
            }
            match msg {
                Message::Listener { listener, addr } => {
                    let mut sockets = Vec::with_capacity(fds.len());
                    for fd in fds {
                        sockets.push(tcp_listener(fd)?);
                    }
                    match listeners
                        .iter_mut()
                        .find(|l| l.name.as_deref() == Some(listener.as_str()))
                    {
                        Some(l) if l.addr == addr => l.sockets.extend(sockets),
                        Some(_) => {
                            return Err(UpgradeError::Protocol(format!(
                                "listener {listener:?} sent with two addresses"
                            )));
                        }
                        None => listeners.push(InheritedListener {
                            name: Some(listener),
                            addr,
                            sockets,
                        }),
                    }
                }
                Message::Admin { addr } => {
                    let mut fds = fds.into_iter();
                    match (fds.next(), fds.next(), &admin) {
                        (Some(fd), None, None) => admin = Some((addr, tcp_listener(fd)?)),
                        _ => {
                            return Err(UpgradeError::Protocol(
                                "admin listener: expected one socket, once".into(),
                            ));
                        }
                    }
                }
                Message::Done { listeners: n } => {
                    if usize::try_from(n).ok() != Some(listeners.len()) || !fds.is_empty() {
                        return Err(UpgradeError::Protocol(format!(
                            "announced {n} listeners, received {}",
                            listeners.len()
                        )));
                    }
                    let received = Received { listeners, admin };
                    return Ok((received, Handover { stream, deadline }));
                }
                Message::Serving { .. } => {
                    return Err(UpgradeError::Protocol("unexpected message".into()));
                }
            }
        }
        Err(UpgradeError::Protocol(format!(
            "more than {MAX_MESSAGES} messages"
        )))
    }

    /// A received descriptor as a listening TCP socket (checked).
    fn tcp_listener(fd: OwnedFd) -> Result<std::net::TcpListener, UpgradeError> {
        let socket = socket2::Socket::from(fd);
        #[cfg(not(target_os = "linux"))]
        socket
            .set_cloexec(true)
            .map_err(UpgradeError::io("received socket"))?;
        let is_tcp = socket.r#type().ok() == Some(socket2::Type::STREAM)
            && socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .is_some();
        if !is_tcp {
            return Err(UpgradeError::Protocol(
                "a received descriptor is not a listening TCP socket".into(),
            ));
        }
        Ok(socket.into())
    }

    /// Read one message and the descriptors that came with it.
    fn receive(
        stream: &UnixStream,
        deadline: tokio::time::Instant,
    ) -> Result<(Message, Vec<OwnedFd>), UpgradeError> {
        let mut header = [0u8; HEADER];
        let mut got = 0;
        let mut fds: Vec<OwnedFd> = Vec::new();
        while got < HEADER {
            stream
                .set_read_timeout(Some(left(deadline, "receiving sockets")?))
                .map_err(UpgradeError::io("upgrade socket"))?;
            let mut space =
                [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let rest = header.get_mut(got..).unwrap_or_default();
            let mut iov = [IoSliceMut::new(rest)];
            let r = rustix::net::recvmsg(stream, &mut iov, &mut control, RECV_FLAGS)
                .map_err(|e| UpgradeError::io("receiving sockets")(e.into()))?;
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = m {
                    fds.extend(received);
                }
            }
            if r.flags.contains(ReturnFlags::CTRUNC) {
                return Err(UpgradeError::Protocol("too many descriptors".into()));
            }
            if r.bytes == 0 {
                return Err(UpgradeError::Refused(
                    "the running proxy closed the upgrade connection".into(),
                ));
            }
            got += r.bytes;
        }
        let (len, n) = decode_header(&header)?;
        if n != fds.len() {
            return Err(UpgradeError::Protocol(format!(
                "{} descriptors announced, {} received",
                n,
                fds.len()
            )));
        }
        let mut payload = vec![0u8; len];
        let mut filled = 0;
        let mut reader = stream;
        // Each read under what is left of the deadline: a peer trickling
        // bytes cannot stretch the exchange.
        while filled < len {
            stream
                .set_read_timeout(Some(left(deadline, "receiving sockets")?))
                .map_err(UpgradeError::io("upgrade socket"))?;
            let rest = payload.get_mut(filled..).unwrap_or_default();
            match reader.read(rest) {
                Ok(0) => {
                    return Err(UpgradeError::Protocol(
                        "connection closed mid-message".into(),
                    ));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(UpgradeError::io("receiving sockets")(e)),
            }
        }
        Ok((decode_payload(&payload)?, fds))
    }

    /// Write one message with `fds` attached.
    fn send(
        stream: &UnixStream,
        msg: &Message,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), UpgradeError> {
        let bytes = encode(msg, fds.len())?;
        let mut space =
            [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(UpgradeError::Protocol("descriptors do not fit".into()));
        }
        let sent = rustix::net::sendmsg(stream, &[IoSlice::new(&bytes)], &mut control, SEND_FLAGS)
            .map_err(|e| UpgradeError::io("sending sockets")(e.into()))?;
        // The descriptors went with the first byte; the rest is plain data.
        let mut writer = stream;
        writer
            .write_all(bytes.get(sent..).unwrap_or_default())
            .map_err(UpgradeError::io("sending sockets"))
    }

    /// The old process's side of one hand-over: send `offers`, then wait
    /// for the new process to say it serves. `Ok(pid)` = hand over now.
    fn give(stream: UnixStream, offers: &[Offer], timeout: Duration) -> Result<u32, UpgradeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        stream
            .set_nonblocking(false)
            .map_err(UpgradeError::io("upgrade connection"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(UpgradeError::io("upgrade connection"))?;
        let mut listeners = 0usize;
        for offer in offers {
            let fds: Vec<_> = offer.sockets.iter().map(|s| s.as_fd()).collect();
            let Some(name) = &offer.name else {
                let one = fds.get(..1).unwrap_or_default();
                send(&stream, &Message::Admin { addr: offer.addr }, one)?;
                continue;
            };
            listeners += 1;
            for chunk in fds.chunks(MAX_FDS_PER_MESSAGE) {
                let msg = Message::Listener {
                    listener: name.clone(),
                    addr: offer.addr,
                };
                send(&stream, &msg, chunk)?;
            }
        }
        let n = u32::try_from(listeners).unwrap_or(u32::MAX);
        send(&stream, &Message::Done { listeners: n }, &[])?;
        match receive(&stream, deadline)? {
            (Message::Serving { pid }, fds) if fds.is_empty() => Ok(pid),
            _ => Err(UpgradeError::Protocol("expected \"serving\"".into())),
        }
    }

    /// The running proxy's upgrade socket.
    #[derive(Debug)]
    pub struct UpgradeSocket {
        listener: tokio::net::UnixListener,
        path: PathBuf,
        /// Device and inode of the file we created: removed at exit only
        /// if it is still ours (a new process replaces it).
        id: (u64, u64),
    }

    impl UpgradeSocket {
        /// Create the socket at `path` with mode 0600, replacing a stale
        /// file. A socket something still answers on is an error (another
        /// proxy owns it) unless `replace` (this process took over from
        /// it). Call inside a tokio runtime.
        pub fn bind(path: &Path, replace: bool) -> Result<UpgradeSocket, UpgradeError> {
            let what = || format!("upgrade socket {}", path.display());
            if !replace && UnixStream::connect(path).is_ok() {
                return Err(UpgradeError::Refused(format!(
                    "{}: a running process answers on it (take it over with --takeover)",
                    what()
                )));
            }
            let dir = path.parent().unwrap_or(Path::new("."));
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            // A private (0700) directory beside the target: the socket is
            // never reachable before its mode is 0600, and rename() replaces
            // a stale file atomically.
            let private = tempfile::Builder::new()
                .prefix(".mqttlb-upgrade-")
                .tempdir_in(dir)
                .map_err(UpgradeError::io(what()))?;
            let tmp = private.path().join("s");
            let std_listener =
                std::os::unix::net::UnixListener::bind(&tmp).map_err(UpgradeError::io(what()))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .map_err(UpgradeError::io(what()))?;
            std::fs::rename(&tmp, path).map_err(UpgradeError::io(what()))?;
            let meta = std::fs::symlink_metadata(path).map_err(UpgradeError::io(what()))?;
            std_listener
                .set_nonblocking(true)
                .map_err(UpgradeError::io(what()))?;
            let listener = tokio::net::UnixListener::from_std(std_listener)
                .map_err(UpgradeError::io(what()))?;
            Ok(UpgradeSocket {
                listener,
                path: path.to_path_buf(),
                id: (meta.dev(), meta.ino()),
            })
        }

        /// Serve hand-overs until one succeeds (returns the new process's
        /// pid: stop accepting and drain now) or `stop` is cancelled
        /// (`None`; the socket file is removed if it is still ours). A
        /// failed attempt changes nothing: the next one may follow.
        /// `offers` is called for each attempt (fresh duplicates).
        pub async fn serve(
            self,
            offers: impl Fn() -> Vec<Offer>,
            timeout: Duration,
            stop: &CancellationToken,
        ) -> Option<u32> {
            let uid = std::fs::symlink_metadata(&self.path).map(|m| m.uid()).ok();
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = self.listener.accept() => r,
                };
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        warn!(error = %e, "upgrade socket: accept failed");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        }
                    }
                };
                let peer = stream.peer_cred().ok();
                let peer_uid = peer.map(|c| c.uid());
                let peer_pid = peer.and_then(|c| c.pid());
                if peer_uid.is_none() || (peer_uid != uid && peer_uid != Some(0)) {
                    warn!(?peer_uid, "upgrade socket: peer of another user refused");
                    continue;
                }
                info!(peer.pid = ?peer_pid, "upgrade: a new process asks for the listening sockets");
                let offers = offers();
                let attempt = match stream.into_std() {
                    Ok(s) => tokio::task::spawn_blocking(move || give(s, &offers, timeout)),
                    Err(e) => {
                        warn!(error = %e, "upgrade socket: connection unusable");
                        continue;
                    }
                };
                let outcome = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = attempt => r,
                };
                match outcome {
                    Ok(Ok(pid)) => {
                        info!(
                            new.pid = pid,
                            "upgrade: the new process serves; stopping accepting and draining"
                        );
                        return Some(pid);
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "upgrade: hand-over failed; still serving")
                    }
                    Err(e) => warn!(error = %e, "upgrade: hand-over task failed; still serving"),
                }
            }
            // Stopping without a hand-over: remove the file if no new
            // process has replaced it.
            if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
                let _ = std::fs::remove_file(&self.path);
            }
            None
        }
    }

    /// Tell the service manager (systemd `Type=notify`) about this process:
    /// `READY=1` once serving; after a takeover `MAINPID=<pid>` too, so
    /// that systemd follows the new process when the old one exits (it
    /// accepts that from a process other than the main one only with
    /// `NotifyAccess=all`). `Ok(false)` when `NOTIFY_SOCKET` is not set.
    pub fn sd_notify(state: &str) -> std::io::Result<bool> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(false),
            Some(socket) => notify_to(&socket, state).map(|()| true),
        }
    }

    /// Send one notification datagram to `socket` (a path, or `@name` for
    /// a Linux abstract socket).
    pub fn notify_to(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        if let Some(name) = socket.as_bytes().strip_prefix(b"@") {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)?;
                return Ok(());
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = name;
                return Err(std::io::ErrorKind::Unsupported.into());
            }
        }
        sock.send_to(state.as_bytes(), Path::new(socket))?;
        Ok(())
    }

    /// Listening sockets passed by systemd socket activation (`LISTEN_PID`
    /// must be this process), named by `LISTEN_FDNAMES`
    /// (`FileDescriptorName=`). Call before any thread starts: the
    /// variables are removed from the environment. A descriptor that is not
    /// a listening TCP socket is an error.
    pub fn systemd_listeners() -> Result<Vec<InheritedListener>, UpgradeError> {
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        let names = fd_names(&names, fds.len());
        let mut out = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            let what = format!(
                "systemd socket {} ({})",
                i + 3,
                name.as_deref().unwrap_or("unnamed")
            );
            let Some(l) = fds
                .take_tcp_listener(i)
                .map_err(UpgradeError::io(what.clone()))?
            else {
                continue;
            };
            let addr = l.local_addr().map_err(UpgradeError::io(what))?;
            out.push(InheritedListener {
                name,
                addr,
                sockets: vec![l],
            });
        }
        Ok(out)
    }
}

/// Without Unix sockets there is nothing to take over.
#[cfg(not(unix))]
pub fn take_over(
    _path: &std::path::Path,
    _timeout: Duration,
) -> Result<(Received, Handover), UpgradeError> {
    Err(UpgradeError::Unsupported)
}

/// Never constructed off Unix.
#[cfg(not(unix))]
#[derive(Debug)]
pub struct Handover(());

#[cfg(not(unix))]
impl Handover {
    pub fn confirm(self) -> Result<(), UpgradeError> {
        Err(UpgradeError::Unsupported)
    }
}

/// No service manager notifications off Unix.
#[cfg(not(unix))]
pub fn sd_notify(_state: &str) -> std::io::Result<bool> {
    Ok(false)
}

/// No socket activation off Unix.
#[cfg(not(unix))]
pub fn systemd_listeners() -> Result<Vec<InheritedListener>, UpgradeError> {
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn listeners_match_by_name_then_by_address() {
        let wanted = [
            ("mqtts", a("0.0.0.0:8883")),
            ("ws", a("0.0.0.0:8443")),
            ("moved", a("0.0.0.0:9000")),
            ("new", a("0.0.0.0:9999")),
            ("any", a("127.0.0.1:0")),
        ];
        let offered = [
            (Some("moved"), a("0.0.0.0:9001")),
            (None, a("0.0.0.0:8443")),
            (Some("mqtts"), a("0.0.0.0:8883")),
            // Named for another listener: not taken by address.
            (Some("moved"), a("0.0.0.0:9999")),
            (Some("mqttlb.socket"), a("127.0.0.1:4242")),
        ];
        assert_eq!(
            assign(&wanted, &offered),
            [
                Assignment::Inherit(2),
                Assignment::Inherit(1),
                Assignment::AddressChanged(0),
                Assignment::Fresh,
                Assignment::Inherit(4),
            ]
        );
        assert_eq!(assign(&wanted, &[]), [Assignment::Fresh; 5]);
    }

    #[test]
    fn fd_names_fill_and_cut() {
        assert_eq!(
            fd_names("mqtts::ws:extra", 3),
            [Some("mqtts".to_string()), None, Some("ws".to_string())]
        );
        assert_eq!(fd_names("", 2), [None, None]);
    }

    #[test]
    fn messages_round_trip_and_bad_headers_are_errors() {
        let msg = Message::Listener {
            listener: "mqtts".into(),
            addr: a("[::]:8883"),
        };
        let bytes = encode(&msg, 3).unwrap();
        let header: [u8; HEADER] = bytes[..HEADER].try_into().unwrap();
        let (len, fds) = decode_header(&header).unwrap();
        assert_eq!((len, fds), (bytes.len() - HEADER, 3));
        assert_eq!(decode_payload(&bytes[HEADER..]).unwrap(), msg);

        let mut bad = header;
        bad[0] = b'X';
        assert!(decode_header(&bad).is_err());
        let mut big = header;
        big[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_header(&big).is_err());
        let mut many = header;
        many[8..12].copy_from_slice(&65u32.to_be_bytes());
        assert!(decode_header(&many).is_err());
        assert!(decode_payload(b"{\"type\":\"serving\"}").is_err());
        assert!(decode_payload(b"\xff\xfe").is_err());
        assert!(encode(&msg, MAX_FDS_PER_MESSAGE + 1).is_err());
    }

    /// A real exchange over a socket pair: sockets cross, the listener
    /// received accepts what was queued on the one sent, and the old side
    /// learns the new one serves.
    #[cfg(unix)]
    #[tokio::test]
    async fn sockets_cross_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        // A stale file is replaced.
        std::fs::write(&path, b"stale").unwrap();
        let socket = UpgradeSocket::bind(&path, false).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second server on a live path is refused.
        assert!(matches!(
            UpgradeSocket::bind(&path, false),
            Err(UpgradeError::Refused(_))
        ));

        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let dup = socket2::Socket::from(tcp.try_clone().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let offers = move || {
            vec![
                Offer {
                    name: Some("mqtts".into()),
                    addr,
                    sockets: vec![dup.try_clone().unwrap()],
                },
                Offer {
                    name: None,
                    addr,
                    sockets: vec![dup.try_clone().unwrap()],
                },
            ]
        };
        let server = tokio::spawn({
            let stop = stop.clone();
            async move { socket.serve(offers, Duration::from_secs(10), &stop).await }
        });
        // A client queued before the hand-over.
        let _queued = std::net::TcpStream::connect(addr).unwrap();
        let path2 = path.clone();
        let (received, handover) = tokio::task::spawn_blocking(move || {
            take_over(&path2, Duration::from_secs(10)).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(received.admin.as_ref().map(|a| a.0), Some(addr));
        let listeners = received.listeners;
        assert_eq!(listeners.len(), 1);
        assert_eq!(listeners[0].name.as_deref(), Some("mqtts"));
        assert_eq!(listeners[0].addr, addr);
        drop(tcp);
        let (_, peer) = listeners[0].sockets[0].accept().unwrap();
        assert_eq!(peer.ip(), addr.ip());
        tokio::task::spawn_blocking(move || handover.confirm().unwrap())
            .await
            .unwrap();
        assert_eq!(server.await.unwrap(), Some(std::process::id()));
        // Handed over: the file is left for the new process.
        assert!(path.exists());
    }

    #[cfg(unix)]
    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "MAINPID=42\nREADY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MAINPID=42\nREADY=1");
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("mqttlb-test-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
            let rx = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
            notify_to(std::ffi::OsStr::new(&format!("@{name}")), "READY=1").unwrap();
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"READY=1");
        }
    }

    /// A peer that talks nonsense, or takes the sockets and never says it
    /// serves, is dropped after the timeout; the server keeps serving and
    /// the next new process can still take over.
    #[cfg(unix)]
    #[tokio::test]
    async fn garbage_or_a_hung_peer_changes_nothing() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.sock");
        let socket = UpgradeSocket::bind(&path, false).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                socket
                    .serve(Vec::new, Duration::from_millis(500), &stop)
                    .await
            }
        });
        for junk in [
            &b"MQU1\xff\xff\xff\xff\0\0\0\0"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"",
        ] {
            let mut c = tokio::net::UnixStream::connect(&path).await.unwrap();
            c.write_all(junk).await.unwrap();
            drop(c);
        }
        let take = |p: std::path::PathBuf| {
            tokio::task::spawn_blocking(move || take_over(&p, Duration::from_secs(10)))
        };
        // Takes the (no) sockets and hangs without confirming.
        let (got, hung) = take(path.clone()).await.unwrap().unwrap();
        assert!(got.listeners.is_empty() && got.admin.is_none());
        // The next one is served once the hung one timed out.
        let (_, next) = take(path.clone()).await.unwrap().unwrap();
        assert!(!server.is_finished());
        tokio::task::spawn_blocking(move || next.confirm().unwrap())
            .await
            .unwrap();
        assert_eq!(server.await.unwrap(), Some(std::process::id()));
        drop(hung);
    }

    /// Stopped without a hand-over, the server removes its socket file.
    #[cfg(unix)]
    #[tokio::test]
    async fn stopping_removes_the_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.sock");
        let socket = UpgradeSocket::bind(&path, false).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        stop.cancel();
        assert_eq!(
            socket.serve(Vec::new, Duration::from_secs(1), &stop).await,
            None
        );
        assert!(!path.exists());
    }
}
