//! mqttlb: a TLS-offloading, MQTT-aware load balancer for MQTT broker
//! clusters.
//!
//! # Layout
//!
//! * [`admin`] — the admin HTTP server (hyper): the status page, metrics, health, backend
//!   API, reload; and the `mqttlb health` probe.
//! * [`config`] — TOML + flags → typed [`config::Config`]; errors carry the
//!   file, key path and reason.
//! * [`tls`] — rustls server configuration: certificates by SNI, client
//!   authentication (chains bounded before verification), the handshake.
//! * [`mqtt`] — pure wire format: the codec, the CONNECT peek, the packets
//!   mqttlb writes itself and the CONNACK head it reads.
//! * [`balance`] — backends, pools and their long-lived node sets,
//!   selection strategies (pure), health checks, discovery (DNS).
//! * [`proxy`] — listeners and accept loops ([`proxy::Proxy`]), the
//!   connection lifecycle ([`proxy::conn`]), the splice
//!   ([`proxy::splice`]), reloads.
//! * [`proxy_protocol`] — PROXY protocol v1/v2 headers sent to brokers.
//! * [`secret`] — secrets from configuration, never printed.
//! * [`ratelog`] — rate limits for log lines a peer can trigger.
//! * [`accesslog`] — one line per ended or refused connection, written
//!   off the data path (docs/access-log.md).
//! * [`ratelimit`] — per-key admission rates (source address, client id).
//! * [`broker`] — `mqttlb broker`: a minimal MQTT 3.1.1/5.0 broker,
//!   sessions, retained messages, and the peer mesh.
//! * [`demo`] — `mqttlb demo`: meshed nodes and the proxy in one process.
//! * [`metrics`] — Prometheus metric families on a registry passed down.
//! * [`certs`] — development certificates (`mqttlb certs`).
//! * [`check`] — `mqttlb check`: a configuration file validated as its
//!   server would load it.
//! * [`signals`] — stop and reload signals of the servers.
//! * [`sys`] — sockets and resource limits.
//! * [`upgrade`] — listening sockets from outside: handed over by the
//!   running proxy to a new binary (`--takeover`, `SCM_RIGHTS`), or
//!   passed by systemd socket activation.
//! * [`bench`] — `mqttlb bench`: the load generator and `bench calibrate`.
//! * [`doctor`] — `mqttlb doctor`: OS limits that cap a deployment, with
//!   the change to make.
//! * [`estimate`] — `mqttlb estimate`: cores and memory from a workload and
//!   a calibration.
//!
//! See `ARCHITECTURE.md` for the task map, the connection lifecycle and the
//! shutdown sequence.

#![forbid(unsafe_code)]
// "Nothing a network peer, an admin request or a config file controls may
// panic", checked by the compiler rather than by review: no unwrap, expect,
// panic, unchecked indexing or slicing, or truncating casts in library
// code. Tests (unit tests here, everything under tests/) may use them.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::cast_possible_truncation
    )
)]

pub mod accesslog;
pub mod admin;
pub mod balance;
pub mod bench;
pub mod broker;
pub mod certs;
pub mod check;
pub mod config;
pub mod demo;
pub mod doctor;
pub mod estimate;
pub mod launch;
pub mod metrics;
pub mod mqtt;
pub mod proxy;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod ratelog;
pub mod secret;
pub mod signals;
pub mod sys;
pub mod tls;
pub mod upgrade;
pub mod walkthrough;
