//! TLS sessions a fleet keeps (docs/tls-tickets.md): real `mqttlb proxy`
//! processes on loopback, `openssl s_client -sess_out/-sess_in` as the
//! client (TLS 1.3; "Reused" or "New"), `openssl sess_id` to read which key
//! sealed a ticket. Shared `ticket_keys`: a session resumes on another
//! replica, after a reload, and after a rotation; the process's own keys
//! survive a reload and a `--takeover`; a bad key file is a config error
//! naming its line; `mqttlb_tls_resumptions_total` counts.
#![cfg(unix)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::Engine as _;
use common::*;
use mqttlb::config::raw::RawUpgrade;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_mqttlb");

/// A ticket key as `openssl rand 80 | base64 -w0` makes one: its name is
/// 16 × `fill`.
fn key_line(fill: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([fill; 80])
}

/// Write a key file (0600, so no warning) with these keys, first sealing.
fn write_keys(path: &Path, fills: &[u8]) {
    let text: String = fills.iter().map(|f| key_line(*f) + "\n").collect();
    std::fs::write(path, format!("# test keys\n{text}")).expect("write keys");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// One `mqttlb proxy` process: a TLS MQTT listener whose clients that send
/// no CONNECT are closed after 300 ms (so `s_client` ends quickly), and an
/// admin API.
struct Replica {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
}

impl Replica {
    fn config(certs: &Certs, edit: impl FnOnce(&mut RawConfig)) -> (RawConfig, SocketAddr) {
        // A pool node nobody serves: the clients here never reach one.
        let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut raw = proxy_config(certs, &[("node1", dead)]);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        raw.listener[0].listen = Some(addr.to_string());
        if let Some(mqtt) = raw.listener[0].mqtt.as_mut() {
            mqtt.connect_timeout = Some("300ms".into());
        }
        raw.admin = Some(RawAdmin {
            listen: Some(format!("127.0.0.1:{}", free_port())),
            ..RawAdmin::default()
        });
        edit(&mut raw);
        (raw, addr)
    }

    /// Start `name` (files `<name>.toml`, `<name>.log` in the certs
    /// directory) from [`Replica::config`] changed by `edit`.
    async fn start(certs: &Certs, name: &str, edit: impl FnOnce(&mut RawConfig)) -> Replica {
        let (raw, addr) = Replica::config(certs, edit);
        let config = certs.path(&format!("{name}.toml"));
        std::fs::write(&config, raw.to_toml()).expect("write config");
        let admin = raw
            .admin
            .as_ref()
            .and_then(|a| a.listen.as_deref())
            .and_then(|a| a.parse().ok())
            .expect("admin address");
        let r = Replica::spawn(certs, name, config, addr, admin, &[]);
        r.wait_serving().await;
        r
    }

    fn spawn(
        certs: &Certs,
        name: &str,
        config: PathBuf,
        addr: SocketAddr,
        admin: SocketAddr,
        extra: &[&str],
    ) -> Replica {
        let log = certs.path(&format!("{name}.log"));
        let child = Command::new(BIN)
            .arg("proxy")
            .arg("--config")
            .arg(&config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mqttlb");
        Replica {
            child,
            addr,
            admin,
            config,
            log,
        }
    }

    async fn wait_serving(&self) {
        wait_until(
            "the replica serves TLS and its admin API",
            DEADLINE,
            || async {
                tokio::net::TcpStream::connect(self.admin).await.is_ok()
                    && tokio::net::TcpStream::connect(self.addr).await.is_ok()
            },
        )
        .await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `POST /api/v1/reload`: (status, body).
    async fn reload(&self) -> (u16, String) {
        http(self.admin, "POST", "/api/v1/reload").await
    }

    async fn resumptions(&self) -> f64 {
        let (status, body) = http(self.admin, "GET", "/metrics").await;
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix("mqttlb_tls_resumptions_total{listener=\"mqtts\"}"))
            .and_then(|v| v.trim().parse().ok())
            .expect("mqttlb_tls_resumptions_total in the scrape")
    }
}

/// One TLS 1.3 connection with `openssl s_client`, offering the session in
/// `sess_in` and saving the one it ends with in `sess_out`; true when the
/// handshake resumed ("Reused").
async fn s_client(
    addr: SocketAddr,
    certs: &Certs,
    sess_in: Option<&Path>,
    sess_out: Option<&Path>,
) -> bool {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-tls1_3",
        "-ign_eof",
        "-servername",
        "localhost",
    ])
    .arg("-connect")
    .arg(addr.to_string())
    .arg("-CAfile")
    .arg(certs.path("ca.pem"))
    .stdin(Stdio::null());
    if let Some(p) = sess_in {
        cmd.arg("-sess_in").arg(p);
    }
    if let Some(p) = sess_out {
        cmd.arg("-sess_out").arg(p);
    }
    let (_, out) = run(&mut cmd).await;
    let reused = out.contains("Reused, TLSv1.3");
    assert!(
        reused || out.contains("New, TLSv1.3"),
        "no TLS 1.3 handshake: {out}"
    );
    reused
}

/// A new session from `addr`, saved at `path`.
async fn new_session(addr: SocketAddr, certs: &Certs, path: &Path) {
    assert!(
        !s_client(addr, certs, None, Some(path)).await,
        "a new session"
    );
    assert!(path.exists(), "s_client saved the session");
}

/// The name (first 16 bytes) of the ticket in a saved session, and the
/// lifetime the server announced for it.
async fn ticket_name(session: &Path) -> (Vec<u8>, u32) {
    let (ok, text) = run(Command::new("openssl")
        .args(["sess_id", "-noout", "-text", "-in"])
        .arg(session))
    .await;
    assert!(ok, "openssl sess_id: {text}");
    let mut lines = text.lines().map(str::trim);
    let lifetime = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("TLS session ticket lifetime hint:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no lifetime hint: {text}"));
    lines
        .find(|l| l.starts_with("TLS session ticket:"))
        .unwrap_or_else(|| panic!("no ticket: {text}"));
    let first = lines.next().expect("ticket bytes");
    // "0000 - 4e 8f ... 07-11 ... 2a   .N......"
    let hex = first.strip_prefix("0000 - ").expect("first ticket line");
    let hex = hex
        .split("   ")
        .next()
        .unwrap_or_default()
        .replace('-', " ");
    let name: Vec<u8> = hex
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    assert_eq!(name.len(), 16, "{first}");
    (name, lifetime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_keys_resume_on_every_replica_after_reloads_and_rotations() {
    let certs = Certs::new();
    let keys = certs.path("ticket-keys");
    write_keys(&keys, &[1, 2]);
    let with_keys = |raw: &mut RawConfig| {
        tls_of(raw).ticket_keys = Some(keys.display().to_string());
    };
    let a = Replica::start(&certs, "a", with_keys).await;
    let b = Replica::start(&certs, "b", with_keys).await;
    let s1 = certs.path("s1.pem");

    // (a) A session from replica A resumes on replica B (and on A).
    new_session(a.addr, &certs, &s1).await;
    assert_eq!(ticket_name(&s1).await, (vec![1; 16], 12 * 3600));
    assert!(
        s_client(b.addr, &certs, Some(&s1), None).await,
        "A's ticket on B"
    );
    assert!(
        s_client(a.addr, &certs, Some(&s1), None).await,
        "A's ticket on A"
    );

    // (b) A reload keeps it resuming.
    assert_eq!(a.reload().await.0, 200);
    assert!(
        s_client(a.addr, &certs, Some(&s1), None).await,
        "after a reload"
    );

    // (c) Rotation: a new key first, the old one still listed, reload.
    write_keys(&keys, &[3, 1]);
    assert_eq!(a.reload().await.0, 200);
    assert!(
        s_client(a.addr, &certs, Some(&s1), None).await,
        "old ticket"
    );
    let s2 = certs.path("s2.pem");
    new_session(a.addr, &certs, &s2).await;
    assert_eq!(
        ticket_name(&s2).await.0,
        vec![3; 16],
        "sealed with the new key"
    );
    // B, not reloaded yet, does not know the new key: a full handshake.
    assert!(!s_client(b.addr, &certs, Some(&s2), None).await);
    assert_eq!(b.reload().await.0, 200);
    assert!(
        s_client(b.addr, &certs, Some(&s2), None).await,
        "B reloaded"
    );

    // A bad file on reload: refused with the line, the old keys stay.
    std::fs::write(&keys, format!("{}\n{}\n", key_line(4), &key_line(5)[..100])).unwrap();
    let (status, body) = a.reload().await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains(&format!("{} line 2: 75 bytes, want 80", keys.display())),
        "{body}"
    );
    assert!(
        s_client(a.addr, &certs, Some(&s2), None).await,
        "old keys kept"
    );

    // The oldest key dropped: its tickets no longer resume.
    write_keys(&keys, &[3]);
    assert_eq!(a.reload().await.0, 200);
    assert!(
        !s_client(a.addr, &certs, Some(&s1), None).await,
        "key 1 gone"
    );
    assert!(
        s_client(a.addr, &certs, Some(&s2), None).await,
        "key 3 kept"
    );

    // (g) Every resumed handshake counted, full ones not.
    assert_eq!(a.resumptions().await, 5.0);
    assert_eq!(b.resumptions().await, 2.0);
    assert!(!a.log().contains(&key_line(1)), "no key material in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_keys_survive_a_reload_and_a_takeover() {
    let certs = Certs::new();
    let sock = certs.path("upgrade.sock");
    let mut old = Replica::start(&certs, "old", |raw| {
        raw.upgrade = Some(RawUpgrade {
            socket: Some(sock.display().to_string()),
            timeout: Some("10s".into()),
        });
    })
    .await;
    let s1 = certs.path("s1.pem");
    new_session(old.addr, &certs, &s1).await;
    let (sealer, _) = ticket_name(&s1).await;

    // (d) Without ticket_keys: the process's keys outlive a reload.
    assert_eq!(old.reload().await.0, 200);
    assert!(
        s_client(old.addr, &certs, Some(&s1), None).await,
        "after a reload"
    );

    // (e) A new process takes over and continues the old one's keys.
    wait_until("the upgrade socket", DEADLINE, || async { sock.exists() }).await;
    let takeover = ["--takeover", sock.to_str().expect("utf-8 path")];
    let new = Replica::spawn(
        &certs,
        "new",
        old.config.clone(),
        old.addr,
        old.admin,
        &takeover,
    );
    let exited = tokio::time::timeout(DEADLINE, old.child.wait())
        .await
        .expect("the old process exits after the takeover")
        .expect("wait");
    assert!(exited.success(), "{}", old.log());
    wait_until("the new process adopted the keys", DEADLINE, || async {
        new.log()
            .contains("session ticket keys of the previous process adopted")
    })
    .await;
    assert!(
        s_client(new.addr, &certs, Some(&s1), None).await,
        "after --takeover"
    );
    // And it seals with the old process's sealing key.
    let s2 = certs.path("s2.pem");
    new_session(new.addr, &certs, &s2).await;
    assert_eq!(ticket_name(&s2).await.0, sealer);
    assert_eq!(new.resumptions().await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_file_is_a_config_error_naming_its_line() {
    let certs = Certs::new();
    let keys = certs.path("ticket-keys");
    std::fs::write(
        &keys,
        format!(
            "{}\n# next: one byte short\n{}\n",
            key_line(1),
            base64::engine::general_purpose::STANDARD.encode([2u8; 79])
        ),
    )
    .unwrap();
    let (raw, _) = Replica::config(&certs, |raw| {
        tls_of(raw).ticket_keys = Some(keys.display().to_string());
    });
    let config = certs.path("bad.toml");
    std::fs::write(&config, raw.to_toml()).unwrap();
    let want = format!(
        "listener[0].tls.ticket_keys: {} line 3: 79 bytes, want 80",
        keys.display()
    );

    for cmd in ["check", "proxy"] {
        let out = tokio::time::timeout(
            DEADLINE,
            Command::new(BIN)
                .args([cmd, "--config"])
                .arg(&config)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("exits")
        .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{cmd}: {stderr}");
        assert!(stderr.contains(&want), "{cmd}: {stderr}");
        assert!(!stderr.contains(&key_line(1)[..20]), "{cmd}: key in output");
    }

    // A key file others can read is loudly logged (group read by the
    // process's own group is not: Kubernetes fsGroup mounts).
    write_keys(&keys, &[1]);
    for (mode, warned) in [(0o644, true), (0o640, false)] {
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(mode)).unwrap();
        let (ok, out) = run(Command::new(BIN).args(["check", "--config"]).arg(&config)).await;
        assert!(ok, "{out}");
        let warning = out.contains("ticket key file is readable by other users")
            && out.contains(&format!("{mode:04o}"))
            && out.contains(&keys.display().to_string());
        assert_eq!(warning, warned, "mode {mode:o}: {out}");
    }
}
