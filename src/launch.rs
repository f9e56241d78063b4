//! The proxy's start-up sequence as one library call, [`proxy`], so that
//! it runs the same in `mqttlb proxy` and in an in-process test: sockets
//! inherited from systemd or taken over from the running proxy, the admin
//! server, the upgrade socket and the readiness notification.
//!
//! `main.rs` keeps only what is process-wide: it parses the command line,
//! collects systemd's sockets before any thread starts
//! ([`crate::upgrade::systemd_listeners`] removes the environment
//! variables), builds the runtime and installs the signal handlers.
//!
//! This module sits above `admin`, not inside `proxy`: it starts the admin
//! server, which administers the proxy (tests/layering.rs).
//!
//! The order is the hand-over contract (docs/upgrade.md, ARCHITECTURE.md
//! "Binary upgrade"); each step is done only when every step before it
//! succeeded, so a new process that fails leaves the running one serving:
//! 1. build the proxy: every file loaded, everything that can fail on this
//!    side checked;
//! 2. take the sockets over, when asked (the old process now waits for a
//!    confirmation, at most `upgrade.timeout`);
//! 3. the admin server, on its own thread, on the handed-over admin socket
//!    when there is one for the configured address;
//! 4. the listeners, on inherited sockets where their name or address
//!    matches, bound afresh otherwise; a fresh start owns the upgrade
//!    socket before serving;
//! 5. accept; after a takeover, confirm — the old process stops accepting
//!    and drains, and hands its session-ticket keys over, which this one
//!    adopts — and only then own the upgrade socket;
//! 6. tell the service manager `READY=1` (and `MAINPID` after a takeover).

use std::net::SocketAddr;
use std::path::PathBuf;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::admin::{AdminServer, AdminSettings, Role};
use crate::broker::Broker;
use crate::config::broker::{BrokerConfig, BrokerOverrides};
use crate::config::{Config, ConfigErrors, Overrides};
use crate::proxy::{Proxy, ProxyHandle, Running};
use crate::upgrade::InheritedListener;

/// `mqttlb proxy`'s command line.
#[derive(clap::Args, Debug, Default)]
pub struct ProxyArgs {
    /// Configuration file (TOML); flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address of the first listener [default: 0.0.0.0:8883].
    #[arg(long)]
    pub listen: Option<String>,
    /// PEM certificate chain of the first listener.
    #[arg(long)]
    pub cert: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    pub key: Option<String>,
    /// CA bundle for client certificates; implies client_auth = "required".
    #[arg(long)]
    pub client_ca: Option<String>,
    /// Broker node address (repeatable); replaces the first pool's servers.
    #[arg(long = "backend")]
    pub backends: Vec<String>,
    /// round-robin | least-connections | client-id
    #[arg(long)]
    pub strategy: Option<String>,
    /// off | v1 | v2
    #[arg(long)]
    pub proxy_protocol: Option<String>,
    /// Admin HTTP listener (/metrics, /healthz, /readyz, /api/v1/…).
    #[arg(long)]
    pub admin: Option<String>,
    /// Unix socket on which this proxy hands its listening sockets to a
    /// new process (`upgrade.socket`).
    #[arg(long, value_name = "PATH")]
    pub upgrade_socket: Option<String>,
    /// Take the listening sockets over from the proxy serving
    /// `upgrade.socket` at PATH; once this process accepts, the old one
    /// stops accepting, drains and exits.
    #[arg(long, value_name = "PATH")]
    pub takeover: Option<PathBuf>,
}

/// A configuration and where a reload reads it again.
pub type Loaded = (Config, Option<(PathBuf, Overrides)>);

impl ProxyArgs {
    /// The configuration the file and the flags describe, and its source
    /// for reloads.
    pub fn load(&self) -> Result<Loaded, ConfigErrors> {
        let overrides = Overrides {
            listen: self.listen.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: self.client_ca.clone(),
            backends: self.backends.clone(),
            strategy: self.strategy.clone(),
            proxy_protocol: self.proxy_protocol.clone(),
            admin: self.admin.clone(),
            upgrade_socket: self.upgrade_socket.clone(),
        };
        let config = Config::load(self.config.as_deref(), &overrides)?;
        Ok((config, self.config.clone().map(|path| (path, overrides))))
    }
}

/// `mqttlb broker`'s command line.
#[derive(clap::Args, Debug, Default)]
pub struct BrokerArgs {
    /// Configuration file (TOML, `[broker]` table); flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address [default: 0.0.0.0:1883].
    #[arg(long)]
    pub listen: Option<String>,
    /// Another node of the mesh (repeatable); replaces `peers`.
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// Admin HTTP listener (/metrics, /healthz, /readyz).
    #[arg(long)]
    pub admin: Option<String>,
}

impl BrokerArgs {
    pub fn load(&self) -> Result<BrokerConfig, ConfigErrors> {
        let overrides = BrokerOverrides {
            listen: self.listen.clone(),
            peers: self.peers.clone(),
            admin: self.admin.clone(),
        };
        BrokerConfig::load(self.config.as_deref(), &overrides)
    }
}

/// A broker node that serves: [`BrokerLaunched::run`] it until `shutdown`.
pub struct BrokerLaunched {
    pub broker: std::sync::Arc<Broker>,
    pub shutdown: CancellationToken,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    listener: tokio::net::TcpListener,
    _admin: Option<AdminServer>,
}

impl BrokerLaunched {
    pub async fn run(self) {
        crate::broker::serve(self.broker, self.listener, self.shutdown).await;
    }
}

/// Start a broker node and its admin server. Call inside the runtime.
pub fn broker(config: BrokerConfig) -> Result<BrokerLaunched, LaunchError> {
    let mut registry = Registry::default();
    let settings = AdminSettings {
        addr: config.admin,
        token: config.admin_token.clone(),
        ..AdminSettings::default()
    };
    let broker = Broker::new(config, &mut registry);
    let shutdown = CancellationToken::new();
    let role = Role::Broker {
        broker: broker.clone(),
        shutdown: shutdown.clone(),
    };
    let admin = crate::admin::start(settings, registry, role, &shutdown, None)
        .map_err(|e| LaunchError::Start(format!("cannot start the admin API: {e}")))?;
    let listen = broker.config.listen;
    let listener = crate::sys::bind_tcp(listen, 1024).map_err(|e| {
        shutdown.cancel();
        LaunchError::Start(format!("cannot bind {listen}: {e}"))
    })?;
    Ok(BrokerLaunched {
        addr: listener.local_addr().unwrap_or(listen),
        admin: admin.as_ref().map(|a| a.addr),
        broker,
        shutdown,
        listener,
        _admin: admin,
    })
}

/// What to start, and from what.
pub struct ProxyLaunch {
    pub config: Config,
    /// The file (and command-line overrides) a reload reads again.
    pub source: Option<(PathBuf, Overrides)>,
    /// Sockets systemd passed ([`crate::upgrade::systemd_listeners`]).
    pub inherited: Vec<InheritedListener>,
    /// Take the listening sockets over from the proxy serving this
    /// upgrade socket.
    pub takeover: Option<PathBuf>,
    /// Where to send the readiness notification.
    pub notify: Notify,
    /// The access log's format: the process's `--log-format`.
    pub access_format: crate::accesslog::Format,
}

/// Where the readiness notification goes.
#[derive(Clone, Debug, Default)]
pub enum Notify {
    /// `$NOTIFY_SOCKET`, when the service manager set it.
    #[default]
    FromEnv,
    /// This datagram socket (a test's, or an `sd_notify` stand-in).
    To(PathBuf),
    Off,
}

impl ProxyLaunch {
    pub fn new(config: Config) -> ProxyLaunch {
        ProxyLaunch {
            config,
            source: None,
            inherited: Vec::new(),
            takeover: None,
            notify: Notify::FromEnv,
            access_format: crate::accesslog::Format::Text,
        }
    }
}

/// Why the proxy did not start. Nothing is left running: the process
/// that was asked to hand over keeps serving.
#[derive(Debug)]
pub enum LaunchError {
    /// The configuration, or a file it names, is invalid (exit 64).
    Config(ConfigErrors),
    /// The machine refused: a socket, the takeover, the admin port
    /// (exit 1).
    Start(String),
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchError::Config(e) => {
                let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
                f.write_str(&lines.join("\n"))
            }
            LaunchError::Start(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for LaunchError {}

/// A proxy that serves: [`Launched::run`] it until `shutdown`.
pub struct Launched {
    pub handle: ProxyHandle,
    /// Cancel to stop accepting and drain (SIGTERM); cancelled by the
    /// proxy itself when a new process took its sockets over.
    pub shutdown: CancellationToken,
    /// The admin server's address, when it runs.
    pub admin: Option<SocketAddr>,
    /// Whether this process took over from another.
    pub took_over: bool,
    running: Running,
    // Detached on drop; the thread ends with `shutdown`.
    _admin: Option<AdminServer>,
}

impl Launched {
    /// Serve until `shutdown`, then drain (at most `drain_timeout`).
    pub async fn run(self) {
        self.running.run_until(self.shutdown).await;
    }
}

/// Start the proxy (steps in the module documentation). Call inside the
/// multi-threaded runtime that will serve it.
pub async fn proxy(launch: ProxyLaunch) -> Result<Launched, LaunchError> {
    let ProxyLaunch {
        config,
        source,
        mut inherited,
        takeover,
        notify,
        access_format,
    } = launch;
    let upgrade = config.upgrade.clone();
    let admin_settings = AdminSettings {
        addr: config.admin,
        token: config.admin_token.clone(),
        limits: config.admin_limits,
    };
    let mut registry = Registry::default();
    // 1. Everything that can fail on this side.
    let mut proxy = Proxy::build(config, &mut registry)
        .map_err(LaunchError::Config)?
        .with_access_format(access_format);
    if let Some((path, overrides)) = source {
        proxy = proxy.with_source(path, overrides);
    }

    // 2. The sockets of the running proxy.
    let mut handover = None;
    let mut admin_socket = None;
    if let Some(path) = &takeover {
        let timeout = upgrade
            .as_ref()
            .map_or(crate::config::defaults::UPGRADE_TIMEOUT, |u| u.timeout);
        let from = path.clone();
        let taken = tokio::task::spawn_blocking(move || crate::upgrade::take_over(&from, timeout))
            .await
            .map_err(|e| LaunchError::Start(format!("taking over: {e}")))?;
        let (received, h) = taken.map_err(|e| {
            LaunchError::Start(format!(
                "cannot take over from {}: {e}; the running proxy keeps serving",
                path.display()
            ))
        })?;
        info!(from = %path.display(), listeners = received.listeners.len(), "took over the listening sockets");
        inherited.extend(received.listeners);
        admin_socket = received
            .admin
            .filter(|(a, _)| Some(*a) == admin_settings.addr)
            .map(|(_, l)| l);
        handover = Some(h);
    }

    // 3. The admin server.
    let handle = proxy.handle();
    let shutdown = CancellationToken::new();
    let admin_listener = match (admin_settings.addr, admin_socket) {
        (_, Some(l)) => Some(l),
        (Some(addr), None) => Some(crate::sys::bind_tcp_std(addr, 128).map_err(|e| {
            LaunchError::Start(format!("cannot bind the admin API on {addr}: {e}"))
        })?),
        (None, None) => None,
    };
    // The upgrade socket offers a duplicate of the admin socket too.
    let mut admin_dup = admin_listener
        .as_ref()
        .and_then(|l| socket2::SockRef::from(l).try_clone().ok());
    let admin = crate::admin::start(
        admin_settings,
        registry,
        Role::Proxy(handle.clone()),
        &shutdown,
        admin_listener,
    )
    .map_err(|e| LaunchError::Start(format!("cannot start the admin API: {e}")))?;

    // 4. The listeners.
    let listeners = proxy.bind_with(inherited).map_err(|e| {
        shutdown.cancel();
        LaunchError::Start(format!("cannot bind: {e}"))
    })?;
    // Not taking over: the upgrade socket must be ours before serving.
    // Taking over: the old process owns it until it hears we serve.
    if let Some(u) = upgrade.as_ref().filter(|_| handover.is_none()) {
        handle
            .serve_upgrades(u, admin_dup.take(), false, shutdown.clone())
            .map_err(|e| {
                shutdown.cancel();
                LaunchError::Start(format!(
                    "cannot offer the listening sockets for upgrades: {e}"
                ))
            })?;
    }

    // 5. Accept; after a takeover, confirm, then own the upgrade socket.
    let running = proxy.start(listeners);
    let took_over = handover.is_some();
    if let Some(h) = handover {
        match tokio::task::spawn_blocking(move || h.confirm()).await {
            Ok(Ok(keys)) => {
                info!("serving; the previous process stops accepting and drains");
                // Its clients' tickets resume here from now on.
                handle.adopt_session_keys(&keys);
            }
            Ok(Err(e)) => {
                warn!(error = %e, "the previous process did not acknowledge the takeover")
            }
            Err(e) => warn!(error = %e, "confirming the takeover failed"),
        }
        if let Some(u) = &upgrade {
            // Serving already: a failure here costs the next upgrade, not
            // this one.
            if let Err(e) = handle.serve_upgrades(u, admin_dup, true, shutdown.clone()) {
                warn!(error = %e, "cannot offer the listening sockets for upgrades");
            }
        }
    }

    // 6. Ready; after a takeover this process is the service's main one.
    let state = match took_over {
        true => format!("MAINPID={}\nREADY=1", std::process::id()),
        false => "READY=1".to_string(),
    };
    let notified = match &notify {
        Notify::FromEnv => crate::upgrade::sd_notify(&state).map(drop),
        Notify::To(path) => crate::upgrade::notify_to(path.as_os_str(), &state),
        Notify::Off => Ok(()),
    };
    if let Err(e) = notified {
        warn!(error = %e, "cannot notify the service manager");
    }
    Ok(Launched {
        admin: admin.as_ref().map(|a| a.addr),
        handle,
        shutdown,
        took_over,
        running,
        _admin: admin,
    })
}

/// The multi-threaded runtime; `worker_threads` 0 lets tokio size it from
/// the CPUs this process may use (or `TOKIO_WORKER_THREADS`).
pub fn runtime(worker_threads: usize) -> Option<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    match builder.enable_all().build() {
        Ok(r) => Some(r),
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            None
        }
    }
}

/// Raise the open-file limit and grow the descriptor table to match, before
/// any thread starts (see `sys::reserve_fd_table`).
pub fn raise_nofile() {
    match crate::sys::raise_nofile() {
        Ok(l) => {
            info!(
                soft_before = l.soft_before,
                soft = l.soft,
                hard = l.hard,
                "open-file limit"
            );
            match crate::sys::reserve_fd_table(l.soft) {
                Ok(Some(fd)) => debug!(held = fd, "file-descriptor table grown ahead"),
                Ok(None) => {}
                Err(e) => warn!(error = %e, "could not grow the file-descriptor table ahead"),
            }
        }
        Err(e) => warn!(error = %e, "could not raise the open-file limit"),
    }
}

/// Stop on SIGTERM / SIGINT (graceful: the drain deadline bounds it);
/// SIGHUP reloads the proxy's configuration and certificates (and re-opens
/// its access log); SIGUSR1 only re-opens the access log (logrotate).
pub async fn on_signals(shutdown: CancellationToken, proxy: Option<ProxyHandle>) {
    let reopen_with = proxy.clone();
    let name = crate::signals::wait_for_stop(
        || {
            let proxy = proxy.clone();
            async move {
                match proxy {
                    // Outcome logged and counted by the reload itself.
                    Some(p) => drop(p.reload_from_source().await),
                    None => info!("SIGHUP ignored: nothing to reload"),
                }
            }
        },
        || {
            if let Some(p) = &reopen_with {
                p.reopen_logs();
            }
        },
    )
    .await;
    info!(signal = name, "shutting down: no new connections, draining");
    shutdown.cancel();
}
