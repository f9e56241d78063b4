//! A pool's admission keys: `max_connect_rate`, `queue = { size, timeout }`
//! and each server's `max_connections`. All off by default (rate 0, no
//! caps: the queue is never used); every value has bounds, and a value out
//! of them is an error naming its key.

use std::time::Duration;

use super::raw::{RawQueue, RawRebalance};
use super::*;
use crate::balance::config::{AdmissionConfig, RebalanceConfig};

impl Cx {
    /// `pool.NAME.max_connect_rate` and `pool.NAME.queue`; `k` is
    /// `pool.NAME`.
    pub(super) fn admission(
        &mut self,
        k: &str,
        rate: Option<u32>,
        queue: Option<RawQueue>,
    ) -> AdmissionConfig {
        let max_connect_rate = self.rate(&format!("{k}.max_connect_rate"), rate);
        let queue = queue.unwrap_or_default();
        let queue_size = match queue.size {
            None => defaults::QUEUE_SIZE,
            Some(n) if n <= defaults::MAX_QUEUE_SIZE => {
                usize::try_from(n).unwrap_or(defaults::QUEUE_SIZE)
            }
            Some(_) => {
                self.err(
                    &format!("{k}.queue.size"),
                    &format!(
                        "must be at most {} (0 = no waiting: refused at once)",
                        defaults::MAX_QUEUE_SIZE
                    ),
                );
                defaults::QUEUE_SIZE
            }
        };
        let key = format!("{k}.queue.timeout");
        let queue_timeout =
            self.duration_or_zero(&key, queue.timeout.as_deref(), defaults::QUEUE_TIMEOUT);
        let bounds = defaults::MIN_QUEUE_TIMEOUT..=defaults::MAX_QUEUE_TIMEOUT;
        let queue_timeout = if bounds.contains(&queue_timeout) {
            queue_timeout
        } else {
            self.err(
                &key,
                &format!(
                    "must be {} to {}",
                    text(defaults::MIN_QUEUE_TIMEOUT),
                    text(defaults::MAX_QUEUE_TIMEOUT)
                ),
            );
            defaults::QUEUE_TIMEOUT
        };
        AdmissionConfig {
            max_connect_rate,
            queue_size,
            queue_timeout,
        }
    }

    /// `pool.NAME.rebalance = { after, rate }`; `k` is `pool.NAME`.
    pub(super) fn rebalance(&mut self, k: &str, raw: RawRebalance) -> RebalanceConfig {
        let key = format!("{k}.rebalance.after");
        let after = self.duration_or_zero(&key, raw.after.as_deref(), defaults::REBALANCE_AFTER);
        let after = if after > defaults::MAX_REBALANCE_AFTER {
            self.err(
                &key,
                &format!("must be at most {}", text(defaults::MAX_REBALANCE_AFTER)),
            );
            defaults::REBALANCE_AFTER
        } else {
            after
        };
        let rate = match raw.rate {
            None => defaults::REBALANCE_RATE,
            Some(r) if (1..=defaults::MAX_REBALANCE_RATE).contains(&r) => r,
            Some(_) => {
                self.err(
                    &format!("{k}.rebalance.rate"),
                    &format!(
                        "must be 1 to {} clients per second",
                        defaults::MAX_REBALANCE_RATE
                    ),
                );
                defaults::REBALANCE_RATE
            }
        };
        RebalanceConfig { after, rate }
    }

    /// `…servers[i].max_connections`; `k` is the server's key.
    pub(super) fn node_cap(&mut self, k: &str, v: Option<u32>) -> u32 {
        self.zero_or_at_most(
            &format!("{k}.max_connections"),
            v,
            defaults::MAX_NODE_CONNECTIONS,
            "no cap",
        )
    }
}

fn text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
        [[listener]]
        name = "plain"
        listen = "127.0.0.1:1884"
        pool = "b"
        [listener.mqtt]
        [pool.b]
    "#;

    fn load(pool: &str) -> Result<Config, ConfigErrors> {
        let text = format!(
            "{BASE}{pool}\nservers = [ {{ name = \"n1\", addr = \"127.0.0.1:1883\", max_connections = 5 }}, {{ addr = \"b.example:1883\", max_connections = 7 }}, {{ addr = \"127.0.0.1:1885\" }} ]\n"
        );
        let raw = parse_toml("t.toml", &text)?;
        Config::from_raw("t.toml", Path::new(""), raw)
    }

    fn keys(pool: &str) -> Vec<String> {
        load(pool)
            .expect_err("out of bounds")
            .0
            .into_iter()
            .map(|e| e.key)
            .collect()
    }

    #[test]
    fn admission_is_off_by_default_and_node_caps_are_kept() {
        let c = load("").expect("valid");
        let p = &c.pools["b"];
        assert_eq!(
            p.admission,
            AdmissionConfig {
                max_connect_rate: 0,
                queue_size: defaults::QUEUE_SIZE,
                queue_timeout: defaults::QUEUE_TIMEOUT,
            }
        );
        assert_eq!(p.servers[0].max_connections, 5);
        assert_eq!(p.servers[1].max_connections, 0, "no cap by default");
        assert_eq!(p.dns[0].max_connections, 7, "DNS nodes carry their cap");
        let c = load("max_connect_rate = 200\nqueue = { size = 0, timeout = \"100ms\" }")
            .expect("valid");
        assert_eq!(
            c.pools["b"].admission,
            AdmissionConfig {
                max_connect_rate: 200,
                queue_size: 0,
                queue_timeout: Duration::from_millis(100),
            }
        );
        let c = load("queue = { size = 1000000, timeout = \"5m\" }").expect("valid");
        assert_eq!(c.pools["b"].admission.queue_size, 1_000_000);
    }

    #[test]
    fn rebalance_is_off_unless_configured_and_bounded() {
        assert_eq!(load("").expect("valid").pools["b"].rebalance, None);
        let c = load("rebalance = {}").expect("valid");
        assert_eq!(
            c.pools["b"].rebalance,
            Some(RebalanceConfig {
                after: defaults::REBALANCE_AFTER,
                rate: defaults::REBALANCE_RATE,
            })
        );
        let c = load("rebalance = { after = \"0s\", rate = 5 }").expect("valid");
        assert_eq!(
            c.pools["b"].rebalance,
            Some(RebalanceConfig {
                after: Duration::ZERO,
                rate: 5,
            })
        );
        assert_eq!(keys("rebalance = { rate = 0 }"), ["pool.b.rebalance.rate"]);
        assert_eq!(
            keys("rebalance = { rate = 100001 }"),
            ["pool.b.rebalance.rate"]
        );
        assert_eq!(
            keys("rebalance = { after = \"2h\" }"),
            ["pool.b.rebalance.after"]
        );
        assert!(keys("rebalance = { rat = 1 }")[0].starts_with("pool.b.rebalance"));
    }

    #[test]
    fn out_of_bounds_values_name_their_key() {
        assert_eq!(
            keys("max_connect_rate = 1000001"),
            ["pool.b.max_connect_rate"]
        );
        assert_eq!(keys("queue = { size = 1000001 }"), ["pool.b.queue.size"]);
        for bad in ["99ms", "0s", "301s", "soon"] {
            assert_eq!(
                keys(&format!("queue = {{ timeout = \"{bad}\" }}")),
                ["pool.b.queue.timeout"],
                "{bad}"
            );
        }
        let e = load("queue = { timeout = \"6m\" }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be 100ms to 5m"), "{e}");
        let e = load("queue = { sise = 1 }").unwrap_err();
        assert!(e.0[0].key.starts_with("pool.b.queue"), "{e}");
        let text = format!(
            "{BASE}servers = [ {{ addr = \"127.0.0.1:1883\", max_connections = 10000001 }} ]\n"
        );
        let raw = parse_toml("t.toml", &text).expect("TOML");
        let e = Config::from_raw("t.toml", Path::new(""), raw).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].key, "pool.b.servers[0].max_connections");
        assert!(e.0[0].reason.contains("0 = no cap"), "{e}");
    }
}
