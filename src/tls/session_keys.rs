//! The process's own session-ticket keys, for listeners without
//! `ticket_keys`: one random key at start, a new one every
//! `ROTATE_EVERY`, each kept while a ticket it sealed can still be valid
//! (`LIFETIME`), and the whole schedule handed to the process that takes
//! over. The proxy owns the one [`SessionKeys`]; acceptors only read its
//! [`KeyRing`], so a reload never changes them.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use zeroize::Zeroizing;

use super::tickets::{KeyRing, LIFETIME, PROCESS_KEYS, ROTATE_EVERY, TicketKey, TicketKeys, now};

/// One of the process's own keys as it crosses a takeover: its 80 bytes,
/// when it began sealing and when it stopped (Unix seconds).
#[derive(Clone)]
pub struct KeyState {
    pub secret: Zeroizing<Vec<u8>>,
    pub since: u64,
    pub retired: Option<u64>,
}

impl fmt::Debug for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyState")
            .field("since", &self.since)
            .field("retired", &self.retired)
            .finish_non_exhaustive()
    }
}

struct Scheduled {
    key: Arc<TicketKey>,
    since: u64,
    retired: Option<u64>,
}

/// The process's own keys, for listeners without `ticket_keys`: made once
/// at start, rotated every `ROTATE_EVERY` (a new key first; a key goes
/// once no ticket it sealed can still be valid), kept across reloads and
/// handed over on `--takeover`. Owned by the proxy, not by an acceptor.
pub struct SessionKeys {
    live: KeyRing,
    /// The same keys with their dates; a std Mutex, held for a rotation.
    schedule: std::sync::Mutex<Vec<Scheduled>>,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("keys", &self.live.load().len())
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// One random key, sealing from `now`.
    pub fn generate(now: u64) -> Result<SessionKeys, String> {
        let key = Arc::new(TicketKey::generate()?);
        let keys = TicketKeys::new(vec![key.clone()]).ok_or("no key")?;
        Ok(SessionKeys {
            live: Arc::new(ArcSwap::from_pointee(keys)),
            schedule: std::sync::Mutex::new(vec![Scheduled {
                key,
                since: now,
                retired: None,
            }]),
        })
    }

    /// A random key set sealing from the current time.
    pub fn generate_now() -> Result<SessionKeys, String> {
        SessionKeys::generate(now())
    }

    /// What listeners without `ticket_keys` seal and open with.
    pub fn ring(&self) -> KeyRing {
        self.live.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Scheduled>> {
        // A poisoned lock means a panic elsewhere; the list is still whole.
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long until the sealing key is due for rotation.
    pub fn until_rotation(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.next_rotation().saturating_sub(now()))
    }

    /// [`SessionKeys::rotate`] at the current time.
    pub fn rotate_if_due(&self) -> Result<bool, String> {
        self.rotate(now())
    }

    /// [`SessionKeys::adopt`] at the current time.
    pub fn adopt_now(&self, handed: &[KeyState]) -> Result<(), String> {
        self.adopt(handed, now())
    }

    /// When (Unix seconds) the sealing key is due for rotation.
    pub fn next_rotation(&self) -> u64 {
        self.lock()
            .first()
            .map_or(0, |k| k.since.saturating_add(ROTATE_EVERY))
    }

    /// Rotate if due at `now`: a new key seals, the old one retires, and
    /// keys retired more than `LIFETIME` ago go. `Ok(true)`: rotated.
    pub fn rotate(&self, now: u64) -> Result<bool, String> {
        let mut schedule = self.lock();
        let due = schedule
            .first()
            .is_none_or(|k| now >= k.since.saturating_add(ROTATE_EVERY));
        if !due {
            return Ok(false);
        }
        let key = Arc::new(TicketKey::generate()?);
        for k in schedule.iter_mut() {
            k.retired.get_or_insert(now);
        }
        schedule.insert(
            0,
            Scheduled {
                key,
                since: now,
                retired: None,
            },
        );
        self.prune(&mut schedule, now);
        Ok(true)
    }

    /// Drop what no live ticket can name, cap the count, publish.
    fn prune(&self, schedule: &mut Vec<Scheduled>, now: u64) {
        schedule.retain(|k| {
            k.retired
                .is_none_or(|r| now < r.saturating_add(u64::from(LIFETIME)))
        });
        schedule.truncate(PROCESS_KEYS);
        let keys = schedule.iter().map(|k| k.key.clone()).collect();
        if let Some(keys) = TicketKeys::new(keys) {
            self.live.store(Arc::new(keys));
        }
    }

    /// The keys with their dates, sealing key first, for a takeover.
    pub fn export(&self) -> Vec<KeyState> {
        self.lock()
            .iter()
            .map(|k| KeyState {
                secret: Zeroizing::new(k.key.secret().to_vec()),
                since: k.since,
                retired: k.retired,
            })
            .collect()
    }

    /// Continue the keys of the process this one took over from: theirs
    /// first (the first seals from now on, on their schedule), then ours,
    /// retired at `now` (tickets sealed before the keys arrived still
    /// open). An invalid key changes nothing.
    pub fn adopt(&self, handed: &[KeyState], now: u64) -> Result<(), String> {
        let mut adopted = Vec::with_capacity(handed.len());
        for h in handed.iter().take(PROCESS_KEYS) {
            adopted.push(Scheduled {
                key: Arc::new(TicketKey::from_bytes(&h.secret)?),
                since: h.since,
                retired: h.retired,
            });
        }
        if adopted.is_empty() {
            return Ok(());
        }
        let mut schedule = self.lock();
        for mut own in schedule.drain(..) {
            own.retired.get_or_insert(now);
            if adopted.iter().all(|a| a.key.name() != own.key.name()) {
                adopted.push(own);
            }
        }
        *schedule = adopted;
        self.prune(&mut schedule, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tickets::Ticketer;
    use crate::tls::tickets::tests::{CX, T0};

    #[test]
    fn process_keys_rotate_on_schedule_and_keep_what_tickets_need() {
        let keys = SessionKeys::generate(T0).unwrap();
        let t = Ticketer::new(keys.ring(), CX);
        let first = t.seal(b"first", T0).unwrap();
        assert_eq!(keys.next_rotation(), T0 + ROTATE_EVERY);
        assert!(!keys.rotate(T0 + ROTATE_EVERY - 1).unwrap());
        let t1 = T0 + ROTATE_EVERY;
        assert!(keys.rotate(t1).unwrap());
        assert_eq!(keys.ring().load().len(), 2);
        let second = t.seal(b"second", t1).unwrap();
        assert_ne!(first[..16], second[..16]);
        // Sealed just before the rotation: still opens until it expires.
        assert_eq!(t.open(&first, t1).unwrap(), b"first");
        // Next rotation: the first key goes (its tickets have expired).
        let t2 = t1 + ROTATE_EVERY;
        assert!(keys.rotate(t2).unwrap());
        assert_eq!(keys.ring().load().len(), 2);
        assert!(t.open(&first, t2).is_none());
        assert_eq!(t.open(&second, t2).unwrap(), b"second");
        // Debug shows counts and dates, never bytes.
        let exported = keys.export();
        assert_eq!(exported.len(), 2);
        assert_eq!((exported[0].since, exported[1].retired), (t2, Some(t2)));
        assert!(!format!("{exported:?} {keys:?}").contains("secret"));
    }

    #[test]
    fn a_takeover_continues_the_old_process_keys() {
        let old = SessionKeys::generate(T0).unwrap();
        old.rotate(T0 + ROTATE_EVERY).unwrap();
        let old_t = Ticketer::new(old.ring(), CX);
        let t1 = T0 + ROTATE_EVERY + 100;
        let sealed_old = old_t.seal(b"old", t1).unwrap();

        let new = SessionKeys::generate(t1).unwrap();
        let new_t = Ticketer::new(new.ring(), CX);
        let sealed_own = new_t.seal(b"own", t1).unwrap();
        new.adopt(&old.export(), t1 + 1).unwrap();
        assert_eq!(new_t.open(&sealed_old, t1 + 1).unwrap(), b"old");
        assert_eq!(new_t.open(&sealed_own, t1 + 1).unwrap(), b"own");
        // The old process's sealing key seals, on its schedule.
        assert_eq!(new_t.seal(b"x", t1).unwrap()[..16], sealed_old[..16]);
        assert_eq!(new.next_rotation(), old.next_rotation());
        assert_eq!(new.ring().load().len(), PROCESS_KEYS);
        // Bad bytes change nothing.
        let bad = KeyState {
            secret: Zeroizing::new(vec![0; 79]),
            since: 0,
            retired: None,
        };
        assert!(new.adopt(&[bad], t1).is_err());
        assert_eq!(new.ring().load().len(), PROCESS_KEYS);
    }
}
