//! Operating-system plumbing: listening sockets and resource limits.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Bind a TCP listener with an explicit backlog (the kernel caps it at
/// `net.core.somaxconn`). `SO_REUSEADDR` lets a restarted mqttlb bind while
/// old connections sit in TIME_WAIT. Must be called inside a tokio runtime.
pub fn bind_tcp(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    bind_one(addr, backlog, false, false)
}

/// [`bind_tcp`] without a runtime: the socket is non-blocking, for
/// `TcpListener::from_std` on the thread that will serve it.
pub fn bind_tcp_std(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    Ok(bind_socket(addr, backlog, false, false)?.into())
}

fn bind_one(
    addr: SocketAddr,
    backlog: u32,
    reuse_port: bool,
    nodelay: bool,
) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_socket(addr, backlog, reuse_port, nodelay)?.into())
}

/// `nodelay`: set `TCP_NODELAY` on the listening socket, before `listen`,
/// so every connection it accepts has it from the start (Linux copies it
/// to the accepted socket: no `setsockopt` per connection).
fn bind_socket(
    addr: SocketAddr,
    backlog: u32,
    reuse_port: bool,
    nodelay: bool,
) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if nodelay {
        socket.set_tcp_nodelay(true)?;
    }
    #[cfg(not(windows))]
    socket.set_reuse_address(true)?;
    #[cfg(target_os = "linux")]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reuse_port;
    if addr.is_ipv6() {
        // "[::]:8883" serves IPv4 clients too, as operators expect.
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket)
}

/// The listening sockets of one listener address.
///
/// On Linux a listener can open several sockets on the same address with
/// `SO_REUSEPORT`: the kernel spreads incoming connections over them by a
/// hash of the 4-tuple, each socket has its own accept queue and its own
/// accept task, and no lock or shared queue sits between the worker
/// threads on the accept path (NGINX's `reuseport`, HAProxy's default).
/// Elsewhere `SO_REUSEPORT` does not balance, and one socket is opened.
#[derive(Debug)]
pub struct ListenerSockets {
    sockets: Vec<TcpListener>,
    /// Accepted connections come with `TCP_NODELAY` already set (see
    /// [`ListenerSockets::accepted_nodelay`]).
    nodelay: bool,
}

impl ListenerSockets {
    /// Bind `count` sockets (at least one) on `addr`. With port 0 the
    /// first socket picks the port and the others join it.
    pub fn bind(addr: SocketAddr, backlog: u32, count: usize) -> std::io::Result<ListenerSockets> {
        let count = if cfg!(target_os = "linux") {
            count.max(1)
        } else {
            1
        };
        let reuse_port = count > 1;
        let nodelay = cfg!(target_os = "linux");
        let first = bind_one(addr, backlog, reuse_port, nodelay)?;
        let addr = first.local_addr()?;
        let mut sockets = Vec::with_capacity(count);
        sockets.push(first);
        for _ in 1..count {
            sockets.push(bind_one(addr, backlog, reuse_port, nodelay)?);
        }
        Ok(ListenerSockets { sockets, nodelay })
    }

    /// Listening sockets made elsewhere (handed over by the process this
    /// one replaces, or passed by systemd): made non-blocking and
    /// registered with the runtime. Must be called inside a tokio runtime.
    pub fn from_std(sockets: Vec<std::net::TcpListener>) -> std::io::Result<ListenerSockets> {
        if sockets.is_empty() {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        let sockets = sockets
            .into_iter()
            .map(|s| {
                s.set_nonblocking(true)?;
                TcpListener::from_std(s)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        // Their options are whatever their maker set, and connections
        // may already wait in their queues: each accepted one sets its own.
        Ok(ListenerSockets {
            sockets,
            nodelay: false,
        })
    }

    /// Whether the connections these sockets accept have `TCP_NODELAY`
    /// set already: sockets bound here on Linux, where an accepted socket
    /// inherits it from its listener (one `setsockopt` less per
    /// connection). Not sockets made elsewhere (handed over, systemd).
    pub fn accepted_nodelay(&self) -> bool {
        self.nodelay
    }

    /// The address the sockets listen on (the port chosen for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self.sockets.first() {
            Some(s) => s.local_addr(),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub fn into_sockets(self) -> Vec<TcpListener> {
        self.sockets
    }
}

/// Shortest pause after a failed `accept`; it doubles up to [`ACCEPT_PAUSE_MAX`].
pub const ACCEPT_PAUSE_MIN: std::time::Duration = std::time::Duration::from_millis(5);
pub const ACCEPT_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// The accept loop of every server in mqttlb (proxy listeners, broker,
/// admin): hands each accepted connection to `on_accept` until `stop` is
/// cancelled. A failed `accept` (EMFILE, ENFILE, ENOBUFS: the connection
/// stays in the backlog) goes to `on_error` with the pause that follows,
/// 5 ms doubling to 1 s and reset by the next success, so the loop never
/// spins on a condition only time can clear. Cancel-safe: `accept` is
/// raced against `stop`, and a cancelled `accept` loses no connection.
pub async fn accept_loop(
    listener: &TcpListener,
    stop: &tokio_util::sync::CancellationToken,
    mut on_accept: impl FnMut(tokio::net::TcpStream, SocketAddr),
    mut on_error: impl FnMut(&std::io::Error, std::time::Duration),
) {
    let mut pause = ACCEPT_PAUSE_MIN;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                pause = ACCEPT_PAUSE_MIN;
                on_accept(tcp, peer);
            }
            Err(e) => {
                on_error(&e, pause);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
            }
        }
    }
}

/// Open-file limits before and after raising the soft limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimits {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raise the soft RLIMIT_NOFILE to the hard limit: every proxied connection
/// holds two descriptors, and the usual soft default (1024) caps a proxy at
/// ~500 clients.
#[cfg(unix)]
pub fn raise_nofile() -> std::io::Result<NofileLimits> {
    use rlimit::Resource;
    let (soft_before, hard) = Resource::NOFILE.get()?;
    let soft = rlimit::increase_nofile_limit(hard)?;
    Ok(NofileLimits {
        soft_before,
        soft,
        hard,
    })
}

/// Windows has no descriptor limit of that kind.
#[cfg(not(unix))]
pub fn raise_nofile() -> std::io::Result<NofileLimits> {
    Ok(NofileLimits {
        soft_before: u64::MAX,
        soft: u64::MAX,
        hard: u64::MAX,
    })
}

/// Descriptors this process holds now and its soft RLIMIT_NOFILE
/// (`/proc/self/fd`), for the status page; `None` where that cannot be
/// read.
#[cfg(target_os = "linux")]
pub fn open_fds() -> Option<(u64, u64)> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let (soft, _) = rlimit::Resource::NOFILE.get().ok()?;
    // The directory's own descriptor, open while it was read, is not one
    // the process holds.
    Some((u64::try_from(open).ok()?.saturating_sub(1), soft))
}

/// Other systems: not shown.
#[cfg(not(target_os = "linux"))]
pub fn open_fds() -> Option<(u64, u64)> {
    None
}

/// Largest file-descriptor table [`reserve_fd_table`] grows ahead of need
/// (about 2 MiB of kernel memory); beyond it the table still grows, at
/// each doubling.
pub const FD_TABLE_RESERVE_MAX: u64 = 262_144;

/// Grow this process's file-descriptor table to `fds` entries now, while
/// the process is still single-threaded, and keep it grown.
///
/// Linux grows the table by doubling when a new descriptor does not fit,
/// and in a multi-threaded process every growth waits for an RCU grace
/// period (`expand_fdtable` → `synchronize_rcu`): measured here, 7 to 16 ms
/// at 256, 512, 1024 and 2048 descriptors, during which the thread that
/// accepts or connects stalls and every connection behind it waits (the
/// connect p99 of a ramp of 2,000 clients went from under 1 ms to 16 ms).
/// HAProxy and NGINX workers are single-threaded and never pay it.
///
/// `F_DUPFD` of `/dev/null` onto descriptor `fds - 1` makes the kernel size
/// the table for it; that descriptor stays open for the life of the process
/// (closing a raw descriptor would need `unsafe`), which costs one of
/// `fds` slots. Returns the descriptor held, or `None` when nothing was
/// needed.
#[cfg(target_os = "linux")]
pub fn reserve_fd_table(fds: u64) -> std::io::Result<Option<i32>> {
    use nix::fcntl::{FcntlArg, fcntl};
    let fds = fds.min(FD_TABLE_RESERVE_MAX);
    if fds <= 1024 {
        return Ok(None);
    }
    let target = i32::try_from(fds - 1).unwrap_or(i32::MAX);
    let null = std::fs::File::open("/dev/null")?;
    let held = fcntl(&null, FcntlArg::F_DUPFD_CLOEXEC(target)).map_err(std::io::Error::from)?;
    Ok(Some(held))
}

/// Other systems: nothing to do.
#[cfg(not(target_os = "linux"))]
pub fn reserve_fd_table(_fds: u64) -> std::io::Result<Option<i32>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection `setsockopt` is skipped only where the kernel
    /// really copies `TCP_NODELAY` from the listener.
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_their_listener() {
        let group = ListenerSockets::bind("127.0.0.1:0".parse().unwrap(), 16, 1).unwrap();
        let addr = group.local_addr().unwrap();
        assert_eq!(group.accepted_nodelay(), cfg!(target_os = "linux"));
        let inherits = group.accepted_nodelay();
        let listener = group.into_sockets().remove(0);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        if inherits {
            assert!(accepted.nodelay().unwrap());
        }
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let handed = ListenerSockets::from_std(vec![std]).unwrap();
        assert!(
            !handed.accepted_nodelay(),
            "options of a socket made elsewhere are unknown"
        );
    }

    #[tokio::test]
    async fn listener_sockets_share_one_port() {
        let group = ListenerSockets::bind("127.0.0.1:0".parse().unwrap(), 16, 3).unwrap();
        let addr = group.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        let expected = if cfg!(target_os = "linux") { 3 } else { 1 };
        assert_eq!(group.len(), expected);
        let sockets = group.into_sockets();
        for s in &sockets {
            assert_eq!(s.local_addr().unwrap(), addr);
        }
        // Every connection lands in one of the accept queues.
        let _clients: Vec<_> = futures_connect(addr, 12).await;
        let mut accepted = 0;
        for s in &sockets {
            while let Ok(Ok(_)) =
                tokio::time::timeout(std::time::Duration::from_millis(200), s.accept()).await
            {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 12);
    }

    async fn futures_connect(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        v
    }

    #[tokio::test]
    async fn accept_loop_hands_over_connections_until_stopped() {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let looping = {
            let stop = stop.clone();
            tokio::spawn(async move {
                accept_loop(
                    &listener,
                    &stop,
                    |tcp, peer| {
                        let _ = tx.send((tcp, peer));
                    },
                    |_, _| {},
                )
                .await
            })
        };
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_, peer) = rx.recv().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        stop.cancel();
        looping.await.unwrap();
    }

    #[test]
    fn a_second_group_on_a_taken_port_fails() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let taken = bind_tcp("127.0.0.1:0".parse().unwrap(), 16).unwrap();
            let addr = taken.local_addr().unwrap();
            // A listener without SO_REUSEPORT keeps the port to itself.
            assert!(ListenerSockets::bind(addr, 16, 2).is_err());
        });
    }
}
