//! The admin HTTP server (hyper 1): `/metrics`, `/healthz`, `/readyz` and,
//! for the proxy, the status page `/`, `/api/v1/backends`, `/api/v1/pools`
//! (admission), drain/enable and reload.
//!
//! It shares nothing with the data path but read-mostly handles; `main`
//! runs it on its own thread and runtime, so it answers while the proxy's
//! workers are saturated. It binds loopback by default: the API
//! has no authentication of its own beyond the optional bearer token, and
//! refuses state changes a browser makes for another site (`origin`).
//!
//! Rooms: `origin` — the cross-site rule for POSTs; `status` — the status
//! page's HTML, rendered from a snapshot of the proxy.

mod origin;
pub mod status;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::balance::rebalance::Trigger;
use crate::broker::Broker;
use crate::config::defaults;
use crate::proxy::clients::{ClientIndex, ClientInfo, MAX_LIST};
use crate::proxy::{BackendStatus, PoolStatus, ProxyHandle, RebalanceError, ReloadError};
use crate::ratelog::LogLimiter;

/// What the admin server administers.
#[derive(Clone)]
pub enum Role {
    Proxy(ProxyHandle),
    Broker {
        broker: Arc<Broker>,
        /// Cancelled when the broker stops accepting.
        shutdown: CancellationToken,
    },
}

pub struct Admin {
    pub registry: Arc<Registry>,
    pub role: Role,
    pub limits: AdminLimits,
    /// Refused admin connections (registered by [`AdminMetrics::register`]
    /// before the registry is shared; unexported otherwise).
    pub metrics: AdminMetrics,
    /// When set, `/api/v1/…` requires `Authorization: Bearer <token>`, and
    /// the status page `/` shows data only with it (401 and the token form
    /// without); `/metrics`, `/healthz` and `/readyz` stay open (scrapers,
    /// probes).
    pub token: Option<crate::secret::Secret>,
}

pub use crate::config::AdminLimits;

impl Admin {
    pub fn new(registry: Arc<Registry>, role: Role) -> Admin {
        Admin {
            registry,
            role,
            limits: AdminLimits::default(),
            metrics: AdminMetrics::register(&mut Registry::default()),
            token: None,
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
const OPEN_METRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why an admin connection was closed at accept or before its first
/// request byte: the `reason` label of
/// `mqttlb_admin_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRefusal {
    /// `admin.max_connections` held (and the local reserve, for the host).
    MaxConnections,
    /// `admin.max_connections_per_source` held by this source address.
    PerSource,
    /// Nothing sent within `admin.first_byte_timeout`.
    Silent,
}

impl AdminRefusal {
    pub const ALL: [AdminRefusal; 3] = [
        AdminRefusal::MaxConnections,
        AdminRefusal::PerSource,
        AdminRefusal::Silent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminRefusal::MaxConnections => "max_connections",
            AdminRefusal::PerSource => "per_source",
            AdminRefusal::Silent => "first_byte_timeout",
        }
    }
}

/// `mqttlb_admin_connections_rejected_total{reason}`, one counter per
/// reason, resolved once.
#[derive(Debug, Clone)]
pub struct AdminMetrics {
    rejected: crate::metrics::CounterSet,
}

impl AdminMetrics {
    /// Register in `registry` (pass a scratch registry to count without
    /// exporting).
    pub fn register(registry: &mut Registry) -> AdminMetrics {
        use prometheus_client::metrics::{counter::Counter, family::Family};
        let family = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        registry.register(
            "mqttlb_admin_connections_rejected",
            "Admin connections closed at accept or before their first request byte, by reason",
            family.clone(),
        );
        AdminMetrics {
            rejected: crate::metrics::CounterSet::new(&AdminRefusal::ALL, |r| {
                family.get_or_create(&vec![("reason", r.as_str())]).clone()
            }),
        }
    }

    fn rejected(&self, reason: AdminRefusal) {
        self.rejected.inc(reason as usize);
    }
}

/// Whether `ip` is this host itself (an exec probe, `mqttlb health`, a
/// sidecar in the same network namespace): exactly 127.0.0.1 or ::1, so
/// that other loopback addresses can stand in for other hosts in tests.
fn is_this_host(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST,
    }
}

/// Who holds admin connections: open counts in all, from this host beyond
/// `max_connections`, and per source address. Admission is decided and
/// released synchronously; a [`Slot`] gives its place back when dropped.
#[derive(Debug, Default)]
struct Admission {
    open: usize,
    reserve: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// One admitted connection's place.
struct Slot {
    admission: Arc<Mutex<Admission>>,
    source: IpAddr,
    reserved: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut a = self.admission.lock().unwrap_or_else(|p| p.into_inner());
        if self.reserved {
            a.reserve = a.reserve.saturating_sub(1);
        } else {
            a.open = a.open.saturating_sub(1);
        }
        if let Some(n) = a.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                a.per_source.remove(&self.source);
            }
        }
    }
}

/// Admit a connection from `source`, or say why not. The per-source map
/// holds at most `max_connections + local_reserve` entries (one per open
/// connection at worst).
fn admit(
    admission: &Arc<Mutex<Admission>>,
    limits: &AdminLimits,
    source: IpAddr,
) -> Result<Slot, AdminRefusal> {
    let source = source.to_canonical();
    let local = is_this_host(source);
    let mut a = admission.lock().unwrap_or_else(|p| p.into_inner());
    let from_source = a.per_source.get(&source).copied().unwrap_or(0);
    if !local && from_source >= limits.max_connections_per_source {
        return Err(AdminRefusal::PerSource);
    }
    let reserved = if a.open < limits.max_connections {
        a.open += 1;
        false
    } else if local && a.reserve < limits.local_reserve {
        a.reserve += 1;
        true
    } else {
        return Err(AdminRefusal::MaxConnections);
    };
    *a.per_source.entry(source).or_insert(0) += 1;
    Ok(Slot {
        admission: admission.clone(),
        source,
        reserved,
    })
}

/// Serve admin requests on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    info!(addr = ?listener.local_addr().ok(), "admin server listening");
    let limits = admin.limits;
    let admission = Arc::new(Mutex::new(Admission::default()));
    let on_accept = |tcp: tokio::net::TcpStream, peer: std::net::SocketAddr| {
        let slot = match admit(&admission, &limits, peer.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                admin.metrics.rejected(reason);
                static REFUSED: LogLimiter = crate::ratelog::per_kind();
                if let Some(suppressed) = REFUSED.allow() {
                    info!(client.addr = %peer, reason = reason.as_str(), suppressed, "admin connection refused");
                }
                return;
            }
        };
        let admin = admin.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _slot = slot;
            // A connection that says nothing gives its place back fast;
            // hyper's header timeout bounds the rest of the request head.
            let mut first = [0u8; 1];
            match tokio::time::timeout(limits.first_byte_timeout, tcp.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(_) => {
                    admin.metrics.rejected(AdminRefusal::Silent);
                    debug!(client.addr = %peer, "admin connection sent nothing; closed");
                    return;
                }
            }
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&admin, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            let age = tokio::time::sleep(limits.max_connection_age);
            tokio::pin!(age);
            let drained = tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(client.addr = %peer, error = %e, "admin connection error");
                    }
                    true
                }
                _ = stop.cancelled() => false,
                _ = &mut age => false,
            };
            if !drained {
                // Finish the request in flight, then close; bounded too.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.header_timeout, conn).await;
            }
        });
    };
    let on_error = |e: &std::io::Error, pause: std::time::Duration| {
        warn!(error = %e, ?pause, "admin accept failed");
    };
    crate::sys::accept_loop(&listener, &shutdown, on_accept, on_error).await;
    tasks.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), tasks.wait()).await;
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => reply(status, JSON, body),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, e.to_string()),
    }
}

#[derive(Serialize)]
struct BackendJson<'a> {
    pool: &'a str,
    name: &'a str,
    addr: String,
    state: &'a str,
    weight: u32,
    active_connections: u64,
    /// 0: no cap.
    max_connections: u64,
    at_cap: bool,
    /// Slow start: share of new clients over the full share (1: not ramping).
    slow_start_ratio: f64,
    last_check: Option<CheckJson<'a>>,
}

#[derive(Serialize)]
struct PoolJson<'a> {
    name: &'a str,
    backends_in_rotation: usize,
    admission: AdmissionJson,
    rebalance: RebalanceJson,
}

#[derive(Serialize)]
struct RebalanceJson {
    /// `rebalance.after` (null: not configured; by hand only).
    after_seconds: Option<f64>,
    rate: Option<u32>,
    /// The running run, or the last one (null: none yet).
    last: Option<RunJson>,
}

#[derive(Serialize)]
struct RunJson {
    /// `manual`, or `node` (with `node`: the node that came back).
    trigger: &'static str,
    node: Option<String>,
    running: bool,
    rate: u32,
    planned: u64,
    moved: u64,
    /// Planned clients that left before their turn.
    gone: u64,
    seconds: f64,
    /// Why it ended early, if it did.
    stopped: Option<&'static str>,
}

#[derive(Serialize)]
struct AdmissionJson {
    max_connect_rate: u32,
    queue_size: usize,
    queue_timeout_seconds: f64,
    queued: usize,
    pacing: bool,
}

impl<'a> From<&'a PoolStatus> for PoolJson<'a> {
    fn from(p: &'a PoolStatus) -> Self {
        PoolJson {
            name: &p.name,
            backends_in_rotation: p.backends_in_rotation,
            admission: AdmissionJson {
                max_connect_rate: p.max_connect_rate,
                queue_size: p.queue_size,
                queue_timeout_seconds: p.queue_timeout.as_secs_f64(),
                queued: p.queued,
                pacing: p.pacing,
            },
            rebalance: RebalanceJson {
                after_seconds: p.rebalance.map(|r| r.after.as_secs_f64()),
                rate: p.rebalance.map(|r| r.rate),
                last: p.last_rebalance.as_ref().map(|r| RunJson {
                    trigger: match r.trigger {
                        Trigger::Manual => "manual",
                        Trigger::Node(_) => "node",
                    },
                    node: match &r.trigger {
                        Trigger::Node(n) => Some(n.clone()),
                        Trigger::Manual => None,
                    },
                    running: r.running(),
                    rate: r.rate,
                    planned: r.planned,
                    moved: r.moved,
                    gone: r.gone,
                    seconds: r.seconds(),
                    stopped: r.stopped,
                }),
            },
        }
    }
}

#[derive(Serialize)]
struct CheckJson<'a> {
    result: &'a str,
    latency_seconds: f64,
    error: Option<&'a str>,
}

impl<'a> From<&'a BackendStatus> for BackendJson<'a> {
    fn from(b: &'a BackendStatus) -> Self {
        BackendJson {
            pool: &b.pool,
            name: &b.name,
            addr: b.addr.to_string(),
            state: b.state,
            weight: b.weight,
            active_connections: b.active,
            max_connections: b.max_connections,
            at_cap: b.at_cap,
            slow_start_ratio: b.slow_start_ratio,
            last_check: b.last_check.as_ref().map(|c| CheckJson {
                result: if c.ok { "ok" } else { "failed" },
                latency_seconds: c.seconds,
                error: c.error.as_deref(),
            }),
        }
    }
}

#[derive(Serialize)]
struct Started {
    status: &'static str,
    /// Clients the run will ask to move.
    planned: usize,
}

#[derive(Serialize)]
struct Message<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<Changes<'a>>,
}

#[derive(Serialize)]
struct Changes<'a> {
    listeners_added: &'a [String],
    listeners_removed: &'a [String],
    backends_added: &'a [String],
    backends_removed: &'a [String],
}

async fn route(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let method = req.method();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // A browser asked by another site's page to change something: refused
    // whatever the path (GETs change nothing and pass).
    if origin::cross_site(method, req.headers()) {
        return reply(
            StatusCode::FORBIDDEN,
            TEXT,
            "cross-site request refused (Origin / Sec-Fetch-Site)\n",
        );
    }
    let authorized = admin.token.as_ref().is_none_or(|token| {
        req.headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credentials)
            .is_some_and(|p| token.matches(p.as_bytes()))
    });
    if let (false, ["api", ..]) = (authorized, segments.as_slice()) {
        return unauthorized(TEXT, "bearer token required\n");
    }
    match (method, segments.as_slice()) {
        // The status page: the proxy's; a broker has none.
        (&Method::GET, [""]) => match &admin.role {
            Role::Proxy(p) => {
                let page = status::Page {
                    refresh: status::Page::refresh_from(query_param(&req, "refresh")),
                    token_required: admin.token.is_some(),
                };
                if authorized {
                    let snapshot = status::Snapshot::of(p);
                    reply(StatusCode::OK, HTML, status::render(&page, Some(&snapshot)))
                } else {
                    // Like /api/v1/*: no data without the token, only the
                    // form that asks for it.
                    unauthorized(HTML, status::render(&page, None))
                }
            }
            Role::Broker { .. } => not_found(),
        },
        (&Method::GET, ["metrics"]) => {
            // OpenMetrics for scrapers that ask for it (Prometheus does),
            // the classic text format for everyone else.
            let wants_open_metrics = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            if wants_open_metrics {
                reply(
                    StatusCode::OK,
                    OPEN_METRICS,
                    crate::metrics::encode(&admin.registry),
                )
            } else {
                reply(
                    StatusCode::OK,
                    PROMETHEUS_TEXT,
                    crate::metrics::encode_prometheus(&admin.registry),
                )
            }
        }
        (&Method::GET, ["healthz"]) => reply(StatusCode::OK, TEXT, "ok\n"),
        (&Method::GET, ["readyz"]) => {
            let ready = match &admin.role {
                Role::Proxy(p) => p.ready(),
                Role::Broker { shutdown, .. } => !shutdown.is_cancelled(),
            };
            if ready {
                reply(StatusCode::OK, TEXT, "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n")
            }
        }
        (&Method::GET, ["api", "v1", "backends"]) => match &admin.role {
            Role::Proxy(p) => {
                let backends = p.backends();
                let out: Vec<BackendJson> = backends.iter().map(BackendJson::from).collect();
                json(StatusCode::OK, &out)
            }
            Role::Broker { .. } => not_found(),
        },
        (&Method::GET, ["api", "v1", "pools"]) => match &admin.role {
            Role::Proxy(p) => {
                let pools = p.pools();
                let out: Vec<PoolJson> = pools.iter().map(PoolJson::from).collect();
                json(StatusCode::OK, &out)
            }
            Role::Broker { .. } => not_found(),
        },
        (&Method::GET, ["api", "v1", "clients"]) => match &admin.role {
            Role::Proxy(p) => clients_route(p, |index| {
                let prefix = query_param(&req, "prefix")
                    .and_then(status::decode_segment)
                    .unwrap_or_default();
                let limit = match query_param(&req, "limit").map(str::parse::<usize>) {
                    None => 100,
                    Some(Ok(n)) if (1..=MAX_LIST).contains(&n) => n,
                    Some(_) => {
                        return error(StatusCode::BAD_REQUEST, format!("limit: 1 to {MAX_LIST}"));
                    }
                };
                let (list, more) = index.list(&prefix, limit);
                json(
                    StatusCode::OK,
                    &ClientList {
                        clients: list.iter().map(ClientJson::from).collect(),
                        more,
                    },
                )
            }),
            Role::Broker { .. } => not_found(),
        },
        (&Method::GET, ["api", "v1", "clients", id]) => match &admin.role {
            Role::Proxy(p) => clients_route(p, |index| {
                let Some(id) = status::decode_segment(id) else {
                    return not_found();
                };
                match index.get(&id) {
                    Some(c) => json(StatusCode::OK, &ClientJson::from(&c)),
                    None => error(
                        StatusCode::NOT_FOUND,
                        format!("no client {id:?} is connected"),
                    ),
                }
            }),
            Role::Broker { .. } => not_found(),
        },
        (&Method::POST, ["api", "v1", "clients", id, "disconnect"]) => match &admin.role {
            Role::Proxy(p) => clients_route(p, |index| {
                let Some(id) = status::decode_segment(id) else {
                    return not_found();
                };
                if index.disconnect(&id) {
                    info!(client_id = %id, "client disconnected by the admin API");
                    json(
                        StatusCode::OK,
                        &Message {
                            status: "disconnecting",
                            errors: Vec::new(),
                            changes: None,
                        },
                    )
                } else {
                    error(
                        StatusCode::NOT_FOUND,
                        format!("no client {id:?} is connected"),
                    )
                }
            }),
            Role::Broker { .. } => not_found(),
        },
        (&Method::POST, ["api", "v1", "pools", pool, "rebalance"]) => match &admin.role {
            Role::Proxy(p) => {
                let rate = match query_param(&req, "rate").map(str::parse::<u32>) {
                    None => None,
                    Some(Ok(r)) if (1..=defaults::MAX_REBALANCE_RATE).contains(&r) => Some(r),
                    Some(_) => {
                        return json(
                            StatusCode::BAD_REQUEST,
                            &Message {
                                status: "error",
                                errors: vec![format!(
                                    "rate: 1 to {} clients per second",
                                    defaults::MAX_REBALANCE_RATE
                                )],
                                changes: None,
                            },
                        );
                    }
                };
                let Some(pool) = status::decode_segment(pool) else {
                    return not_found();
                };
                match p.rebalance(&pool, rate) {
                    Ok(planned) => json(
                        StatusCode::ACCEPTED,
                        &Started {
                            status: "started",
                            planned,
                        },
                    ),
                    Err(e) => json(
                        match e {
                            RebalanceError::NoPool(_) => StatusCode::NOT_FOUND,
                            RebalanceError::Running(_) => StatusCode::CONFLICT,
                        },
                        &Message {
                            status: "error",
                            errors: vec![e.to_string()],
                            changes: None,
                        },
                    ),
                }
            }
            Role::Broker { .. } => not_found(),
        },
        (&Method::POST, ["api", "v1", "backends", name, action @ ("drain" | "enable")]) => {
            match &admin.role {
                Role::Proxy(p) => {
                    // ?disconnect=true|false&window=30s override the pool's
                    // drain_disconnect / drain_window.
                    let param = |key: &str| query_param(&req, key);
                    let window = match param("window").map(crate::config::parse_duration) {
                        Some(Ok(w)) => Some(w),
                        Some(Err(e)) => {
                            return json(
                                StatusCode::BAD_REQUEST,
                                &Message {
                                    status: "error",
                                    errors: vec![format!("window: {e}")],
                                    changes: None,
                                },
                            );
                        }
                        None => None,
                    };
                    let disconnect = match param("disconnect") {
                        Some("true") => Some(Some(
                            window.unwrap_or(crate::config::defaults::DRAIN_WINDOW),
                        )),
                        Some("false") => Some(None),
                        _ => window.map(Some),
                    };
                    let Some(name) = status::decode_segment(name) else {
                        return not_found();
                    };
                    if p.drain(&name, *action == "drain", disconnect) {
                        json(
                            StatusCode::OK,
                            &Message {
                                status: if *action == "drain" {
                                    "draining"
                                } else {
                                    "enabled"
                                },
                                errors: Vec::new(),
                                changes: None,
                            },
                        )
                    } else {
                        json(
                            StatusCode::NOT_FOUND,
                            &Message {
                                status: "error",
                                errors: vec![format!("no backend named {name:?}")],
                                changes: None,
                            },
                        )
                    }
                }
                Role::Broker { .. } => not_found(),
            }
        }
        (&Method::POST, ["api", "v1", "reload"]) => match &admin.role {
            Role::Proxy(p) => match p.reload_from_source().await {
                Ok(s) => json(
                    StatusCode::OK,
                    &Message {
                        status: "reloaded",
                        errors: Vec::new(),
                        changes: Some(Changes {
                            listeners_added: &s.listeners_added,
                            listeners_removed: &s.listeners_removed,
                            backends_added: &s.backends_added,
                            backends_removed: &s.backends_removed,
                        }),
                    },
                ),
                Err(e) => {
                    let errors = match &e {
                        ReloadError::Config(c) => c.0.iter().map(ToString::to_string).collect(),
                        other => vec![other.to_string()],
                    };
                    json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &Message {
                            status: "error",
                            errors,
                            changes: None,
                        },
                    )
                }
            },
            Role::Broker { .. } => not_found(),
        },
        // A known path asked with another method; anything else is 404.
        (_, ["" | "metrics" | "healthz" | "readyz"])
        | (_, ["api", "v1", "backends" | "pools" | "reload"])
        | (_, ["api", "v1", "backends", _, "drain" | "enable"])
        | (_, ["api", "v1", "pools", _, "rebalance"])
        | (_, ["api", "v1", "clients"])
        | (_, ["api", "v1", "clients", _])
        | (_, ["api", "v1", "clients", _, "disconnect"]) => {
            reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
        }
        _ => not_found(),
    }
}

/// Answer from the client index, or 404 saying it is off.
fn clients_route(
    p: &ProxyHandle,
    f: impl FnOnce(&ClientIndex) -> Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    match p.clients() {
        Some(index) => f(&index),
        None => error(
            StatusCode::NOT_FOUND,
            "the client index is off (admin.client_index = false)".into(),
        ),
    }
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json(
        status,
        &Message {
            status: "error",
            errors: vec![message],
            changes: None,
        },
    )
}

#[derive(Serialize)]
struct ClientList {
    clients: Vec<ClientJson>,
    /// More clients matched than `limit`.
    more: bool,
}

#[derive(Serialize)]
struct ClientJson {
    client_id: String,
    listener: String,
    address: String,
    sni: Option<String>,
    protocol: &'static str,
    backend: String,
    /// Unix time, seconds.
    connected_since: f64,
    bytes_in: u64,
    bytes_out: u64,
    tls_resumed: bool,
}

impl From<&ClientInfo> for ClientJson {
    fn from(c: &ClientInfo) -> Self {
        ClientJson {
            client_id: c.client_id.clone(),
            listener: c.listener.clone(),
            address: c.peer.to_string(),
            sni: c.sni.clone(),
            protocol: c.protocol.as_str(),
            backend: c.backend.clone(),
            connected_since: c
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            tls_resumed: c.resumed,
        }
    }
}

/// A query parameter's value (not percent-decoded: names, numbers and
/// durations need none).
fn query_param<'r, B>(req: &'r Request<B>, key: &str) -> Option<&'r str> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The credentials of an `Authorization` value in the `Bearer` scheme,
/// whose name is case-insensitive (RFC 9110 §11.1; RFC 6750 §2.1).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_matches(' '))
}

/// 401 with `WWW-Authenticate: Bearer`.
fn unauthorized(content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = reply(StatusCode::UNAUTHORIZED, content_type, body);
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer"),
    );
    r
}

fn not_found() -> Response<Full<Bytes>> {
    reply(StatusCode::NOT_FOUND, TEXT, "not found\n")
}

/// `mqttlb health URL`: GET an admin URL (plain HTTP) and succeed on 200.
/// For container health checks, where there is no shell or curl.
pub fn probe(url: &str, timeout: std::time::Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let Some(free) = head.get_mut(n..) else {
            break;
        };
        match s.read(free) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
    let status = std::str::from_utf8(head.get(..n).unwrap_or_default()).unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code == "200" {
        Ok(())
    } else {
        Err(format!("{url}: HTTP status {code:?}"))
    }
}

/// How an admin server is set up: where, who may use the API, its bounds.
#[derive(Clone, Debug, Default)]
pub struct AdminSettings {
    pub addr: Option<std::net::SocketAddr>,
    /// Bearer token for `/api/v1/…`; `None` leaves the API open.
    pub token: Option<crate::secret::Secret>,
    pub limits: AdminLimits,
}

/// A running admin server: its address and its thread.
pub struct AdminServer {
    pub addr: std::net::SocketAddr,
    pub thread: std::thread::JoinHandle<()>,
}

/// Start the admin server of the proxy, the broker or the demo, when an
/// address is configured: registers its own metrics in `registry`, warns
/// when the API is reachable beyond this host without a token, and serves
/// on its own thread until `shutdown`. `listener` is a socket the caller
/// already holds (handed over by the process this one replaces); without
/// it, `settings.addr` is bound.
pub fn start(
    settings: AdminSettings,
    mut registry: Registry,
    role: Role,
    shutdown: &CancellationToken,
    listener: Option<std::net::TcpListener>,
) -> std::io::Result<Option<AdminServer>> {
    let Some(addr) = settings.addr else {
        return Ok(None);
    };
    if !addr.ip().is_loopback() && settings.token.is_none() {
        warn!(
            addr = %addr,
            "the admin API is reachable beyond this host without a token: set admin.token_file (proxy) or broker.admin_token_file"
        );
    }
    let metrics = AdminMetrics::register(&mut registry);
    let mut admin = Admin::new(Arc::new(registry), role);
    admin.token = settings.token;
    admin.limits = settings.limits;
    admin.metrics = metrics;
    let listener = match listener {
        Some(l) => l,
        None => crate::sys::bind_tcp_std(addr, 128)?,
    };
    let (addr, thread) = spawn_thread_on(listener, Arc::new(admin), shutdown.clone())?;
    info!(addr = %addr, "admin API on http://{addr}/");
    Ok(Some(AdminServer { addr, thread }))
}

/// Run the admin server on its own thread and single-threaded runtime,
/// isolated from the data path's workers, on a socket bound by the caller
/// (or handed over by the process this one replaces). Returns once it
/// serves; it stops when `shutdown` is cancelled.
fn spawn_thread_on(
    listener: std::net::TcpListener,
    admin: Arc<Admin>,
    shutdown: CancellationToken,
) -> std::io::Result<(std::net::SocketAddr, std::thread::JoinHandle<()>)> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("mqttlb-admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        let local = listener.local_addr().unwrap_or(addr);
                        let _ = tx.send(Ok(local));
                        serve(listener, admin, shutdown).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    match rx.recv() {
        Ok(Ok(local)) => Ok((local, handle)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other("admin thread ended before binding")),
    }
}
