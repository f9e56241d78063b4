//! The process's own session-ticket keys (`tls::SessionKeys`, for
//! listeners without `ticket_keys`): the proxy owns them, so every reload
//! keeps them; a task here rotates them; a takeover hands them over and
//! the new process adopts them (`upgrade`'s `ticket_keys` message).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ProxyHandle;
use crate::tls::{KeyState, SessionKeys};
use crate::upgrade::HandedKey;

/// Longest sleep between two looks at the schedule: a takeover may adopt
/// an older schedule, and the wall clock may jump.
const RECHECK: Duration = Duration::from_secs(60);

/// Rotate `keys` when due, until `shutdown`.
pub(super) async fn rotate(keys: Arc<SessionKeys>, shutdown: CancellationToken) {
    loop {
        let wait = keys.until_rotation().clamp(Duration::from_secs(1), RECHECK);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match keys.rotate_if_due() {
            Ok(true) => info!(
                keys = keys.ring().load().len(),
                "session ticket keys rotated: a new key seals tickets"
            ),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "session ticket keys not rotated; trying again"),
        }
    }
}

impl ProxyHandle {
    /// The process's session-ticket keys, for a process taking over.
    pub fn session_keys(&self) -> Vec<HandedKey> {
        self.state
            .session_keys
            .export()
            .into_iter()
            .map(|k| HandedKey::new(&k.secret, k.since, k.retired))
            .collect()
    }

    /// Continue with the session-ticket keys of the process this one took
    /// over from: tickets it issued resume here. Invalid keys change
    /// nothing (logged).
    pub fn adopt_session_keys(&self, handed: &[HandedKey]) {
        let keys: Result<Vec<KeyState>, String> = handed
            .iter()
            .map(|h| {
                Ok(KeyState {
                    secret: h.secret()?,
                    since: h.since,
                    retired: h.retired,
                })
            })
            .collect();
        match keys.and_then(|k| self.state.session_keys.adopt_now(&k)) {
            Ok(()) if handed.is_empty() => {}
            Ok(()) => info!(
                keys = handed.len(),
                "session ticket keys of the previous process adopted: its tickets resume here"
            ),
            Err(e) => warn!(error = %e, "session ticket keys of the previous process refused"),
        }
    }
}
