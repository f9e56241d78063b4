//! The admin status page (`GET /`) on a live proxy in front of two mqttlb
//! broker nodes, loaded by headless Chromium (Debian package `chromium`,
//! installed by `scripts/test`): a node stopped turns `down` in the DOM
//! and `up` again when it returns; screenshots (desktop and phone width)
//! are saved under the target directory; the buttons' API calls work as
//! the page's script sends them, with and without a token, and a
//! cross-site POST is refused.
//!
//! `MQTTLB_UPDATE_SCREENSHOT=1` also copies the desktop screenshot to
//! `docs/status-page.png` (the README's picture).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// One headless Chromium run's deadline (start-up included).
const BROWSER_DEADLINE: Duration = Duration::from_secs(60);
const TOKEN: &str = "status-page-token-0123456789";

/// Run headless Chromium with `args` and a private profile; its stdout.
/// Its process group is killed if it overruns the deadline.
async fn chromium(args: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);
    let child = cmd
        .spawn()
        .expect("chromium runs (Debian package chromium)");
    let pid = child.id();
    match tokio::time::timeout(BROWSER_DEADLINE, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.expect("chromium output");
            assert!(
                out.status.success(),
                "chromium failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            panic!("chromium did not finish within {BROWSER_DEADLINE:?}");
        }
    }
}

/// The page's DOM after Chromium loaded it (and ran its script).
async fn dom(url: &str) -> String {
    chromium(&["--dump-dom".into(), url.into()]).await
}

async fn screenshot(url: &str, path: &Path, width: u32, height: u32) {
    chromium(&[
        format!("--screenshot={}", path.display()),
        format!("--window-size={width},{height}"),
        url.into(),
    ])
    .await;
    let png = std::fs::read(path).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
}

/// The state a node's row shows in `html` (`None`: no row).
fn node_state<'a>(html: &'a str, node: &str) -> Option<&'a str> {
    let row = format!("data-node=\"{node}\" data-state=\"");
    let at = html.find(&row)? + row.len();
    html.get(at..)?.split('"').next()
}

/// What the page's script sends with a button's POST from the page at
/// `admin`: the browser adds these two itself.
fn same_origin(admin: SocketAddr) -> [(&'static str, String); 2] {
    [
        ("Origin", format!("http://{admin}")),
        ("Sec-Fetch-Site", "same-origin".into()),
    ]
}

async fn post(admin: SocketAddr, path: &str, headers: &[(&str, String)]) -> u16 {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http_with(admin, "POST", path, &headers).await.0
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status_page");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_follows_nodes_and_its_buttons_work() {
    let certs = Certs::new();
    let mut nodes = [
        BrokerUnderTest::start(|_| {}).await,
        BrokerUnderTest::start(|_| {}).await,
    ];
    let servers = [("node1", nodes[0].addr), ("node2", nodes[1].addr)];
    let pool = "strategy = \"least-connections\"\nhealth = { check = \"mqtt\", interval = \"200ms\", timeout = \"500ms\", rise = 1, fall = 1 }";
    let proxy = ProxyUnderTest::start(&config(&certs, &servers, "", pool), certs.dir.path()).await;
    let admin = start_admin(&proxy).await;
    let url = format!("http://{admin}/?refresh=2");

    wait_until("both nodes checked", DEADLINE, || async {
        let (_, b) = http(admin, "GET", "/").await;
        node_state(&b, "node1") == Some("up") && node_state(&b, "node2") == Some("up")
    })
    .await;
    // A client, so the page has something to count.
    let mut client = tls_client(&proxy, &certs, "status-page-client");
    client.connack().await;

    let html = dom(&url).await;
    assert_eq!(node_state(&html, "node1"), Some("up"), "{html}");
    assert_eq!(node_state(&html, "node2"), Some("up"));
    for part in [
        "<tr data-listener=\"mqtts\">",
        "<section class=\"pool\" data-pool=\"brokers\">",
        "<section id=\"certificates\">",
        "server.pem",
        "data-refresh=\"2\"",
        "data-auth=\"open\"",
    ] {
        assert!(html.contains(part), "missing {part}");
    }
    // The script ran (no syntax error): it keeps the token form hidden on
    // an open page, and nothing it needs is missing.
    assert!(html.contains("<form id=\"token\" hidden=\"\""), "{html}");

    let dir = artifacts();
    let desktop = dir.join("status-page.png");
    screenshot(&url, &desktop, 1100, 1000).await;
    screenshot(&url, &dir.join("status-page-phone.png"), 400, 1400).await;
    if std::env::var_os("MQTTLB_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status-page.png");
        std::fs::copy(&desktop, docs).expect("copy screenshot to docs/");
    }

    // node1 stops: the page shows it down; back, it shows it up.
    nodes[0].stop().await;
    wait_until("the page shows node1 down", DEADLINE, || async {
        node_state(&dom(&url).await, "node1") == Some("down")
    })
    .await;
    let node1 = nodes[0].restart(Vec::new()).await;
    nodes[0] = node1;
    wait_until("the page shows node1 up again", DEADLINE, || async {
        node_state(&dom(&url).await, "node1") == Some("up")
    })
    .await;

    // The buttons: what the page's script sends works...
    let from_page = same_origin(admin);
    assert_eq!(
        post(admin, "/api/v1/backends/node2/drain", &from_page).await,
        200
    );
    assert_eq!(node_state(&dom(&url).await, "node2"), Some("draining"));
    assert_eq!(
        post(admin, "/api/v1/backends/node2/enable", &from_page).await,
        200
    );
    assert_eq!(
        post(admin, "/api/v1/pools/brokers/rebalance", &from_page).await,
        202
    );
    // ...another site's page cannot, whichever header gives it away...
    for cross in [
        vec![("Sec-Fetch-Site", "cross-site".to_string())],
        vec![("Origin", "http://evil.example".to_string())],
        vec![
            ("Origin", format!("http://{admin}")),
            ("Sec-Fetch-Site", "same-site".to_string()),
        ],
    ] {
        assert_eq!(
            post(admin, "/api/v1/backends/node2/drain", &cross).await,
            403,
            "{cross:?}"
        );
    }
    let (_, b) = http(admin, "GET", "/").await;
    assert_eq!(node_state(&b, "node2"), Some("up"), "nothing changed");
    // ...and clients without browser headers (curl, scripts) go on as before.
    assert_eq!(post(admin, "/api/v1/backends/node2/drain", &[]).await, 200);
    assert_eq!(post(admin, "/api/v1/backends/node2/enable", &[]).await, 200);
    // GET changes nothing; other methods on / are refused.
    assert_eq!(http(admin, "POST", "/").await.0, 405);
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_asks_for_it_and_shows_nothing_without() {
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let proxy = ProxyUnderTest::in_front_of(&certs, &[("node1", node.addr)]).await;
    let admin = start_admin_with(&proxy, |a| {
        a.token = Some(mqttlb::secret::Secret(TOKEN.into()));
    })
    .await;

    // Without the token: 401, the form, no data.
    let (status, body) = http(admin, "GET", "/").await;
    assert_eq!(status, 401);
    assert!(body.contains("data-empty=\"token\""), "{body}");
    assert!(!body.contains("node1"), "{body}");
    // In a browser the script shows the form (no token kept yet).
    let html = dom(&format!("http://{admin}/")).await;
    assert!(html.contains("<form id=\"token\">"), "{html}");
    assert!(!html.contains("data-node="));

    // With it (as the script sends it): the data.
    let bearer = format!("Bearer {TOKEN}");
    let (status, body) = http_with(admin, "GET", "/", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200);
    assert!(body.contains("data-node=\"node1\""), "{body}");

    // The buttons: token and same origin pass; either missing does not.
    let [origin, site] = same_origin(admin);
    let with_token = [
        origin.clone(),
        site.clone(),
        ("Authorization", bearer.clone()),
    ];
    assert_eq!(
        post(admin, "/api/v1/backends/node1/drain", &with_token).await,
        200
    );
    assert_eq!(
        post(admin, "/api/v1/backends/node1/enable", &with_token).await,
        200
    );
    assert_eq!(
        post(admin, "/api/v1/pools/brokers/rebalance", &with_token).await,
        202
    );
    assert_eq!(
        post(admin, "/api/v1/backends/node1/drain", &[origin, site]).await,
        401
    );
    let cross = [
        ("Sec-Fetch-Site", "cross-site".to_string()),
        ("Authorization", bearer),
    ];
    assert_eq!(
        post(admin, "/api/v1/backends/node1/drain", &cross).await,
        403
    );
    let (_, body) = http_with(
        admin,
        "GET",
        "/api/v1/backends",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert!(body.contains("\"state\": \"up\""), "{body}");
}
