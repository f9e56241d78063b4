//! systemd support: listening sockets passed by socket activation
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`) and readiness notifications
//! (`NOTIFY_SOCKET`, `Type=notify`). Independent of the hand-over.

use super::error::UpgradeError;
use super::inherited::InheritedListener;

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

#[cfg(unix)]
pub use unix::{notify_to, sd_notify, systemd_listeners};

#[cfg(unix)]
mod unix {
    use std::path::Path;

    use super::*;

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

/// No service manager notifications off Unix.
#[cfg(not(unix))]
pub fn sd_notify(_state: &str) -> std::io::Result<bool> {
    Ok(false)
}

/// No service manager to notify off Unix.
#[cfg(not(unix))]
pub fn notify_to(_socket: &std::ffi::OsStr, _state: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "notifications need a Unix datagram socket",
    ))
}

/// No socket activation off Unix.
#[cfg(not(unix))]
pub fn systemd_listeners() -> Result<Vec<InheritedListener>, UpgradeError> {
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_names_fill_and_cut() {
        assert_eq!(
            fd_names("mqtts::ws:extra", 3),
            [Some("mqtts".to_string()), None, Some("ws".to_string())]
        );
        assert_eq!(fd_names("", 2), [None, None]);
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
}
