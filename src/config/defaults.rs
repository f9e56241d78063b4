//! Defaults and bounds, in one place so the reference config
//! (`config/mqttlb.toml`) and the code agree.

use std::time::Duration;
pub const LISTEN_TLS: &str = "0.0.0.0:8883";
/// `[log] access`: on, to stderr, as NGINX and HAProxy log connections
/// by default; journald or the container runtime collects it.
pub const ACCESS_LOG: crate::accesslog::Destination = crate::accesslog::Destination::Stderr;
pub const ADMIN_LISTEN: &str = "127.0.0.1:9100";
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
pub const ADMIN_MAX_CONNECTIONS_PER_SOURCE: usize = 8;
pub const ADMIN_LOCAL_RESERVE: usize = 8;
/// Upper bound of the three admin connection counts.
pub const ADMIN_MAX_CONNECTIONS_LIMIT: u32 = 4096;
pub const ADMIN_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(10);
/// `[resolver]`: per query and name server, and its bounds.
pub const RESOLVER_TIMEOUT: Duration = Duration::from_secs(2);
pub const MIN_RESOLVER_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_RESOLVER_TIMEOUT: Duration = Duration::from_secs(30);
/// `resolver.nameservers`: at most this many.
pub const MAX_NAMESERVERS: usize = 8;
pub const DRAIN_WINDOW: Duration = Duration::from_secs(30);
/// `pool.*.slow_start`: at most an hour (a ramp longer than that leaves a
/// returned node idle while its peers carry its clients).
pub const MAX_SLOW_START: Duration = Duration::from_secs(3600);
pub const BACKLOG: u32 = 1024;
/// Upper bound of every duration in configuration and the admin API: 366
/// days, so that "1y" (365.25 days to humantime) is accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// [`MAX_DURATION`] as people write it (humantime would print months).
pub const MAX_DURATION_TEXT: &str = "366 days (\"366d\"; \"1y\" is accepted)";
/// Upper bound of `listener.accept_sockets`.
pub const MAX_ACCEPT_SOCKETS: u32 = 256;
/// Upper bound of the connection-rate limits (per second / per minute).
pub const MAX_RATE: u32 = 1_000_000;
/// Keys (source addresses, client ids) a rate limit tracks at most.
pub const RATE_LIMIT_KEYS: usize = 100_000;
/// Upper bound of `limits.worker_threads`.
pub const MAX_WORKER_THREADS: u64 = 1024;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_CONNECT_SIZE: usize = 64 * 1024;
pub const WS_PATH: &str = "/mqtt";
/// MQTT 3.1.1 and 5.0 name `mqtt`; MQTT 3.1 clients (and some old SDKs)
/// offer `mqttv3.1`.
pub const WS_SUBPROTOCOLS: &[&str] = &["mqtt", "mqttv3.1"];
pub const WS_UPGRADE_TIMEOUT: Duration = Duration::from_secs(5);
pub const WS_MAX_REQUEST_SIZE: usize = 8 * 1024;
pub const WS_MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// Upper bound of the WebSocket sizes: one hostile client can make the
/// proxy hold this much.
pub const WS_SIZE_CAP: usize = 16 * 1024 * 1024;
pub const KEEPALIVE_FACTOR: f64 = 1.5;
/// 1.5 × the largest keep-alive MQTT can express (65 535 s): by default
/// no live client is ever cut.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(98_303);
pub const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const CONNECT_ATTEMPTS: u32 = 3;
/// Brokers answer a CONNECT in milliseconds; a node that takes seconds
/// is stalled, and clients commonly give up after 5 to 30 s.
/// One ticket per full handshake: a device resumes one connection at a
/// time (rustls sends 2, for clients that open connections in parallel).
pub const SESSION_TICKETS: u8 = 1;
/// Certificates in a client's chain, leaf included (`max_client_chain`):
/// real device chains have two or three.
pub const MAX_CLIENT_CHAIN: u32 = 8;
/// Upper bound of `max_client_chain` (webpki's own depth limit is six
/// intermediates; longer chains can never verify).
pub const MAX_CLIENT_CHAIN_LIMIT: u32 = 16;
/// DER bytes of a client's chain (`max_client_chain_size`).
pub const MAX_CLIENT_CHAIN_SIZE: usize = 32 * 1024;
/// Upper bound of `max_client_chain_size`: rustls refuses handshake
/// messages over 64 KiB anyway.
pub const MAX_CLIENT_CHAIN_SIZE_LIMIT: usize = 64 * 1024;
pub const CONNACK_TIMEOUT: Duration = Duration::from_secs(3);
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const RISE: u32 = 2;
pub const FALL: u32 = 3;
pub const MAX_CONNECTIONS: usize = 1_000_000;
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a running proxy waits for a process taking over its sockets
/// to say it serves (`upgrade.timeout`).
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `upgrade.socket` path: a Unix socket address holds 108 bytes
/// on Linux (104 on macOS and the BSDs) with the terminating NUL.
pub const MAX_UNIX_SOCKET_PATH: usize = 103;
/// `listener.proxy_protocol_timeout`: from accept to a complete inbound
/// PROXY header. A balancer sends its header first thing; longer only
/// holds sockets open.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// `listener.proxy_protocol_from`: CIDR blocks, at most this many.
pub const MAX_PROXY_FROM: usize = 256;
/// `[[listener.route]]` rules per listener: each is tried in order for
/// every client, and each is a `route` label value.
pub const MAX_ROUTES: usize = 256;
/// Bytes of a route's `client_id_prefix`, `username_prefix` or
/// `cert_cn_prefix` (a CN is at most 64 characters; ids are longer).
pub const MAX_ROUTE_PREFIX: usize = 256;
/// Length of a route's `name` (a metric label value).
pub const MAX_ROUTE_NAME: usize = 64;
/// `pool.queue.size`: CONNECTs waiting for admission to a pool (each holds
/// its sockets and buffered CONNECT), and its upper bound.
pub const QUEUE_SIZE: usize = 10_000;
pub const MAX_QUEUE_SIZE: u64 = 1_000_000;
/// `pool.queue.timeout`: the longest wait for admission, and its bounds
/// (clients commonly give up on a CONNACK after 5 to 30 s).
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MIN_QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_QUEUE_TIMEOUT: Duration = Duration::from_secs(300);
/// `pool.rebalance.after`: how long a node is back before clients are
/// moved to it (default, bounds).
pub const REBALANCE_AFTER: Duration = Duration::from_secs(30);
pub const MAX_REBALANCE_AFTER: Duration = Duration::from_secs(3600);
/// `pool.rebalance.rate`: clients moved per second (default, bounds); also
/// the rate of `POST /api/v1/pools/{pool}/rebalance` on a pool without
/// `rebalance`.
pub const REBALANCE_RATE: u32 = 100;
pub const MAX_REBALANCE_RATE: u32 = 100_000;
/// Upper bound of a server's `max_connections` (0 = no cap).
pub const MAX_NODE_CONNECTIONS: u32 = 10_000_000;
