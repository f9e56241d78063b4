//! The Unix-socket exchange: the running proxy's `UpgradeSocket` gives
//! duplicates of its listening sockets (`SCM_RIGHTS`, via `rustix`, which
//! receives them as `OwnedFd`) to a new process that called [`take_over`];
//! that one answers with [`Handover::confirm`] once it serves. Blocking I/O
//! under socket timeouts and one deadline for the whole exchange; the
//! messages are `wire`'s. Off Unix only the types remain and
//! [`take_over`] fails.

use std::net::SocketAddr;
use std::time::Duration;

use super::error::UpgradeError;
use super::inherited::InheritedListener;
use super::wire::HandedKey;
#[cfg(unix)]
use super::wire::{
    HEADER, MAX_FDS, MAX_FDS_PER_MESSAGE, MAX_MESSAGES, MAX_TICKET_KEYS, Message, decode_header,
    decode_payload, encode,
};

/// What the running proxy offers: a listener's name, address and
/// duplicates of its listening sockets.
#[derive(Debug)]
pub struct Offer {
    /// The listener's name; `None` for the admin HTTP listener.
    pub name: Option<String>,
    pub addr: SocketAddr,
    pub sockets: Vec<socket2::Socket>,
}

/// Everything the running proxy hands over: its listening sockets, then,
/// once the new process serves, its own session-ticket keys.
#[derive(Debug, Default)]
pub struct Offers {
    pub sockets: Vec<Offer>,
    pub ticket_keys: Vec<HandedKey>,
}

/// What a new process received from the running one.
#[derive(Debug, Default)]
pub struct Received {
    pub listeners: Vec<InheritedListener>,
    /// The admin HTTP listener, if the running proxy had one.
    pub admin: Option<(SocketAddr, std::net::TcpListener)>,
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
pub use unix::{Handover, UpgradeSocket, take_over};

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
        /// drains. Returns its session-ticket keys (none from a version
        /// that does not send them).
        pub fn confirm(mut self) -> Result<Vec<HandedKey>, UpgradeError> {
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
            // The old process sends its ticket keys (if its version does)
            // and closes once it has read the answer; wait for that so the
            // caller knows it was heard.
            let mut keys = Vec::new();
            loop {
                match receive(&self.stream, self.deadline) {
                    // Closed: heard.
                    Err(UpgradeError::Refused(_)) => return Ok(keys),
                    Ok((Message::TicketKeys { keys: k }, fds))
                        if keys.is_empty() && fds.is_empty() && k.len() <= MAX_TICKET_KEYS =>
                    {
                        keys = k;
                    }
                    Ok(_) => {
                        return Err(UpgradeError::Protocol(
                            "unexpected message after the takeover".into(),
                        ));
                    }
                    Err(e) => return Err(e),
                }
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
                Message::Serving { .. } | Message::TicketKeys { .. } => {
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

    /// The old process's side of one hand-over: send `offers`' sockets,
    /// then wait for the new process to say it serves, then send the
    /// ticket keys. `Ok(pid)` = hand over now.
    fn give(stream: UnixStream, offers: &Offers, timeout: Duration) -> Result<u32, UpgradeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        stream
            .set_nonblocking(false)
            .map_err(UpgradeError::io("upgrade connection"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(UpgradeError::io("upgrade connection"))?;
        let mut listeners = 0usize;
        for offer in &offers.sockets {
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
        let pid = match receive(&stream, deadline)? {
            (Message::Serving { pid }, fds) if fds.is_empty() => pid,
            _ => return Err(UpgradeError::Protocol("expected \"serving\"".into())),
        };
        // It serves: whatever happens to the keys, the hand-over is done.
        if !offers.ticket_keys.is_empty() {
            let keys = Message::TicketKeys {
                keys: offers.ticket_keys.clone(),
            };
            if let Err(e) = send(&stream, &keys, &[]) {
                warn!(error = %e, "upgrade: the session ticket keys did not reach the new process; its clients resume only on its own tickets");
            }
        }
        Ok(pid)
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
            offers: impl Fn() -> Offers,
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
    pub fn confirm(self) -> Result<Vec<HandedKey>, UpgradeError> {
        Err(UpgradeError::Unsupported)
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;

    /// A real exchange over a socket pair: sockets cross, the listener
    /// received accepts what was queued on the one sent, and the old side
    /// learns the new one serves.
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
        let offers = move || Offers {
            sockets: vec![
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
            ],
            ticket_keys: vec![HandedKey::new(&[9; 80], 10, None)],
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
        let keys = tokio::task::spawn_blocking(move || handover.confirm().unwrap())
            .await
            .unwrap();
        assert_eq!(keys, [HandedKey::new(&[9; 80], 10, None)]);
        assert_eq!(server.await.unwrap(), Some(std::process::id()));
        // Handed over: the file is left for the new process.
        assert!(path.exists());
    }

    /// A peer that talks nonsense, or takes the sockets and never says it
    /// serves, is dropped after the timeout; the server keeps serving and
    /// the next new process can still take over.
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
                    .serve(Offers::default, Duration::from_millis(500), &stop)
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
        // No keys offered: none received.
        let keys = tokio::task::spawn_blocking(move || next.confirm().unwrap())
            .await
            .unwrap();
        assert!(keys.is_empty());
        assert_eq!(server.await.unwrap(), Some(std::process::id()));
        drop(hung);
    }

    /// Stopped without a hand-over, the server removes its socket file.
    #[tokio::test]
    async fn stopping_removes_the_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.sock");
        let socket = UpgradeSocket::bind(&path, false).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        stop.cancel();
        assert_eq!(
            socket
                .serve(Offers::default, Duration::from_secs(1), &stop)
                .await,
            None
        );
        assert!(!path.exists());
    }
}
