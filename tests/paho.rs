//! The broker against Eclipse paho-mqtt (Python, from PyPI): the
//! interoperability scenarios in `tests/interop/paho_interop.py`, MQTT 3.1.1
//! and 5.0. `scripts/test` installs paho-mqtt when missing.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_interoperability_scenarios_pass() {
    let node = BrokerUnderTest::start(|c| c.deny_subscribe = vec!["test/nosubscribe".into()]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_interop.py");
    // Fourteen scenarios, each bounded by its own 15 s waits.
    let (ok, out) = run_within(
        tokio::process::Command::new("python3").args([
            script,
            "127.0.0.1",
            &node.addr.port().to_string(),
        ]),
        std::time::Duration::from_secs(300),
    )
    .await;
    assert!(ok, "paho scenarios failed:\n{out}");
    assert!(out.contains("14/14 scenarios passed"), "{out}");
}
