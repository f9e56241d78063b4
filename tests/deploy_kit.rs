//! The deployment kit: Kubernetes manifests parse and agree with the
//! binary's contract (probes, ports, config), and every metric the Grafana
//! dashboard queries exists in a live scrape.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use serde_yaml_ng::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy/kubernetes").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            let v: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{file}: not valid YAML: {e}"));
            v
        })
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(*p)
            .unwrap_or_else(|| panic!("missing {}", path.join(".")));
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

/// The entry called `name` of a list of named things (volumes, mounts).
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_sequence()
        .and_then(|l| l.iter().find(|v| v["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("no {name:?} in {list:?}"))
}

#[test]
fn kubernetes_manifests_parse_and_match_the_binary() {
    let kustomization = &documents("kustomization.yaml")[0];
    let resources: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(resources.len(), 7);
    let mut kinds = BTreeSet::new();
    let mut checked = 0;
    let (mut ticket_keys, mut mounted_keys, mut secret_keys) = (None, None, Vec::new());
    for file in resources {
        for doc in documents(file) {
            let kind = str_at(&doc, &["kind"]).to_string();
            assert!(!str_at(&doc, &["apiVersion"]).is_empty());
            assert!(!str_at(&doc, &["metadata", "name"]).is_empty());
            match kind.as_str() {
                "ConfigMap" => {
                    // The embedded configuration parses (syntax and keys;
                    // its certificate paths exist only in the pod).
                    let toml = str_at(&doc, &["data", "mqttlb.toml"]);
                    mqttlb::config::parse_toml::<mqttlb::config::raw::RawConfig>("configmap", toml)
                        .unwrap_or_else(|e| panic!("ConfigMap config: {e}"));
                    assert!(
                        toml.contains("listen = \"0.0.0.0:9100\""),
                        "admin reachable by probes"
                    );
                    let raw = mqttlb::config::parse_toml::<mqttlb::config::raw::RawConfig>(
                        "configmap",
                        toml,
                    )
                    .expect("parses");
                    ticket_keys = raw.listener[0]
                        .tls
                        .as_ref()
                        .and_then(|t| t.ticket_keys.clone());
                }
                "Deployment" => {
                    let c = &doc["spec"]["template"]["spec"]["containers"][0];
                    // Probes from inside the pod, through the binary's own
                    // client, to the host-only admin slots.
                    for (probe, path) in
                        [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]
                    {
                        let cmd: Vec<&str> = c[probe]["exec"]["command"]
                            .as_sequence()
                            .unwrap_or_else(|| panic!("{probe} is an exec probe"))
                            .iter()
                            .filter_map(Value::as_str)
                            .collect();
                        assert_eq!(
                            cmd,
                            [
                                "/usr/local/bin/mqttlb",
                                "health",
                                &format!("http://127.0.0.1:9100{path}")
                            ]
                        );
                    }
                    let ports: Vec<i64> = c["ports"]
                        .as_sequence()
                        .expect("ports")
                        .iter()
                        .filter_map(|p| p["containerPort"].as_i64())
                        .collect();
                    assert_eq!(ports, [8883, 9100]);
                    let grace = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                        .as_i64()
                        .expect("grace period");
                    assert!(grace > 30, "longer than drain_timeout");
                    // A fleet: several replicas, spread over nodes, with
                    // the shared ticket keys mounted readable by the pod's
                    // group only: the file is root-owned with the fsGroup
                    // as group (0400 would rely on kubelet adding the group
                    // bit), and mqttlb's own group reading it is no warning.
                    assert!(doc["spec"]["replicas"].as_i64().unwrap_or(0) >= 2);
                    let pod = &doc["spec"]["template"]["spec"];
                    assert_eq!(
                        str_at(
                            &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
                                [0],
                            &["podAffinityTerm", "topologyKey"]
                        ),
                        "kubernetes.io/hostname"
                    );
                    let keys = named(&pod["volumes"], "ticket-keys");
                    assert_eq!(
                        str_at(keys, &["secret", "secretName"]),
                        "mqttlb-ticket-keys"
                    );
                    assert_eq!(keys["secret"]["defaultMode"].as_i64(), Some(0o440));
                    let security = &pod["securityContext"];
                    assert_eq!(security["fsGroup"].as_i64(), Some(65532));
                    assert_eq!(security["runAsGroup"].as_i64(), Some(65532));
                    // Mounted as a directory (Secret updates reach it) where
                    // the ConfigMap's ticket_keys looks for the Secret's key.
                    let mount = named(&c["volumeMounts"], "ticket-keys");
                    assert!(mount.get("subPath").is_none());
                    mounted_keys = Some(str_at(mount, &["mountPath"]).to_string());
                }
                "Secret" if str_at(&doc, &["metadata", "name"]) == "mqttlb-ticket-keys" => {
                    secret_keys = doc["stringData"]
                        .as_mapping()
                        .expect("stringData")
                        .keys()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect();
                }
                _ => {}
            }
            kinds.insert(kind);
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
    // The configured ticket_keys file is the Secret's one key, where the
    // Deployment mounts it.
    assert_eq!(secret_keys, ["keys"]);
    assert_eq!(
        ticket_keys,
        mounted_keys.map(|dir| format!("{dir}/{}", secret_keys[0]))
    );
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Secret",
            "Service"
        ]
    );
}

/// Metric names in a PromQL expression (`mqttlb_…` identifiers).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("mqttlb_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The dashboard's panels, those inside collapsed rows included (a row
/// header is a panel of type `row`).
fn dashboard_panels() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/mqttlb.json"))
        .expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        out.extend(panel["panels"].as_array().into_iter().flatten().cloned());
        out.push(panel.clone());
    }
    out
}

/// Every panel has a unique id and its own place on the 24-column grid;
/// every panel but a row header queries something.
#[test]
fn dashboard_panels_have_unique_ids_and_do_not_overlap() {
    let panels = dashboard_panels();
    assert!(panels.len() >= 30, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().expect("title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "{title}: id taken"
        );
        let at = |k: &str| {
            p["gridPos"][k]
                .as_u64()
                .unwrap_or_else(|| panic!("{title}: gridPos.{k}"))
        };
        let (x, y, w, h) = (at("x"), at("y"), at("w"), at("h"));
        assert!(w >= 1 && h >= 1 && x + w <= 24, "{title}: {}", p["gridPos"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{title} overlaps another panel at ({cx}, {cy})"
                );
            }
        }
        if p["type"] != "row" {
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{title}: no query");
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                p["fieldConfig"]["defaults"]["unit"].is_string(),
                "{title}: unit"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_exists_in_a_live_scrape() {
    let mut wanted = BTreeSet::new();
    for panel in dashboard_panels() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            wanted.extend(metric_names(t["expr"].as_str().expect("expr")));
        }
    }
    assert!(wanted.len() >= 24, "{wanted:?}");

    // A live proxy that has seen connections, a refusal, health checks
    // and a failing backend, so every family has samples.
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let dead = free_port();
    let servers = [
        ("node1", node.addr),
        ("dead", format!("127.0.0.1:{dead}").parse().expect("addr")),
    ];
    let pool = "health = { check = \"mqtt\", interval = \"100ms\", timeout = \"500ms\" }";
    let proxy = ProxyUnderTest::start(&config(&certs, &servers, "", pool), certs.dir.path()).await;
    let admin = start_admin(&proxy).await;
    for i in 0..4 {
        let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
        assert_eq!(mqtt_connect(&mut s, 4, &format!("dash-{i}")).await, Some(0));
    }
    // And one refused client (HTTP on the MQTT port).
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        read_to_close(&mut s).await;
    }
    wait_until("health checks ran", DEADLINE, || async {
        proxy.metric("mqttlb_health_checks_total{backend=\"node1\",result=\"ok\"}") >= 1.0
    })
    .await;
    let (status, scrape) = http(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let present: BTreeSet<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = wanted.iter().filter(|m| !present.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "dashboard queries metrics the proxy does not export: {missing:?}"
    );
}
