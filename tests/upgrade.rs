//! Replacing the running binary: `mqttlb proxy --takeover PATH` takes the
//! listening sockets over from the running proxy (SCM_RIGHTS over its
//! `upgrade.socket`) while clients keep connecting; the old process drains
//! and exits. And systemd socket activation: the listener uses the socket
//! systemd passes. Real processes on loopback.
#![cfg(unix)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use mqttlb::config::raw::RawUpgrade;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_mqttlb");

/// `mqttlb proxy` with `args`, stderr to `log` (a file: nobody has to
/// drain a pipe).
fn spawn_proxy(args: &[&str], log: &Path) -> Child {
    spawn_proxy_notifying(args, log, None)
}

/// [`spawn_proxy`] as systemd `Type=notify` runs it (`NOTIFY_SOCKET`).
fn spawn_proxy_notifying(args: &[&str], log: &Path, notify: Option<&Path>) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(BIN);
    if let Some(n) = notify {
        cmd.env("NOTIFY_SOCKET", n);
    }
    cmd.arg("proxy")
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mqttlb")
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// TLS handshake, CONNECT (3.1.1), CONNACK accepted: one attempt, bounded.
async fn mqtt_session(
    addr: SocketAddr,
    certs: &Certs,
    id: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let attempt = async {
        let mut s = tls_connect(addr, certs, false)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        match mqtt_connect(&mut s, 4, id).await {
            Some(0) => Ok(s),
            other => Err(format!("CONNACK {other:?}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// PINGREQ → PINGRESP on a held connection.
async fn ping(s: &mut tokio_rustls::client::TlsStream<TcpStream>) -> bool {
    if s.write_all(&[0xc0, 0x00]).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 2];
    matches!(
        tokio::time::timeout(DEADLINE, s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if buf == [0xd0, 0x00]
    )
}

/// Connection attempts made in a loop until stopped (bounded in count):
/// successes, and every failure with its reason.
#[derive(Default)]
struct Hammer {
    ok: AtomicUsize,
    failed: std::sync::Mutex<Vec<String>>,
    stop: AtomicBool,
}

const HAMMER_MAX: usize = 5_000;

async fn hammer(h: Arc<Hammer>, addr: SocketAddr, certs: Arc<Certs>, worker: usize) {
    for i in 0..HAMMER_MAX {
        if h.stop.load(Ordering::SeqCst) {
            return;
        }
        match mqtt_session(addr, &certs, &format!("hammer-{worker}-{i}")).await {
            Ok(s) => {
                h.ok.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
            Err(e) => h.failed.lock().unwrap().push(e),
        }
    }
}

async fn metric(admin: SocketAddr, sample: &str) -> Option<f64> {
    let (status, body) = http(admin, "GET", "/metrics").await;
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_refuses_no_connection_and_the_old_process_drains() {
    const HELD: usize = 20;
    let certs = Arc::new(Certs::new());
    let broker = BrokerUnderTest::start(|_| {}).await;
    let port = free_port();
    let admin_port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let sock = certs.path("upgrade.sock");
    let mut raw = proxy_config(&certs, &[("node1", broker.addr)]);
    raw.listener[0].listen = Some(addr.to_string());
    // Several SO_REUSEPORT sockets, each with its own accept queue: all of
    // them must cross.
    raw.listener[0].accept_sockets = Some(3);
    raw.limits.drain_timeout = Some("3s".into());
    raw.admin = Some(RawAdmin {
        listen: Some(admin.to_string()),
        ..RawAdmin::default()
    });
    raw.upgrade = Some(RawUpgrade {
        socket: Some(sock.display().to_string()),
        timeout: Some("10s".into()),
    });
    let config = certs.path("mqttlb.toml");
    std::fs::write(&config, raw.to_toml()).expect("write config");
    let config = config.display().to_string();
    let (old_log, new_log) = (certs.path("old.log"), certs.path("new.log"));

    // What systemd (Type=notify) would hear.
    let notify_path = certs.path("notify");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    let next_notification = || async {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(DEADLINE, notify.recv(&mut buf))
            .await
            .expect("a notification")
            .expect("recv");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };

    let mut old = spawn_proxy_notifying(&["--config", &config], &old_log, Some(&notify_path));
    assert_eq!(next_notification().await, "READY=1");
    wait_until("the old proxy serves", DEADLINE, || async {
        mqtt_session(addr, &certs, "probe").await.is_ok() && sock.exists()
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "upgrade socket mode {mode:o}");

    let mut held = Vec::new();
    for i in 0..HELD {
        held.push(
            mqtt_session(addr, &certs, &format!("held-{i}"))
                .await
                .expect("held client connects"),
        );
    }

    let h = Arc::new(Hammer::default());
    let hammers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(hammer(h.clone(), addr, certs.clone(), w)))
        .collect();
    wait_until("the hammer connects", DEADLINE, || async {
        h.ok.load(Ordering::SeqCst) >= 20
    })
    .await;
    let before = h.ok.load(Ordering::SeqCst);

    let mut new = spawn_proxy_notifying(
        &[
            "--config",
            &config,
            "--takeover",
            &sock.display().to_string(),
        ],
        &new_log,
        Some(&notify_path),
    );
    // systemd would now follow the new process as the service's main one.
    let new_pid = new.id().expect("pid");
    assert_eq!(
        next_notification().await,
        format!("MAINPID={new_pid}\nREADY=1")
    );
    wait_until("the old proxy hands over", DEADLINE, || async {
        read_log(&old_log).contains("the new process serves")
    })
    .await;
    let handed_over = tokio::time::Instant::now();
    // Held (MQTT 3.1.1) clients are not kicked: the old process keeps
    // relaying for them while it drains.
    for (i, s) in held.iter_mut().enumerate() {
        assert!(ping(s).await, "held client {i} served while draining");
    }
    let status = tokio::time::timeout(DEADLINE, old.wait())
        .await
        .expect("the old process exits after its drain timeout")
        .expect("status");
    let drained = handed_over.elapsed();
    assert_eq!(status.code(), Some(0), "{}", read_log(&old_log));
    assert!(
        drained >= Duration::from_millis(2_500),
        "the old process waited for its held clients ({drained:?})"
    );
    assert!(read_log(&old_log).contains("drain timeout reached"));
    // Its clients were closed at the drain timeout, not before.
    for s in held.iter_mut() {
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "closed: {n:?}");
    }

    // The hammer goes on against the new process alone.
    let after_exit = h.ok.load(Ordering::SeqCst);
    wait_until(
        "the hammer connects through the new process",
        DEADLINE,
        || async { h.ok.load(Ordering::SeqCst) >= after_exit + 20 },
    )
    .await;
    h.stop.store(true, Ordering::SeqCst);
    for t in hammers {
        t.await.expect("hammer task");
    }
    let failed = h.failed.lock().unwrap().clone();
    let ok = h.ok.load(Ordering::SeqCst);
    assert!(
        failed.is_empty(),
        "{} of {} attempts failed across the hand-over: {:?}\nold:\n{}\nnew:\n{}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)],
        read_log(&old_log),
        read_log(&new_log)
    );
    assert!(ok > before, "attempts during and after the hand-over");
    eprintln!(
        "hammer: {before} before the takeover, {} until the old process exited, {ok} in all, 0 failed",
        after_exit
    );

    // The clients that were held reconnect, through the new process.
    for i in 0..HELD {
        mqtt_session(addr, &certs, &format!("held-{i}"))
            .await
            .expect("reconnects through the new process");
    }
    // The admin socket crossed too; the new process counts what it served.
    let total = metric(admin, "mqttlb_connections_total{listener=\"mqtts\"}")
        .await
        .expect("the new process's metrics");
    assert!(total >= (HELD + 20) as f64, "new process served {total}");
    let log = read_log(&new_log);
    assert!(log.contains("took over the listening sockets"), "{log}");
    assert!(log.contains("using inherited listening sockets"), "{log}");
    // It owns the upgrade socket now, and removes it when it stops.
    assert!(sock.exists());
    let pid = new.id().expect("pid").to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().await;
    assert!(sent.expect("kill").success());
    let status = tokio::time::timeout(DEADLINE, new.wait())
        .await
        .expect("exits")
        .expect("status");
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "upgrade socket removed at exit");
}

/// A takeover that cannot happen changes nothing: with no running proxy
/// at the path the new process exits 1 without serving; and with a
/// configuration error it exits 64 before touching the running one.
#[tokio::test]
async fn a_failed_takeover_leaves_the_running_proxy_serving() {
    let certs = Arc::new(Certs::new());
    let broker = BrokerUnderTest::start(|_| {}).await;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sock = certs.path("upgrade.sock");
    let mut raw = proxy_config(&certs, &[("node1", broker.addr)]);
    raw.listener[0].listen = Some(addr.to_string());
    raw.limits.drain_timeout = Some("1s".into());
    raw.upgrade = Some(RawUpgrade {
        socket: Some(sock.display().to_string()),
        timeout: None,
    });
    let config = certs.path("mqttlb.toml");
    std::fs::write(&config, raw.to_toml()).expect("write config");
    let config = config.display().to_string();
    let sock_arg = sock.display().to_string();

    // Nobody there.
    let out = Command::new(BIN)
        .args(["proxy", "--config", &config, "--takeover", &sock_arg])
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot take over"));

    let mut old = spawn_proxy(&["--config", &config], &certs.path("old.log"));
    wait_until("the proxy serves", DEADLINE, || async {
        mqtt_session(addr, &certs, "probe").await.is_ok() && sock.exists()
    })
    .await;
    // A second proxy without --takeover may not steal the upgrade socket.
    let out = Command::new(BIN)
        .args(["proxy", "--config", &config])
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a running process answers on it"), "{err}");

    // A broken new configuration fails before the running proxy is asked.
    let bad = certs.path("bad.toml");
    std::fs::write(&bad, "[[listener]]\ncolour = \"blue\"\n").expect("write");
    let out = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(&bad)
        .args(["--takeover", &sock_arg])
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));

    // Still serving, still offering its sockets.
    let mut s = mqtt_session(addr, &certs, "after").await.expect("serves");
    assert!(ping(&mut s).await);
    assert!(sock.exists());
    assert!(old.try_wait().expect("status").is_none(), "still running");
}

/// systemd socket activation: `systemd-socket-activate` binds the socket,
/// names it (`--fdname`, systemd's `FileDescriptorName=`) and starts
/// mqttlb with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES; the listener of that
/// name serves on it. A client that connects before mqttlb has started
/// waits in the socket's backlog and is served.
#[tokio::test]
async fn systemd_socket_activation_serves_the_passed_socket() {
    let tool = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("systemd-socket-activate installed (package systemd)");
    let certs = Arc::new(Certs::new());
    let broker = BrokerUnderTest::start(|_| {}).await;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut raw = proxy_config(&certs, &[("node1", broker.addr)]);
    raw.listener[0].listen = Some(addr.to_string());
    let config = certs.path("mqttlb.toml");
    std::fs::write(&config, raw.to_toml()).expect("write config");
    let log = certs.path("activated.log");
    let _proc = Command::new(tool)
        .args([
            "-l",
            &addr.to_string(),
            "--fdname=mqtts",
            BIN,
            "proxy",
            "--config",
        ])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn systemd-socket-activate");
    wait_until("the activation socket listens", DEADLINE, || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    // The first connection starts mqttlb (systemd-socket-activate forks on
    // it) and is served by it.
    let mut s = mqtt_session(addr, &certs, "activated")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", read_log(&log)));
    assert!(ping(&mut s).await);
    let text = read_log(&log);
    assert!(text.contains("using inherited listening sockets"), "{text}");
}
