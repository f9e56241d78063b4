//! Active health checks: one task per node for as long as it is in its
//! set ([`NodeSet`]), every `interval`, each check bounded by `timeout`;
//! the settings are read each round, so a reload changes them without
//! restarting anything.
//!
//! * `tcp` — a TCP connect succeeds.
//! * `mqtt` — CONNECT (3.1.1 or 5.0, clean session) answered by an accepted
//!   CONNACK, then DISCONNECT. A broker that accepts TCP but cannot serve
//!   sessions (overloaded, still booting, refusing) is caught here.
//!
//! With PROXY protocol on, a check first sends a header, as a broker
//! listener that requires one drops connections without it. By default the
//! header carries the check connection's own addresses (command PROXY):
//! RabbitMQ 3.10 crashes the connection on a v2 LOCAL header, Mosquitto 2.1
//! and older VerneMQ close it, and RabbitMQ and current VerneMQ have no
//! path for v1 `PROXY UNKNOWN`; every PROXY parser accepts real addresses.
//! `proxy_command = "local"` sends LOCAL / UNKNOWN instead.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::HealthCheckKind;
use arc_swap::ArcSwap;

use super::Backend;
use super::config::HealthConfig;
use crate::mqtt::packets::{self, ConnackHead};
use crate::mqtt::rc;
use crate::proxy_protocol as header;
use crate::proxy_protocol::ProxyProtocol;

/// Why a check failed (logged at debug on each failure).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("broker refused the check's CONNECT with code {0:#04x}{hint}", hint = refusal_hint(*.0))]
    Refused(u8),
    #[error("broker answered something other than a CONNACK")]
    Malformed,
    #[error("broker closed the connection before answering")]
    Closed,
}

/// What to do about a refused check, for the codes an operator can fix.
fn refusal_hint(code: u8) -> &'static str {
    match code {
        rc::v3::BAD_USER_NAME_OR_PASSWORD
        | rc::v3::NOT_AUTHORIZED
        | rc::BAD_USER_NAME_OR_PASSWORD
        | rc::NOT_AUTHORIZED => {
            " (the broker wants credentials: set health.username/password, or allow the check's client id)"
        }
        rc::v3::IDENTIFIER_REJECTED | rc::CLIENT_IDENTIFIER_NOT_VALID => {
            " (the broker rejects the check's client id \"mqttlb-hc-…\")"
        }
        rc::v3::UNACCEPTABLE_PROTOCOL_VERSION | rc::UNSUPPORTED_PROTOCOL_VERSION => {
            " (the broker does not speak this health.mqtt_version)"
        }
        _ => "",
    }
}

/// How a pool's nodes are checked: what its health checks read each round.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    pub health: HealthConfig,
    pub proxy_protocol: ProxyProtocol,
}

/// A pool's check settings, shared by its nodes' checks and replaced in
/// place by a reload.
pub type SharedSettings = Arc<ArcSwap<CheckSettings>>;

/// Spawn `backend`'s checker on `tracker`. It reads `settings` every
/// round (a reload changes them in place) and stops when the node leaves
/// its set or `stop` is cancelled.
pub fn spawn_check(
    settings: SharedSettings,
    backend: Arc<Backend>,
    tracker: &tokio_util::task::TaskTracker,
    stop: &CancellationToken,
) {
    tracker.spawn(run(settings, backend, stop.clone()));
}

async fn run(shared: SharedSettings, backend: Arc<Backend>, stop: CancellationToken) {
    // Spread first checks over one interval (by the node's name, so they
    // do not fire in lockstep and a node's place is stable).
    let first = shared.load().health.interval;
    let spread = first.mul_f64(f64::from(backend.seed_fraction()));
    let mut next = Instant::now() + spread;
    let retired = backend.retired().clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = retired.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let settings = shared.load_full();
        let h = &settings.health;
        next = Instant::now() + h.interval;
        let connect = packets::encode_connect(
            h.mqtt_version,
            &check_client_id(&backend.name),
            10,
            h.username.as_deref(),
            h.password.as_ref().map(|p| p.0.as_bytes()),
        );
        let started = Instant::now();
        let result = tokio::time::timeout(h.timeout, check(&settings, &backend, &connect))
            .await
            .unwrap_or(Err(CheckError::Timeout));
        let seconds = started.elapsed().as_secs_f64();
        backend.metrics.check_duration.observe(seconds);
        backend.record_check(super::LastCheck {
            ok: result.is_ok(),
            seconds,
            error: result.as_ref().err().map(ToString::to_string),
        });
        match &result {
            Ok(()) => {
                backend.metrics.check_ok.inc();
            }
            Err(e) => {
                backend.metrics.check_failed.inc();
                tracing::debug!(backend = %backend.name, addr = %backend.addr, error = %e, "health check failed");
            }
        }
        backend.observe_check(result.is_ok());
    }
}

/// A client id unique to this process and backend, short enough for MQTT
/// 3.1's 23-character limit, so two mqttlb instances checking one broker do
/// not take over each other's check sessions.
fn check_client_id(backend: &str) -> String {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(backend.as_bytes(), u64::from(std::process::id()));
    format!("mqttlb-hc-{:012x}", h & 0xffff_ffff_ffff)
}

async fn check(
    settings: &CheckSettings,
    backend: &Backend,
    connect: &[u8],
) -> Result<(), CheckError> {
    let (health, proxy_protocol) = (&settings.health, settings.proxy_protocol);
    let mut stream = TcpStream::connect(backend.addr).await?;
    if health.check == HealthCheckKind::Tcp && proxy_protocol == ProxyProtocol::Off {
        return Ok(());
    }
    stream.set_nodelay(true)?;
    let mut out = Vec::with_capacity(64);
    header::encode_check(
        proxy_protocol,
        health.proxy_command,
        stream.local_addr()?,
        backend.addr,
        &mut out,
    );
    if health.check == HealthCheckKind::Tcp {
        stream.write_all(&out).await?;
        return Ok(());
    }
    let version = health.mqtt_version;
    out.extend_from_slice(connect);
    stream.write_all(&out).await?;
    let mut buf = [0u8; 64];
    let mut filled = 0;
    loop {
        let Some(free) = buf.get_mut(filled..) else {
            return Err(CheckError::Malformed);
        };
        let n = stream.read(free).await?;
        if n == 0 {
            return Err(CheckError::Closed);
        }
        filled += n;
        match packets::connack_head(buf.get(..filled).unwrap_or_default()) {
            ConnackHead::Incomplete if filled < buf.len() => continue,
            ConnackHead::Incomplete | ConnackHead::Malformed => {
                return Err(CheckError::Malformed);
            }
            ConnackHead::Complete { code: 0, .. } => break,
            ConnackHead::Complete { code, .. } => return Err(CheckError::Refused(code)),
        }
    }
    stream.write_all(packets::disconnect(version)).await?;
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_client_ids_are_short_and_distinct() {
        let a = super::check_client_id("node1");
        let b = super::check_client_id("node2");
        assert_ne!(a, b);
        assert!(a.len() <= 23, "{a}");
    }
}
