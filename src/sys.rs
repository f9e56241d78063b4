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
