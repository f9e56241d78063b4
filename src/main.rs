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
use mqttlb::admin::{AdminServer, AdminSettings, Role};
use mqttlb::config::ConfigErrors;
use mqttlb::demo::{Demo, DemoError, DemoOptions};
use mqttlb::launch::{BrokerArgs, LaunchError, ProxyArgs, ProxyLaunch};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::error;

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
        Command::Certs { out, hosts } => ExitCode::from(mqttlb::certs::main(&out, &hosts)),
        Command::Check { config } => match mqttlb::check::check(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(&e),
        },
        Command::Proxy(args) => run_proxy(args, cli.log_format),
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

fn run_broker(args: BrokerArgs) -> ExitCode {
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => return config_failure(&e),
    };
    mqttlb::launch::raise_nofile();
    let Some(runtime) = mqttlb::launch::runtime(0) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        match mqttlb::launch::broker(config) {
            Ok(broker) => {
                tokio::spawn(mqttlb::launch::on_signals(broker.shutdown.clone(), None));
                broker.run().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!(error = %e, "cannot start");
                ExitCode::FAILURE
            }
        }
    })
}

fn run_demo(opts: DemoOptions, admin: std::net::SocketAddr, failover: bool) -> ExitCode {
    mqttlb::launch::raise_nofile();
    let Some(runtime) = mqttlb::launch::runtime(0) else {
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
        let settings = AdminSettings {
            addr: Some(admin),
            ..AdminSettings::default()
        };
        let admin = match start_admin(settings, registry, role, &shutdown) {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => return ExitCode::FAILURE,
        };
        let admin = admin.addr;
        println!("{}", demo.instructions());
        println!(
            "Admin API: http://{admin}/api/v1/backends (nodes as the proxy sees them), http://{admin}/metrics"
        );
        tokio::spawn(mqttlb::launch::on_signals(shutdown.clone(), None));
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

fn run_proxy(args: ProxyArgs, log_format: LogFormat) -> ExitCode {
    let (config, source) = match args.load() {
        Ok(c) => c,
        Err(e) => return config_failure(&e),
    };
    // Before any thread starts (the variables are removed).
    let inherited = match mqttlb::upgrade::systemd_listeners() {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "cannot use the sockets passed by systemd");
            return ExitCode::FAILURE;
        }
    };
    mqttlb::launch::raise_nofile();
    let Some(runtime) = mqttlb::launch::runtime(config.limits.worker_threads) else {
        return ExitCode::FAILURE;
    };
    let launch = ProxyLaunch {
        source,
        inherited,
        takeover: args.takeover,
        // The access log follows the process's log format.
        access_format: match log_format {
            LogFormat::Text => mqttlb::accesslog::Format::Text,
            LogFormat::Json => mqttlb::accesslog::Format::Json,
        },
        ..ProxyLaunch::new(config)
    };
    runtime.block_on(async move {
        match mqttlb::launch::proxy(launch).await {
            Ok(proxy) => {
                tokio::spawn(mqttlb::launch::on_signals(
                    proxy.shutdown.clone(),
                    Some(proxy.handle.clone()),
                ));
                proxy.run().await;
                ExitCode::SUCCESS
            }
            Err(LaunchError::Config(e)) => config_failure(&e),
            Err(e) => {
                error!(error = %e, "cannot start");
                ExitCode::FAILURE
            }
        }
    })
}

/// The admin server of the broker or the demo.
fn start_admin(
    settings: AdminSettings,
    registry: Registry,
    role: Role,
    shutdown: &CancellationToken,
) -> Result<Option<AdminServer>, ExitCode> {
    mqttlb::admin::start(settings, registry, role, shutdown, None).map_err(|e| {
        error!(error = %e, "cannot start the admin server");
        shutdown.cancel();
        ExitCode::FAILURE
    })
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // rustls warns about every client that sends an IP address as SNI
    // (mosquitto_pub -h 127.0.0.1 does): client noise, not an operator's
    // concern, so rustls logs only errors unless RUST_LOG says otherwise.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    // Colours only for a person at a terminal, and not under NO_COLOR
    // (no-color.org): a file or the journal gets plain text. It also keeps
    // the fields each connection's span stores (formatted once, held for
    // the connection's life) under 128 bytes: with escape codes they take
    // a 256-byte block (docs/performance.md, issue 24).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
