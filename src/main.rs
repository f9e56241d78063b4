//! The `mqttlb` command: parses arguments, calls the library, maps results
//! to exit codes (0 ok, 64 bad usage or invalid config, 1 runtime failure).

// The library's rule, here too (see lib.rs).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mqttlb::admin::{Admin, Role};
use mqttlb::broker::Broker;
use mqttlb::certs::{CLIENT_CN, DevCerts};
use mqttlb::config::broker::{BrokerConfig, BrokerOverrides};
use mqttlb::config::{Config, ConfigErrors, Overrides};
use mqttlb::demo::{Demo, DemoError, DemoOptions};
use mqttlb::proxy::{Proxy, ProxyHandle};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "mqttlb",
    version,
    about = "TLS-offloading, MQTT-aware load balancer for MQTT broker clusters"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Terminate TLS, read each client's CONNECT and forward it to a broker node.
    Proxy(ProxyArgs),
    /// Write a development CA, server and client certificate (never for production).
    Certs {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS name or IP address for the server certificate (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Run a minimal MQTT broker node (optionally meshed with peers).
    Broker(BrokerArgs),
    /// Start meshed broker nodes and the TLS proxy in front of them, in one process.
    Demo {
        /// Broker nodes to start.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Directory for certificates and the generated proxy config.
        #[arg(long, default_value = "mqttlb-demo")]
        dir: PathBuf,
        /// Address of the TLS proxy.
        #[arg(long, default_value = "127.0.0.1:8883")]
        listen: std::net::SocketAddr,
        /// Address of the admin API (metrics, backends, drain).
        #[arg(long, default_value = "127.0.0.1:9100")]
        admin: std::net::SocketAddr,
        /// Run the failover walk-through: a publisher and a subscriber
        /// through the proxy, the publisher's node is stopped and started
        /// again, and every message is accounted for; then exit (0: none
        /// lost).
        #[arg(long)]
        failover: bool,
    },
    /// GET an admin URL and exit 0 on HTTP 200 (container health checks).
    Health {
        /// e.g. http://127.0.0.1:9100/healthz
        url: String,
        /// Give up after this long.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Validate a proxy or broker configuration file: exit 0, or print every
    /// problem and exit 64.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Load generator: MQTT 3.1.1/5.0 over TCP or TLS (conn, pub, sub,
    /// pubsub, handshake), and `bench calibrate` for `mqttlb estimate`.
    Bench(Box<mqttlb::bench::BenchArgs>),
    /// Read the OS limits that cap connections and throughput, and say what
    /// to change (exit 1 when something would stop the requested load).
    Doctor(mqttlb::doctor::DoctorArgs),
    /// Estimate CPU cores and memory for the proxy and the broker from a
    /// workload, using a calibration measured by `mqttlb bench calibrate`.
    Estimate(mqttlb::estimate::EstimateArgs),
}

#[derive(clap::Args)]
struct BrokerArgs {
    /// Configuration file (TOML, `[broker]` table); flags override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address [default: 0.0.0.0:1883].
    #[arg(long)]
    listen: Option<String>,
    /// Another node of the mesh (repeatable); replaces `peers`.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Admin HTTP listener (/metrics, /healthz, /readyz).
    #[arg(long)]
    admin: Option<String>,
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// Configuration file (TOML); flags override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address of the first listener [default: 0.0.0.0:8883].
    #[arg(long)]
    listen: Option<String>,
    /// PEM certificate chain of the first listener.
    #[arg(long)]
    cert: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    key: Option<String>,
    /// CA bundle for client certificates; implies client_auth = "required".
    #[arg(long)]
    client_ca: Option<String>,
    /// Broker node address (repeatable); replaces the first pool's servers.
    #[arg(long = "backend")]
    backends: Vec<String>,
    /// round-robin | least-connections | client-id
    #[arg(long)]
    strategy: Option<String>,
    /// off | v1 | v2
    #[arg(long)]
    proxy_protocol: Option<String>,
    /// Admin HTTP listener (/metrics, /healthz, /readyz, /api/v1/…).
    #[arg(long)]
    admin: Option<String>,
    /// Unix socket on which this proxy hands its listening sockets to a
    /// new process (`upgrade.socket`).
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<String>,
    /// Take the listening sockets over from the proxy serving
    /// `upgrade.socket` at PATH; once this process accepts, the old one
    /// stops accepting, drains and exits.
    #[arg(long, value_name = "PATH")]
    takeover: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Usage errors exit 64 (the documented CLI contract), not clap's default 2; --help and
    // --version still exit 0.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(cli.log_format);
    match cli.command {
        Command::Certs { out, hosts } => {
            match DevCerts::generate(&hosts, CLIENT_CN).and_then(|c| c.write(&out)) {
                Ok(()) => {
                    println!(
                        "wrote {0}/ca.pem ca.key server.pem server.key client.pem client.key (development only)",
                        out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mqttlb certs: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match mqttlb::check::check(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(&e),
        },
        Command::Proxy(args) => run_proxy(args),
        Command::Broker(args) => run_broker(args),
        Command::Health { url, timeout } => match mqttlb::admin::probe(&url, timeout) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mqttlb health: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo {
            nodes,
            dir,
            listen,
            admin,
            failover,
        } => run_demo(DemoOptions { nodes, dir, listen }, admin, failover),
        Command::Bench(args) => ExitCode::from(mqttlb::bench::main(*args)),
        Command::Doctor(args) => ExitCode::from(mqttlb::doctor::main(args)),
        Command::Estimate(args) => ExitCode::from(mqttlb::estimate::main(args)),
    }
}

fn config_failure(e: &ConfigErrors) -> ExitCode {
    for err in &e.0 {
        eprintln!("error: {err}");
    }
    ExitCode::from(EXIT_USAGE)
}

/// The multi-threaded runtime; `worker_threads` 0 lets tokio size it from
/// the CPUs this process may use (or `TOKIO_WORKER_THREADS`).
fn runtime(worker_threads: usize) -> Option<tokio::runtime::Runtime> {
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
fn log_nofile() {
    match mqttlb::sys::raise_nofile() {
        Ok(l) => {
            info!(
                soft_before = l.soft_before,
                soft = l.soft,
                hard = l.hard,
                "open-file limit"
            );
            match mqttlb::sys::reserve_fd_table(l.soft) {
                Ok(Some(fd)) => debug!(held = fd, "file-descriptor table grown ahead"),
                Ok(None) => {}
                Err(e) => warn!(error = %e, "could not grow the file-descriptor table ahead"),
            }
        }
        Err(e) => warn!(error = %e, "could not raise the open-file limit"),
    }
}

fn run_broker(args: BrokerArgs) -> ExitCode {
    let overrides = BrokerOverrides {
        listen: args.listen,
        peers: args.peers,
        admin: args.admin,
    };
    let config = match BrokerConfig::load(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => return config_failure(&e),
    };
    log_nofile();
    let mut registry = Registry::default();
    let admin_addr = config.admin;
    let admin_token = config.admin_token.clone();
    let broker = Broker::new(config, &mut registry);
    let shutdown = CancellationToken::new();
    let role = Role::Broker {
        broker: broker.clone(),
        shutdown: shutdown.clone(),
    };
    let _admin = match start_admin(
        admin_addr,
        admin_token,
        mqttlb::admin::AdminLimits::default(),
        registry,
        role,
        &shutdown,
        None,
    ) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let Some(runtime) = runtime(0) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let listen = broker.config.listen;
        let listener = match mqttlb::sys::bind_tcp(listen, 1024) {
            Ok(l) => l,
            Err(e) => {
                error!(addr = %listen, error = %e, "cannot bind");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(signals(shutdown.clone(), None));
        mqttlb::broker::serve(broker, listener, shutdown).await;
        ExitCode::SUCCESS
    })
}

fn run_demo(opts: DemoOptions, admin: std::net::SocketAddr, failover: bool) -> ExitCode {
    log_nofile();
    let Some(runtime) = runtime(0) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let mut registry = Registry::default();
        let demo = match Demo::start(&opts, &mut registry, shutdown.clone()).await {
            Ok(d) => d,
            Err(DemoError::Config(e)) => return config_failure(&e),
            Err(e) => {
                error!(error = %e, "cannot start the demo");
                return ExitCode::FAILURE;
            }
        };
        let role = Role::Proxy(demo.handle.clone());
        let admin = match mqttlb::admin::spawn_thread(
            admin,
            Arc::new(Admin::new(Arc::new(registry), role)),
            shutdown.clone(),
        ) {
            Ok((local, _thread)) => local,
            Err(e) => {
                error!(addr = %admin, error = %e, "cannot start the admin server");
                shutdown.cancel();
                return ExitCode::FAILURE;
            }
        };
        println!("{}", demo.instructions());
        println!(
            "Admin API: http://{admin}/api/v1/backends (nodes as the proxy sees them), http://{admin}/metrics"
        );
        tokio::spawn(signals(shutdown.clone(), None));
        let code = if failover {
            println!();
            let ok = mqttlb::walkthrough::failover(&demo, |line| println!("{line}")).await;
            shutdown.cancel();
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        } else {
            ExitCode::SUCCESS
        };
        demo.wait().await;
        code
    })
}

fn run_proxy(args: ProxyArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen,
        cert: args.cert,
        key: args.key,
        client_ca: args.client_ca,
        backends: args.backends,
        strategy: args.strategy,
        proxy_protocol: args.proxy_protocol,
        admin: args.admin,
        upgrade_socket: args.upgrade_socket,
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => return config_failure(&e),
    };
    // Before any thread starts (the variables are removed).
    let mut inherited = match mqttlb::upgrade::systemd_listeners() {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "cannot use the sockets passed by systemd");
            return ExitCode::FAILURE;
        }
    };
    log_nofile();
    let upgrade = config.upgrade.clone();
    let admin_addr = config.admin;
    let admin_token = config.admin_token.clone();
    let admin_limits = config.admin_limits;
    let worker_threads = config.limits.worker_threads;
    let mut registry = Registry::default();
    let mut proxy = match Proxy::build(config, &mut registry) {
        Ok(p) => p,
        Err(e) => return config_failure(&e),
    };
    if let Some(path) = args.config {
        proxy = proxy.with_source(path, overrides);
    }
    // Everything that can fail on this side is done: take the sockets.
    let mut handover = None;
    let mut admin_socket = None;
    if let Some(path) = &args.takeover {
        let timeout = upgrade
            .as_ref()
            .map_or(mqttlb::config::defaults::UPGRADE_TIMEOUT, |u| u.timeout);
        match mqttlb::upgrade::take_over(path, timeout) {
            Ok((received, h)) => {
                info!(from = %path.display(), listeners = received.listeners.len(), "took over the listening sockets");
                inherited.extend(received.listeners);
                admin_socket = received.admin.filter(|(a, _)| Some(*a) == admin_addr);
                handover = Some(h);
            }
            Err(e) => {
                error!(from = %path.display(), error = %e, "cannot take over; the running proxy keeps serving");
                return ExitCode::FAILURE;
            }
        }
    }
    let admin_listener = match (admin_addr, admin_socket) {
        (_, Some((_, l))) => Some(l),
        (Some(addr), None) => match mqttlb::sys::bind_tcp_std(addr, 128) {
            Ok(l) => Some(l),
            Err(e) => {
                error!(addr = %addr, error = %e, "cannot start the admin server");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => None,
    };
    let mut admin_dup = admin_listener
        .as_ref()
        .and_then(|l| socket2::SockRef::from(l).try_clone().ok());
    let handle = proxy.handle();
    let shutdown = CancellationToken::new();
    let _admin = match start_admin(
        admin_addr,
        admin_token,
        admin_limits,
        registry,
        Role::Proxy(handle.clone()),
        &shutdown,
        admin_listener,
    ) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let Some(runtime) = runtime(worker_threads) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let listeners = match proxy.bind_with(inherited) {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot bind");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(signals(shutdown.clone(), Some(handle.clone())));
        // Not taking over: the upgrade socket must be ours before serving.
        // Taking over: the old process owns it until it hears we serve.
        let upgrade_now = upgrade.as_ref().filter(|_| handover.is_none());
        if let Some(u) = upgrade_now {
            if let Err(e) = handle.serve_upgrades(u, admin_dup.take(), false, shutdown.clone()) {
                error!(error = %e, "cannot offer the listening sockets for upgrades");
                return ExitCode::FAILURE;
            }
        }
        let running = proxy.start(listeners);
        let replacing = handover.is_some();
        if let Some(h) = handover {
            match tokio::task::spawn_blocking(move || h.confirm()).await {
                Ok(Ok(())) => info!("serving; the previous process stops accepting and drains"),
                Ok(Err(e)) => {
                    warn!(error = %e, "the previous process did not acknowledge the takeover")
                }
                Err(e) => warn!(error = %e, "confirming the takeover failed"),
            }
            if let Some(u) = &upgrade {
                if let Err(e) = handle.serve_upgrades(u, admin_dup, true, shutdown.clone()) {
                    error!(error = %e, "cannot offer the listening sockets for upgrades");
                }
            }
        }
        // systemd Type=notify: ready; after a takeover this process is the
        // service's main process from now on.
        let state = match replacing {
            true => format!("MAINPID={}\nREADY=1", std::process::id()),
            false => "READY=1".to_string(),
        };
        if let Err(e) = mqttlb::upgrade::sd_notify(&state) {
            warn!(error = %e, "cannot notify the service manager");
        }
        running.run_until(shutdown).await;
        ExitCode::SUCCESS
    })
}

/// Start the admin server thread when an address is configured.
fn start_admin(
    addr: Option<std::net::SocketAddr>,
    token: Option<mqttlb::secret::Secret>,
    limits: mqttlb::admin::AdminLimits,
    registry: Registry,
    role: Role,
    shutdown: &CancellationToken,
    listener: Option<std::net::TcpListener>,
) -> Result<Option<std::thread::JoinHandle<()>>, ExitCode> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    if !addr.ip().is_loopback() && token.is_none() {
        warn!(
            addr = %addr,
            "the admin API is reachable beyond this host without a token: set admin.token_file (proxy) or broker.admin_token_file"
        );
    }
    let mut registry = registry;
    let metrics = mqttlb::admin::AdminMetrics::register(&mut registry);
    let mut admin = Admin::new(Arc::new(registry), role);
    admin.token = token;
    admin.limits = limits;
    admin.metrics = metrics;
    let admin = Arc::new(admin);
    let spawned = match listener {
        Some(l) => mqttlb::admin::spawn_thread_on(l, admin, shutdown.clone()),
        None => mqttlb::admin::spawn_thread(addr, admin, shutdown.clone()),
    };
    match spawned {
        Ok((local, thread)) => {
            info!(addr = %local, "admin API on http://{local}/");
            Ok(Some(thread))
        }
        Err(e) => {
            error!(addr = %addr, error = %e, "cannot start the admin server");
            Err(ExitCode::FAILURE)
        }
    }
}

/// Stop on SIGTERM / SIGINT (graceful: the drain deadline bounds it);
/// SIGHUP reloads the proxy's configuration and certificates.
async fn signals(shutdown: CancellationToken, proxy: Option<ProxyHandle>) {
    let name = mqttlb::signals::wait_for_stop(|| {
        let proxy = proxy.clone();
        async move {
            match proxy {
                // Outcome logged and counted by the reload itself.
                Some(p) => drop(p.reload_from_source().await),
                None => info!("SIGHUP ignored: nothing to reload"),
            }
        }
    })
    .await;
    info!(signal = name, "shutting down: no new connections, draining");
    shutdown.cancel();
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // rustls warns about every client that sends an IP address as SNI
    // (mosquitto_pub -h 127.0.0.1 does): client noise, not an operator's
    // concern, so rustls logs only errors unless RUST_LOG says otherwise.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
