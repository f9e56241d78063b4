//! `mqttlb estimate` as operators run it: the `--json` arithmetic against a
//! calibration with round numbers, the shipped calibration, and exit 64
//! naming the flag, file or key at fault.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mqttlb::estimate::Calibration;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mqttlb");

/// Round coefficients, so every figure below can be checked by hand.
const ROUND: &str = r#"
[measured]
command = "mqttlb bench calibrate --out round.toml"
date = "2026-01-01T00:00:00Z"
mqttlb_version = "0.1.0"
cpu_model = "test"
cpus = 64
payload_bytes = 100

[proxy]
tls_connect_cpu_us = 1000.0
plain_connect_cpu_us = 100.0
packet_cpu_us = 9.0
byte_cpu_ns = 10.0
rss_base_mib = 10.0
rss_per_tls_connection_kib = 16.0
rss_per_plain_connection_kib = 8.0

[proxy.wakeups]
background_cpu_us_per_s = 1000.0
thread_wakeup_cpu_us = 0.0
wakeup_cpu_us = 2.0
coalesce_us = 0.0
thread_coalesce_us = 0.0

[broker]
cpu_us_per_publish_in = 5.0
cpu_us_per_delivery = 4.0
cpu_us_per_ack = 1.0
connect_cpu_us = 50.0
rss_base_mib = 20.0
rss_per_connection_kib = 10.0

[broker.wakeups]
background_cpu_us_per_s = 0.0
thread_wakeup_cpu_us = 0.0
wakeup_cpu_us = 0.0
coalesce_us = 0.0
thread_coalesce_us = 0.0
"#;

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("estimate")
        .args(args)
        .output()
        .expect("runs mqttlb")
}

fn json(args: &[&str]) -> Value {
    let out = run(&[&["--json"], args].concat());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn write_calibration(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("calibration.toml");
    std::fs::write(&path, text).expect("write calibration");
    path
}

#[track_caller]
fn assert_close(v: &Value, expected: f64) {
    let got = v.as_f64().unwrap_or(f64::NAN);
    assert!(
        (got - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "got {v}, expected {expected}"
    );
}

/// The cores busy of one term of a component.
fn term<'a>(component: &'a Value, name: &str) -> &'a Value {
    let terms = component["cpu"].as_array().expect("cpu terms");
    let t = terms
        .iter()
        .find(|t| t["term"] == name)
        .unwrap_or_else(|| panic!("term {name} in {component}"));
    &t["cores"]
}

#[test]
fn json_arithmetic_matches_a_hand_computation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cal = write_calibration(dir.path(), ROUND);
    let cal = cal.to_str().expect("utf-8 path");
    let v = json(&[
        "--calibration",
        cal,
        "--connections",
        "1000",
        "--publish-rate",
        "100000",
        "--fan-out",
        "2",
        "--payload",
        "100B",
        "--qos",
        "1",
        "--new-connections-per-second",
        "10",
        "--keep-alive",
        "10s",
        "--headroom",
        "0.5",
    ]);
    assert_close(&v["inputs"]["deliveries_per_s"], 200_000.0);
    assert_close(&v["inputs"]["pingreqs_per_s"], 100.0);
    assert_eq!(v["calibration"]["source"], cal);
    assert_eq!(
        v["calibration"]["measured"]["command"],
        "mqttlb bench calibrate --out round.toml"
    );

    // Proxy: 2 nodes, sized for 1 carrying everything.
    let p = &v["proxy"];
    assert_eq!(p["nodes"], 2);
    assert_eq!(p["per_node"]["live_nodes"], 1);
    assert_close(term(p, "handshakes"), 0.01); // 10/s × 1000 µs
    assert_close(term(p, "relay_publish"), 3.0); // (100k + 200k)/s × (9 + 100 B × 10 ns) µs
    assert_close(term(p, "relay_acks"), 2.7); // 300k PUBACK/s × 9 µs
    assert_close(term(p, "keep_alive"), 0.0018); // 2 × 1000 / 10 s × 9 µs
    // No shape given: each of the 1,000 clients publishes 100/s and
    // receives 200/s, each with its PUBACK, and pings: 600,200 socket
    // reads a second, none sharing a wake-up (coalescing 0). (Thread
    // wake-ups, which depend on how busy the node is, are priced 0 here;
    // the model's unit tests cover them.)
    assert_close(term(p, "relay_wakeups"), 1.2004); // 600,200/s × 2 µs
    assert_close(term(p, "relay_thread_wakeups"), 0.0);
    assert_close(term(p, "background"), 0.001); // 1,000 µs a second
    assert_close(&p["per_node"]["cpu_busy"], 6.9132);
    assert_eq!(p["per_node"]["cores"], 14); // 6.9132 / 0.5
    assert_eq!(p["per_node_all_up"]["cores"], 7); // 3.4571 / 0.5
    // 10 MiB + 1000 × 16 KiB + 2000 sockets × 4 KiB = 33.4375 MiB.
    assert_close(&p["per_node"]["memory_used_mib"], 33.4375);
    assert_close(&p["per_node"]["memory_mib"], 66.875);
    assert_eq!(p["bottleneck"], "message_relay");
    // Losing one proxy: 500 clients × 1000 µs on 14 − 6.9132 spare cores.
    assert_close(&p["reconnect_storm"]["cpu_seconds"], 0.5);
    assert_close(&p["reconnect_storm"]["seconds_at_spare"], 0.5 / 7.0868);

    // Broker: 3 nodes, sized for 2; every node parses every message.
    let b = &v["broker"];
    assert_eq!(b["per_node"]["live_nodes"], 2);
    assert_close(term(b, "connects"), 0.00025); // 5/s × 50 µs
    assert_close(term(b, "publish_in"), 0.25); // 50k/s × 5 µs
    assert_close(term(b, "deliveries"), 0.4); // 100k/s × 4 µs
    assert_close(term(b, "qos_acks"), 0.15); // 150k exchanges × 1 ack × 1 µs
    assert_close(term(b, "mesh"), 0.55); // 50k × (5 + 4 + 2 × 1) µs
    assert_close(term(b, "keep_alive"), 0.00045); // 50/s × (5 + 4) µs
    assert_close(&b["per_node"]["cpu_busy"], 1.3507);
    assert_eq!(b["per_node"]["cores"], 3);
    // 20 MiB + 500 × (10 + 4) KiB.
    assert_close(
        &b["per_node"]["memory_used_mib"],
        20.0 + 500.0 * 14.0 / 1024.0,
    );
    assert_eq!(b["bottleneck"], "message_routing");
    // Losing a broker node, nothing paced: its 333 clients come back as
    // fast as the 2 proxies handshake on their spare cores, (14 − 3.4571)
    // / 1000 µs each, and the 2 survivors take them on top of 1.3507.
    let a = &b["reconnect_storm"]["admission"];
    assert_eq!(a["paced"], false);
    assert_close(&a["arrival_per_s"], 2.0 * 10542.9);
    assert_close(&a["broker_rate_per_s"], 2.0 * 10542.9);
    assert_close(&a["broker_cpu_peak"], 1.3507 + 10542.9 * 50e-6);
    assert_eq!(a["queue"], Value::Null);
    assert_eq!(v["warnings"].as_array().map(Vec::len), Some(0));
}

#[test]
fn losing_a_broker_node_with_a_connect_rate() {
    // 30,000 clients, 3 broker nodes: 10,000 come back through 2 proxies
    // at 100/s each.
    let args = [
        "--connections",
        "30000",
        "--max-connect-rate",
        "100",
        "--queue-size",
        "20000",
        "--queue-timeout",
        "5m",
    ];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "pace             max_connect_rate 100/s × 2 proxies = 200/s to the 2 survivors: \
             all back in ≈ 50 s"
        ),
        "{text}"
    );
    assert!(text.contains("holds the wave"), "{text}");
    let v = json(&args);
    let a = &v["broker"]["reconnect_storm"]["admission"];
    assert_eq!(a["paced"], true);
    assert_close(&a["seconds"], 50.0);
    assert_eq!(a["queue"]["refused"], 0.0);
    assert_eq!(v["inputs"]["queue_timeout_s"], 300.0);

    // The default queue (10,000 for 10 s) cannot hold it: a retry wave,
    // and a concrete way out.
    let v = json(&args[..4]);
    let q = &v["broker"]["reconnect_storm"]["admission"]["queue"];
    assert!(q["refused"].as_f64().unwrap_or(0.0) > 0.0, "{q}");
    assert_eq!(q["refused_by"], "timeout");
    let notes = v["warnings"].to_string();
    assert!(notes.contains("--max-connect-rate"), "{notes}");
    assert!(notes.contains("queue.timeout to"), "{notes}");
}

#[test]
fn publishers_and_subscribers_give_rate_and_fan_out() {
    let v = json(&[
        "--publishers",
        "100",
        "--subscribers",
        "1000",
        "--rate-per-publisher",
        "2",
        "--topics",
        "10",
    ]);
    let i = &v["inputs"];
    assert_close(&i["publish_rate"], 200.0);
    assert_close(&i["fan_out"], 100.0); // 1000 subscribers over 10 topics
    assert_close(&i["deliveries_per_s"], 20_000.0);
    assert_eq!(i["connections"], 1100);
}

#[test]
fn shipped_calibration_parses_and_is_the_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/calibration.toml");
    let text = std::fs::read_to_string(&path).expect("config/calibration.toml");
    let cal: Calibration = toml::from_str(&text).expect("deserializes into Calibration");
    assert_eq!(
        Calibration::parse("config/calibration.toml", &text).expect("valid"),
        cal
    );

    let v = json(&[]);
    assert_eq!(
        v["calibration"]["source"],
        "config/calibration.toml (built in)"
    );
    assert_eq!(
        v["calibration"]["measured"]["command"].as_str(),
        Some(cal.measured.command.as_str())
    );

    let out = run(&["--connections", "100000", "--publish-rate", "20000"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "connections          100,000",
        "size each node",
        "bottleneck",
        "relay PUBLISH",
        "mesh",
        cal.measured.command.as_str(),
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }
}

#[test]
fn bad_flags_exit_64_naming_the_flag() {
    let cases: [(&[&str], &str); 13] = [
        (&["--tls-share", "1.5"], "--tls-share"),
        (&["--max-connect-rate", "2000000"], "--max-connect-rate"),
        (&["--queue-size", "many"], "--queue-size"),
        (&["--queue-timeout", "10m"], "--queue-timeout"),
        (&["--headroom", "0"], "--headroom"),
        (&["--headroom", "1.5"], "--headroom"),
        (&["--publish-rate=-5"], "--publish-rate"),
        (&["--payload", "lots"], "--payload"),
        (&["--keep-alive", "forever"], "--keep-alive"),
        (&["--qos", "3"], "--qos"),
        (&["--broker-nodes", "0"], "--broker-nodes"),
        (
            &["--publish-rate", "1", "--publishers", "1"],
            "--publishers",
        ),
        (&["--topics", "5"], "--subscribers"),
    ];
    for (args, flag) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {flag} in {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn bad_calibration_exits_64_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            ROUND.replace("connect_cpu_us = 50.0", "connect_cpu_us = -50.0"),
            "broker.connect_cpu_us",
        ),
        (
            ROUND.replace("cpus = 64", "cpus = 64\ncores = 64"),
            "unknown field `cores`",
        ),
        (ROUND.replace("byte_cpu_ns = 10.0", ""), "byte_cpu_ns"),
        (
            ROUND.replace(
                "coalesce_us = 0.0\nthread_coalesce_us",
                "coalesce_us = -1.0\nthread_coalesce_us",
            ),
            "proxy.wakeups.coalesce_us",
        ),
        (ROUND.replace("[broker]", "[broker"), "line 26"),
    ];
    for (text, key) in &cases {
        let path = write_calibration(dir.path(), text);
        let out = run(&["--calibration", path.to_str().expect("utf-8 path")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{key}: {stderr}");
        assert!(stderr.contains(path.to_str().unwrap_or("?")), "{stderr}");
        assert!(stderr.contains(key), "{key} in {stderr}");
    }

    let missing = dir.path().join("missing.toml");
    let out = run(&["--calibration", missing.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

/// Every `<!-- mqttlb estimate FLAGS -->` in docs/sizing.md is followed by
/// a fenced block holding exactly what that command prints with the
/// built-in calibration: the documented figures are the binary's.
#[test]
fn documented_estimates_match_the_binary() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/sizing.md");
    let doc = std::fs::read_to_string(&path).expect("docs/sizing.md");
    let mut checked = 0;
    let mut rest = doc.as_str();
    while let Some(at) = rest.find("<!-- mqttlb estimate ") {
        let after = &rest[at + "<!-- mqttlb estimate ".len()..];
        let end = after.find("-->").expect("marker ends");
        let flags: Vec<&str> = after[..end].split_whitespace().collect();
        let block = after[end..]
            .split_once("```text\n")
            .and_then(|(_, b)| b.split_once("```"))
            .map(|(b, _)| b)
            .expect("a ```text block follows the marker");
        let out = run(&flags);
        assert_eq!(out.status.code(), Some(0), "{flags:?}");
        let printed = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            printed.trim_end(),
            block.trim_end(),
            "docs/sizing.md shows another output for `mqttlb estimate {}`; paste the binary's",
            flags.join(" ")
        );
        checked += 1;
        rest = &after[end..];
    }
    assert!(checked >= 2, "docs/sizing.md documents {checked} estimates");
}

/// `scripts/sizing-check` parses its runs and explains a bad one (the
/// measured runs themselves are a benchmark: `sizing_check_measures`).
#[test]
fn sizing_check_explains_a_bad_run() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sizing-check");
    let help = Command::new("python3")
        .arg(&script)
        .arg("--help")
        .output()
        .expect("python3 runs");
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--matrix"));
    let bad = Command::new("python3")
        .arg(&script)
        .args(["--no-build", "conns=10,pubs=20,rate=1,subs=1"])
        .output()
        .expect("python3 runs");
    assert_ne!(bad.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("conns must be at least pubs + subs"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// One small measured run of `scripts/sizing-check` end to end (release
/// build, two CPUs, about a minute): `cargo test --release --test estimate
/// -- --ignored`.
#[test]
#[ignore = "a benchmark: needs the release build and two quiet CPUs for a minute"]
fn sizing_check_measures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("scripts/sizing-check"))
        .args([
            "--bin",
            BIN,
            "--no-build",
            "--window",
            "3",
            "conns=102,pubs=50,rate=2,subs=2,shape=all",
        ])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("proxy CPU (cores)") && text.contains("0 lost"),
        "{text}"
    );
}
