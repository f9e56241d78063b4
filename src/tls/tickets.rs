//! Session tickets that every replica, every reload and a takeover resume:
//! mqttlb's own [`ProducesTickets`] over keys it is given.
//!
//! Hand-written because rustls's ticketer (`aws_lc_rs::Ticketer`) makes
//! random keys inside and cannot load given ones: a ticket it seals
//! resumes only in the process that sealed it, and only until the acceptor
//! holding it is rebuilt — every reload.
//!
//! # Keys
//!
//! A key is 80 bytes (as HAProxy's `tls-ticket-keys` and NGINX's 80-byte
//! `ssl_session_ticket_key`; `openssl rand 80 | base64 -w0` makes one): the
//! first 16 are its *name*, sent in clear at the head of every ticket it
//! seals; the AES-256-GCM key is derived from the other 64 by HKDF-SHA256.
//! A key set is ordered: the first key seals new tickets, every key opens
//! the tickets that name it. At most `MAX_KEYS`.
//!
//! Keys come from the `ticket_keys` file ([`TicketKeys::read`], re-read
//! on every reload) or, without one, from the process's own
//! `SessionKeys` (`session_keys.rs`): random at start, rotated every
//! `ROTATE_EVERY`, kept across reloads and handed to the process that
//! takes over.
//!
//! # Tickets
//!
//! ```text
//! key name (16) | nonce (12, random) | AES-256-GCM( issued (8, Unix s, BE) | rustls' session state ) | tag (16)
//! additional data: key name | SHA-256 of the listener's TLS context
//! ```
//!
//! The context ([`context`]) is the listener's name, its `client_auth` mode
//! and its CA and CRL contents: a ticket issued where one client CA
//! vouched for the client does not resume on a listener that trusts
//! another (or none). A ticket older than `LIFETIME` is refused even if
//! its key is still held.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{digest, hkdf, rand};
use base64::Engine as _;
use rustls::server::ProducesTickets;
use zeroize::Zeroizing;

use super::files::exposed_mode;
use super::{ClientAuth, TlsSetupError};

/// Bytes of one key (after base64 decoding).
pub const KEY_LEN: usize = 80;
/// Keys in one set (a `ticket_keys` file, or the process's own).
pub const MAX_KEYS: usize = 16;
/// Seconds a ticket resumes: told to clients, and checked when it comes back.
pub const LIFETIME: u32 = 12 * 3600;
/// Seconds between two rotations of the process's own keys.
pub const ROTATE_EVERY: u64 = LIFETIME as u64;
/// The process's own keys kept at most (the one sealing, the one before it,
/// and one handed over by a takeover).
pub const PROCESS_KEYS: usize = 3;

const NAME_LEN: usize = 16;
const TAG_LEN: usize = 16;
const ISSUED_LEN: usize = 8;
/// A ticket issued this far in the future (another replica's clock) opens.
const CLOCK_SKEW: u64 = 300;
/// Largest `ticket_keys` file read: 16 keys with comments fit many times.
const MAX_FILE: u64 = 64 * 1024;
const HKDF_SALT: &[u8] = b"mqttlb session ticket key v1";
const HKDF_INFO: &[u8] = b"aes-256-gcm";

/// One ticket key: its name and the AEAD key derived from it. The 80
/// bytes are kept (wiped on drop) to hand the process's keys over.
pub struct TicketKey {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
    secret: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketKey(***)")
    }
}

impl TicketKey {
    /// A key from its 80 bytes; the reason names the length otherwise.
    pub fn from_bytes(bytes: &[u8]) -> Result<TicketKey, String> {
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(format!(
                "{} bytes, want {KEY_LEN} (openssl rand {KEY_LEN} | base64 -w0)",
                bytes.len()
            ));
        }
        secret.copy_from_slice(bytes);
        let (name, material) = secret.split_first_chunk::<NAME_LEN>().ok_or("too short")?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(material);
        let info = [HKDF_INFO];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| "key derivation failed")?;
        let aead = LessSafeKey::new(UnboundKey::from(okm));
        Ok(TicketKey {
            name: *name,
            aead,
            secret,
        })
    }

    /// A random key.
    pub fn generate() -> Result<TicketKey, String> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::fill(bytes.as_mut_slice()).map_err(|_| "no randomness for a ticket key")?;
        TicketKey::from_bytes(bytes.as_slice())
    }

    /// The 16 bytes every ticket this key seals starts with (not secret).
    pub fn name(&self) -> [u8; NAME_LEN] {
        self.name
    }

    /// The key's 80 bytes, to hand to a process taking over.
    pub fn secret(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }
}

/// An ordered key set: the first seals, all open. Never empty, at most
/// `MAX_KEYS`.
#[derive(Clone)]
pub struct TicketKeys {
    keys: Vec<Arc<TicketKey>>,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TicketKeys({} keys, ***)", self.keys.len())
    }
}

impl TicketKeys {
    /// `keys`, first sealing; `None` when empty (beyond `MAX_KEYS` the
    /// oldest go).
    pub fn new(mut keys: Vec<Arc<TicketKey>>) -> Option<TicketKeys> {
        keys.truncate(MAX_KEYS);
        (!keys.is_empty()).then_some(TicketKeys { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys, first sealing.
    pub fn keys(&self) -> &[Arc<TicketKey>] {
        &self.keys
    }

    /// Keys as a `ticket_keys` file holds them: base64, one a line; blank
    /// lines and `#` comments are skipped. An error is the 1-based line
    /// number and the reason.
    pub fn parse(text: &str) -> Result<TicketKeys, (usize, String)> {
        let mut keys: Vec<(usize, Arc<TicketKey>)> = Vec::new();
        let mut last = 0;
        for (n, line) in (1..).zip(text.lines()) {
            last = n;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if keys.len() == MAX_KEYS {
                return Err((n, format!("more than {MAX_KEYS} keys")));
            }
            let bytes = Zeroizing::new(decode(line).map_err(|e| (n, e))?);
            let key = TicketKey::from_bytes(&bytes).map_err(|e| (n, e))?;
            if let Some((first, _)) = keys.iter().find(|(_, k)| k.name == key.name) {
                return Err((
                    n,
                    format!("the same key name (first 16 bytes) as line {first}"),
                ));
            }
            keys.push((n, Arc::new(key)));
        }
        TicketKeys::new(keys.into_iter().map(|(_, k)| k).collect())
            .ok_or((last.max(1), "no key in the file".to_string()))
    }

    /// Read the `ticket_keys` file at `path` (config key `key`). Errors
    /// name the file, the line and the reason; a file readable beyond its
    /// owner and the process's groups is logged loudly.
    pub fn read(key: &str, path: &Path) -> Result<TicketKeys, TlsSetupError> {
        let at = |reason: String| TlsSetupError::new(key, format!("{}: {reason}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| at(e.to_string()))?;
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| at(e.to_string()))?;
        if u64::try_from(text.len()).unwrap_or(u64::MAX) > MAX_FILE {
            return Err(at(format!("larger than {} KiB", MAX_FILE / 1024)));
        }
        if let Some(mode) = exposed_mode(path) {
            tracing::warn!(
                key,
                file = %path.display(),
                mode = %format!("{mode:04o}"),
                "ticket key file is readable by other users: anyone who reads it can decrypt every \
                 recorded session resumed with its keys; chmod 400 (or 440 with the process's group)"
            );
        }
        TicketKeys::parse(&text).map_err(|(line, reason)| {
            TlsSetupError::new(key, format!("{} line {line}: {reason}", path.display()))
        })
    }
}

/// Base64 (standard alphabet, `=` padding optional) without echoing the
/// line: it is key material.
fn decode(line: &str) -> Result<Vec<u8>, String> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const B64: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    B64.decode(line).map_err(|e| match e {
        base64::DecodeError::InvalidByte(at, _) | base64::DecodeError::InvalidLastSymbol(at, _) => {
            format!("not base64: bad character at column {}", at + 1)
        }
        _ => "not base64: truncated or badly padded".to_string(),
    })
}

/// SHA-256 over what a resumed session inherits from the full handshake
/// that made it: the listener, its client authentication mode and the CA
/// and CRLs that checked the client's certificate (DER, in order).
pub fn context(listener: &str, auth: ClientAuth, ca: &[&[u8]], crls: &[&[u8]]) -> [u8; 32] {
    let mut h = digest::Context::new(&digest::SHA256);
    let mut field = |bytes: &[u8]| {
        h.update(&u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(bytes);
    };
    field(b"mqttlb ticket context v1");
    field(listener.as_bytes());
    field(match auth {
        ClientAuth::None => b"none",
        ClientAuth::Optional => b"optional",
        ClientAuth::Required => b"required",
    });
    field(b"ca");
    for der in ca {
        field(der);
    }
    field(b"crl");
    for der in crls {
        field(der);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

/// A key set that can be swapped whole (the process's own keys rotate);
/// what a [`Ticketer`] reads.
pub type KeyRing = Arc<ArcSwap<TicketKeys>>;

/// A listener's ticketer: the key set it reads (swapped whole by rotation)
/// and its TLS context. Shared by every connection of one acceptor.
pub struct Ticketer {
    keys: KeyRing,
    context: [u8; 32],
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticketer")
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

/// Unix seconds now.
pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Additional data: the key's name, then the context.
fn aad(name: &[u8; NAME_LEN], context: &[u8; 32]) -> [u8; NAME_LEN + 32] {
    let mut aad = [0u8; NAME_LEN + 32];
    let (head, tail) = aad.split_at_mut(NAME_LEN);
    head.copy_from_slice(name);
    tail.copy_from_slice(context);
    aad
}

impl Ticketer {
    pub fn new(keys: KeyRing, context: [u8; 32]) -> Ticketer {
        Ticketer { keys, context }
    }

    /// Seal `plain` at Unix time `now` with the first key.
    pub fn seal(&self, plain: &[u8], now: u64) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let key = keys.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + ISSUED_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&now.to_be_bytes());
        out.extend_from_slice(plain);
        let body = out.get_mut(NAME_LEN + NONCE_LEN..)?;
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&key.name, &self.context)),
                body,
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    /// Open a ticket at Unix time `now`: `None` for an unknown key name, a
    /// forgery, another context, or a ticket past `LIFETIME`.
    pub fn open(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        let (name, rest) = ticket.split_first_chunk::<NAME_LEN>()?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        if sealed.len() < ISSUED_LEN + TAG_LEN {
            return None;
        }
        let keys = self.keys.load();
        let key = keys.keys.iter().find(|k| k.name == *name)?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad(name, &self.context)),
                &mut buf,
            )
            .ok()?;
        let (issued, state) = plain.split_first_chunk::<ISSUED_LEN>()?;
        let issued = u64::from_be_bytes(*issued);
        let fresh = issued <= now.saturating_add(CLOCK_SKEW)
            && now.saturating_sub(issued) <= u64::from(LIFETIME);
        fresh.then(|| state.to_vec())
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher, now())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn key(fill: u8) -> Arc<TicketKey> {
        Arc::new(TicketKey::from_bytes(&[fill; KEY_LEN]).unwrap())
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn ticketer(keys: Vec<Arc<TicketKey>>, context: [u8; 32]) -> Ticketer {
        let keys = TicketKeys::new(keys).unwrap();
        Ticketer::new(Arc::new(ArcSwap::from_pointee(keys)), context)
    }

    pub(in crate::tls) const T0: u64 = 1_700_000_000;
    pub(in crate::tls) const CX: [u8; 32] = [7; 32];

    #[test]
    fn a_ticket_round_trips_and_names_its_key() {
        let t = ticketer(vec![key(1), key(2)], CX);
        let sealed = t.seal(b"session state", T0).unwrap();
        assert_eq!(sealed.len(), 16 + 12 + 8 + 13 + 16);
        assert_eq!(sealed[..16], key(1).name());
        assert_eq!(t.open(&sealed, T0 + 60).unwrap(), b"session state");
        // Random nonces: sealing twice differs.
        assert_ne!(t.seal(b"session state", T0).unwrap(), sealed);
        assert!(t.enabled());
        assert_eq!(t.lifetime(), 12 * 3600);
        let now = t.encrypt(b"x").unwrap();
        assert_eq!(t.decrypt(&now).unwrap(), b"x");
    }

    #[test]
    fn unknown_names_tampering_and_other_contexts_are_refused() {
        let t = ticketer(vec![key(1)], CX);
        let sealed = t.seal(b"state", T0).unwrap();
        // Another key set: the name is unknown.
        assert!(ticketer(vec![key(3)], CX).open(&sealed, T0).is_none());
        // Every single flipped bit is caught (name, nonce, body, tag).
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(t.open(&bad, T0).is_none(), "byte {i}");
        }
        // Truncated, empty.
        for n in [0, 15, 28, 36, sealed.len() - 1] {
            assert!(t.open(&sealed[..n], T0).is_none(), "{n} bytes");
        }
        // The same key under another listener context.
        assert!(ticketer(vec![key(1)], [8; 32]).open(&sealed, T0).is_none());
    }

    #[test]
    fn tickets_expire_after_their_lifetime() {
        let t = ticketer(vec![key(1)], CX);
        let sealed = t.seal(b"state", T0).unwrap();
        let life = u64::from(LIFETIME);
        assert!(t.open(&sealed, T0 + life).is_some());
        assert!(t.open(&sealed, T0 + life + 1).is_none());
        // From a replica whose clock runs ahead: a few minutes are fine.
        assert!(t.open(&sealed, T0 - 60).is_some());
        assert!(t.open(&sealed, T0 - 3600).is_none());
    }

    #[test]
    fn after_rotation_old_tickets_open_and_new_ones_use_the_new_key() {
        let old = ticketer(vec![key(2)], CX);
        let sealed = old.seal(b"state", T0).unwrap();
        let rotated = ticketer(vec![key(1), key(2)], CX);
        assert_eq!(rotated.open(&sealed, T0).unwrap(), b"state");
        assert_eq!(rotated.seal(b"s", T0).unwrap()[..16], key(1).name());
    }

    #[test]
    fn context_covers_listener_auth_ca_and_crl() {
        let base = context("mqtts", ClientAuth::Required, &[b"ca"], &[]);
        assert_eq!(base, context("mqtts", ClientAuth::Required, &[b"ca"], &[]));
        for other in [
            context("other", ClientAuth::Required, &[b"ca"], &[]),
            context("mqtts", ClientAuth::Optional, &[b"ca"], &[]),
            context("mqtts", ClientAuth::Required, &[b"ca2"], &[]),
            context("mqtts", ClientAuth::Required, &[b"ca"], &[b"crl"]),
            context("mqtts", ClientAuth::Required, &[b"c", b"a"], &[]),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn key_files_parse_with_comments_and_errors_name_the_line() {
        let (a, b) = ([1u8; KEY_LEN], [2u8; KEY_LEN]);
        let text = format!("# rotated daily\n\n{}\n  {}  \n", b64(&a), b64(&b));
        let keys = TicketKeys::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.keys()[0].name(), [1u8; 16]);
        // Without padding too.
        assert!(TicketKeys::parse(b64(&a).trim_end_matches('=')).is_ok());

        let err = |text: &str| TicketKeys::parse(text).unwrap_err();
        let short = b64(&[1u8; 79]);
        assert_eq!(
            err(&format!("{}\n# c\n{short}\n", b64(&a))),
            (3, "79 bytes, want 80 (openssl rand 80 | base64 -w0)".into())
        );
        let (line, reason) = err(&format!("{}!\n", &b64(&a)[..10]));
        assert_eq!(line, 1);
        assert!(
            reason.contains("not base64: bad character at column 11"),
            "{reason}"
        );
        assert!(err("QUJD\n").1.starts_with("3 bytes"));
        assert_eq!(err("QUJDR\n").1, "not base64: truncated or badly padded");
        assert_eq!(err("# nothing\n\n"), (2, "no key in the file".into()));
        assert_eq!(err(""), (1, "no key in the file".into()));
        let dup = format!("{}\n{}\n", b64(&a), b64(&a));
        assert_eq!(
            err(&dup),
            (2, "the same key name (first 16 bytes) as line 1".into())
        );
        let many: String = (0..=MAX_KEYS)
            .map(|i| b64(&[u8::try_from(i).unwrap(); KEY_LEN]) + "\n")
            .collect();
        assert_eq!(err(&many), (17, "more than 16 keys".into()));
    }

    #[test]
    fn read_names_the_file_and_line_and_debug_shows_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, format!("{}\nnot-a-key\n", b64(&[5u8; KEY_LEN]))).unwrap();
        let e = TicketKeys::read("listener[0].tls.ticket_keys", &path).unwrap_err();
        assert_eq!(e.key, "listener[0].tls.ticket_keys");
        assert_eq!(
            e.reason,
            format!(
                "{} line 2: not base64: bad character at column 4",
                path.display()
            )
        );
        std::fs::write(&path, b64(&[5u8; KEY_LEN])).unwrap();
        let keys = TicketKeys::read("k", &path).unwrap();
        let shown = format!(
            "{keys:?} {:?} {:?}",
            keys.keys()[0],
            ticketer(vec![key(5)], CX)
        );
        assert!(
            !shown.contains("5, 5") && !shown.contains("BQUF"),
            "{shown}"
        );
        let missing = TicketKeys::read("k", &dir.path().join("none")).unwrap_err();
        assert!(missing.reason.contains("none"), "{missing}");
    }
}
