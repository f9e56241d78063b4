//! Why a hand-over or socket activation failed.

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
    pub(super) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpgradeError {
        let what = what.into();
        move |source| match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                UpgradeError::Timeout { what }
            }
            _ => UpgradeError::Io { what, source },
        }
    }
}
