//! The alerting kit: `deploy/prometheus/mqttlb-rules.yml` passes `promtool
//! check rules` and its unit tests; a real Prometheus server scraping a live
//! proxy (and loading the rules) answers every query of the Grafana
//! dashboard and every alert's expression with data; the certificate expiry
//! gauge follows reloads; the Kubernetes manifests validate against the
//! API schemas (`kubernetes-validate`).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use serde_yaml_ng::Value;
use tokio::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn prometheus_dir() -> PathBuf {
    Path::new(ROOT).join("deploy/prometheus")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One alerting rule of the rules file.
struct Alert {
    name: String,
    expr: String,
    rule: Value,
}

fn alerts() -> Vec<Alert> {
    let rules = yaml(&prometheus_dir().join("mqttlb-rules.yml"));
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            out.push(Alert {
                name: rule["alert"].as_str().expect("alerting rules only").into(),
                expr: rule["expr"].as_str().expect("expr").trim().into(),
                rule: rule.clone(),
            });
        }
    }
    out
}

#[test]
fn every_alert_has_severity_summary_and_description() {
    let alerts = alerts();
    assert!(alerts.len() >= 6, "{} alerts", alerts.len());
    for a in &alerts {
        let severity = a.rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["warning", "critical"].contains(&severity),
            "{}: severity {severity:?}",
            a.name
        );
        for key in ["summary", "description"] {
            let text = a.rule["annotations"][key].as_str().unwrap_or_default();
            assert!(text.contains("{{ $labels."), "{}: {key} {text:?}", a.name);
        }
    }
}

#[tokio::test]
async fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let dir = prometheus_dir();
    let alerts = alerts();
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "rules", "mqttlb-rules.yml"])
        .current_dir(&dir))
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{out}"
    );
    let (ok, out) = run(Command::new("promtool")
        .args(["test", "rules", "mqttlb-rules.test.yml"])
        .current_dir(&dir))
    .await;
    assert!(ok && out.contains("SUCCESS"), "{out}");

    // The unit tests cover every alert firing, and some quiet cases.
    let tests = yaml(&dir.join("mqttlb-rules.test.yml"));
    let cases: Vec<&Value> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().expect("alert_rule_test"))
        .collect();
    let firing = |name: &str| {
        cases.iter().any(|c| {
            c["alertname"].as_str() == Some(name)
                && c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty())
        })
    };
    let untested: Vec<&str> = alerts
        .iter()
        .map(|a| a.name.as_str())
        .filter(|n| !firing(n))
        .collect();
    assert!(
        untested.is_empty(),
        "alerts never tested firing: {untested:?}"
    );
    let quiet = cases
        .iter()
        .filter(|c| c["exp_alerts"].as_sequence().is_some_and(|a| a.is_empty()))
        .count();
    assert!(quiet >= 3, "{quiet} not-firing cases");
}

/// The `mqttlb_…` selectors of a PromQL expression, with their matchers.
fn selectors(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("mqttlb_") {
        let tail = &rest[i..];
        let mut end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if tail[end..].starts_with('{') {
            end += tail[end..].find('}').expect("matchers closed") + 1;
        }
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// An alert's expression without its thresholds: each operand of a
/// top-level `and` with the final comparison against a constant removed.
fn without_thresholds(expr: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    for line in expr.lines() {
        if line.trim() == "and" {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    parts.push(current);
    parts
        .iter()
        .map(|p| {
            let p = p.trim();
            let cut = ["==", "<", ">"]
                .iter()
                .filter_map(|op| p.rfind(op))
                .max()
                .filter(|&i| {
                    p[i..]
                        .trim_start_matches(['=', '<', '>'])
                        .chars()
                        .all(|c| c.is_ascii_digit() || " .*".contains(c))
                })
                .expect("ends with a comparison against a constant");
            p[..cut].trim().to_string()
        })
        .collect()
}

#[test]
fn thresholds_strip_as_expected() {
    assert_eq!(
        without_thresholds("a - time() < 14 * 86400"),
        ["a - time()"]
    );
    assert_eq!(
        without_thresholds("(\n x / y\n) > 0.1\nand\nsum(y) > 0.1\n"),
        ["(\n x / y\n)", "sum(y)"]
    );
    assert_eq!(
        selectors("sum(rate(mqttlb_a_total{r!=\"ok\"}[5m])) / mqttlb_b"),
        ["mqttlb_a_total{r!=\"ok\"}", "mqttlb_b"]
    );
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// GET from a server that may not be listening yet: (status, body).
async fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(http(addr, "GET", path).await)
}

/// A Prometheus server on a loopback port with its own storage, scraping
/// `target` every second and evaluating the rules file; killed on drop.
struct Prometheus {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = prometheus_dir().join("mqttlb-rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: mqttlb\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write config");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus runs (Debian package prometheus)");
        let p = Prometheus {
            addr,
            dir,
            _child: child,
        };
        wait_until("prometheus ready", DEADLINE, || async {
            try_get(p.addr, "/-/ready").await.map(|(s, _)| s) == Some(200)
        })
        .await;
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query`: the result vector (panics on an API error).
    async fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let (status, body) = http(
            self.addr,
            "GET",
            &format!("/api/v1/query?query={}", percent_encode(q)),
        )
        .await;
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{q}: {status} {e}: {body}"));
        assert_eq!(v["status"], "success", "{q}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// Every `expr` of the dashboard (panels, rows, nested panels) and the
/// metric behind each `label_values` variable, with Grafana's variables
/// substituted.
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v.as_str()) {
                        ("expr", Some(e)) => out.push(e.to_string()),
                        ("query", Some(q)) if q.starts_with("label_values(") => {
                            let inner = &q["label_values(".len()..];
                            let metric = inner.split([',', ')']).next().expect("metric");
                            out.push(metric.trim().to_string());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/mqttlb.json"))
        .expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut raw = Vec::new();
    walk(&dash, &mut raw);
    raw.iter()
        .map(|e| {
            let q = e
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h")
                .replace("$instance", ".*")
                .replace("${instance}", ".*");
            assert!(!q.contains('$'), "unsubstituted Grafana variable in {e}");
            q
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_dashboard_query_and_alert_expression() {
    let dashboard = dashboard_queries();
    assert!(
        dashboard.len() >= 32,
        "{} dashboard queries",
        dashboard.len()
    );
    let alerts = alerts();
    let mut queries: Vec<(String, String)> = dashboard
        .into_iter()
        .map(|q| ("dashboard".to_string(), q))
        .collect();
    for a in &alerts {
        for q in without_thresholds(&a.expr)
            .into_iter()
            .chain(selectors(&a.expr))
        {
            if !queries.iter().any(|(_, seen)| *seen == q) {
                queries.push((a.name.clone(), q));
            }
        }
    }

    // A live proxy that has relayed TLS clients and refused some.
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let proxy = ProxyUnderTest::in_front_of(&certs, &[("node1", node.addr)]).await;
    let admin = start_admin(&proxy).await;
    for i in 0..3 {
        let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
        assert_eq!(
            mqtt_connect(&mut s, 4, &format!("alerting-{i}")).await,
            Some(0)
        );
    }
    {
        use tokio::io::AsyncWriteExt;
        // Not TLS at all: a failed handshake.
        let mut s = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        s.write_all(b"garbage\r\n\r\n").await.expect("write");
        read_to_close(&mut s).await;
        // TLS, then HTTP: refused before any backend.
        let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        read_to_close(&mut s).await;
    }
    wait_until("refusals counted", DEADLINE, || async {
        proxy.rejected("tls_handshake_failed") >= 1.0 && proxy.rejected("http") >= 1.0
    })
    .await;

    let prom = Prometheus::start(admin).await;
    wait_until("the proxy scraped", DEADLINE, || async {
        !prom.query("up{job=\"mqttlb\"} == 1").await.is_empty()
    })
    .await;

    // rate() and increase() need two scrapes in their window: wait for
    // every query to answer (bounded), then report the ones that did not.
    let end = tokio::time::Instant::now() + DEADLINE;
    let empty = loop {
        let mut empty = Vec::new();
        for (source, q) in &queries {
            if prom.query(q).await.is_empty() {
                empty.push(format!("{source}: {q}"));
            }
        }
        if empty.is_empty() || tokio::time::Instant::now() >= end {
            break empty;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert!(
        empty.is_empty(),
        "queries without data:\n{}\nprometheus log:\n{}",
        empty.join("\n"),
        prom.log()
    );
    // Each alert contributed at least its stripped expression.
    assert!(queries.len() >= 32 + alerts.len(), "{}", queries.len());

    // The served certificate's expiry, as Prometheus sees it.
    let pem = certs.read("server.pem");
    let der = <rustls_pki_types::CertificateDer<'static> as rustls_pki_types::pem::PemObject>::from_pem_slice(&pem)
        .expect("server certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("X.509");
    let expiry = prom.query("mqttlb_tls_certificate_not_after_seconds").await;
    assert_eq!(expiry.len(), 1, "{expiry:?}");
    assert_eq!(
        expiry[0]["metric"]["cert"].as_str(),
        Some(certs.p("server.pem").as_str())
    );
    assert_eq!(
        expiry[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<i64>().ok()),
        Some(cert.validity().not_after.timestamp())
    );
    let pools = prom.query("mqttlb_pool_backends_in_rotation").await;
    assert_eq!(pools.len(), 1, "{pools:?}");
    assert_eq!(pools[0]["metric"]["pool"], "brokers");
    assert_eq!(pools[0]["value"][1], "1");

    // Prometheus loaded every rule and evaluates them without error.
    wait_until("every rule evaluated", DEADLINE, || async {
        let (_, body) = http(prom.addr, "GET", "/api/v1/rules").await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let rules: Vec<&serde_json::Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        rules.len() == alerts.len() && rules.iter().all(|r| r["health"] == "ok")
    })
    .await;
}

#[tokio::test]
async fn certificate_expiry_follows_reloads() {
    let certs = Certs::new();
    // A second certificate for SNI `other.example`.
    let other = tempfile::tempdir().expect("tempdir");
    mqttlb::certs::DevCerts::generate(&["other.example".to_string()], "c")
        .expect("generate")
        .write(other.path())
        .expect("write");
    let node = BrokerUnderTest::start(|_| {}).await;
    let base = proxy_config(&certs, &[("node1", node.addr)]);
    let mut with_sni = base.clone();
    tls_of(&mut with_sni).sni = vec![RawCertPair {
        cert: other.path().join("server.pem").display().to_string(),
        key: other.path().join("server.key").display().to_string(),
        ocsp: None,
    }];
    let proxy = ProxyUnderTest::start(&with_sni.to_toml(), certs.dir.path()).await;
    let sample = |path: &Path| {
        format!(
            "mqttlb_tls_certificate_not_after_seconds{{listener=\"mqtts\",cert=\"{}\"}}",
            path.display()
        )
    };
    let default = sample(&certs.path("server.pem"));
    let sni = sample(&other.path().join("server.pem"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(proxy.metric(&default) > now, "{default}");
    assert!(proxy.metric(&sni) > now, "{sni}");

    let raw = mqttlb::config::parse_toml("reload.toml", &base.to_toml()).expect("parses");
    let config =
        mqttlb::config::Config::from_raw("reload.toml", certs.dir.path(), raw).expect("converts");
    proxy.handle.reload(config).await.expect("reload");
    let text = mqttlb::metrics::encode(&proxy.registry);
    assert!(text.contains(&default), "{text}");
    assert!(
        !text.contains(&other.path().join("server.pem").display().to_string()),
        "removed certificate still exported: {text}"
    );
}

#[tokio::test]
async fn kubernetes_manifests_validate_against_the_api_schemas() {
    let dir = Path::new(ROOT).join("deploy/kubernetes");
    // kustomization.yaml is kustomize's, not an API resource.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 7, "{files:?}");
    let validate = |files: &[PathBuf]| {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "kubernetes_validate", "--strict", "-k", "1.30.0"])
            .args(files);
        cmd
    };
    let (ok, out) = run(&mut validate(&files)).await;
    assert!(
        ok,
        "kubernetes-validate (pip install kubernetes-validate; scripts/test installs it): {out}"
    );
    // Eight resources (the Service file holds two), each passed.
    assert_eq!(out.matches(" passed ").count(), 8, "{out}");

    // The validator does check: a wrong type and an unknown field fail.
    let broken = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(dir.join("deployment.yaml")).expect("deployment");
    let bad = broken.path().join("deployment.yaml");
    std::fs::write(&bad, text.replacen("spec:", "spec:\n  replicass: 2", 1)).expect("write");
    let (ok, out) = run(&mut validate(&[bad])).await;
    assert!(!ok, "unknown field accepted: {out}");
}

/// Broker mode has its own registry: none of the proxy's families (the
/// certificate and pool gauges included) appear there, and its scrape
/// stays `promtool check metrics` clean.
#[tokio::test]
async fn broker_mode_exports_only_broker_metrics() {
    let broker = BrokerUnderTest::start(|_| {}).await;
    let scrape = mqttlb::metrics::encode_prometheus(&broker.registry);
    let families: Vec<&str> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(families.len() >= 5, "{scrape}");
    let foreign: Vec<&&str> = families
        .iter()
        .filter(|f| !f.starts_with("mqttlb_broker_"))
        .collect();
    assert!(foreign.is_empty(), "{foreign:?}");
    promtool_check(&scrape)
        .await
        .expect("promtool check metrics");
}
