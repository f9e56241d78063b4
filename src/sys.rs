//! Operating-system plumbing: listening sockets and resource limits.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// Bind a TCP listener with an explicit backlog (the kernel caps it at
/// `net.core.somaxconn`). `SO_REUSEADDR` lets a restarted mqttlb bind while
/// old connections sit in TIME_WAIT. Must be called inside a tokio runtime.
pub fn bind_tcp(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(not(windows))]
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // "[::]:8883" serves IPv4 clients too, as operators expect.
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
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
