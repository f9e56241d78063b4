//! Configurations written by mqttlb itself (`mqttlb demo`, `bench
//! calibrate`) and started from by tests: typed, as the file schema
//! ([`super::raw`]), changed field by field and rendered to TOML, so that
//! nothing restates the format as text or patches it with string
//! replacement that silently does nothing when the text changes.

use super::raw::{RawConfig, RawHealth, RawListener, RawMqtt, RawPool, RawServer, RawTls};

impl RawConfig {
    /// Render as TOML (what `Config::load` reads back).
    pub fn to_toml(&self) -> String {
        // Every field is a string, number, bool, table or array of them:
        // serialisation cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Add a pool; returns it for further settings.
    pub fn pool_mut(&mut self, name: &str) -> &mut RawPool {
        self.pool.entry(name.to_string()).or_default()
    }
}

impl RawListener {
    /// An MQTT-aware listener (`[listener.mqtt]` with defaults).
    pub fn mqtt(name: &str, listen: &str, pool: &str) -> RawListener {
        RawListener {
            name: Some(name.into()),
            listen: Some(listen.into()),
            pool: Some(pool.into()),
            mqtt: Some(RawMqtt::default()),
            ..RawListener::default()
        }
    }

    /// Terminate TLS with this certificate chain and key.
    pub fn with_tls(mut self, cert: &str, key: &str) -> RawListener {
        self.tls = Some(RawTls {
            cert: Some(cert.into()),
            key: Some(key.into()),
            ..RawTls::default()
        });
        self
    }
}

impl RawPool {
    /// A pool of `(name, address)` servers, everything else default.
    pub fn of(servers: &[(&str, &str)]) -> RawPool {
        RawPool {
            servers: servers
                .iter()
                .map(|(name, addr)| RawServer {
                    name: Some((*name).into()),
                    addr: (*addr).into(),
                    weight: None,
                    max_connections: None,
                })
                .collect(),
            ..RawPool::default()
        }
    }

    /// Health-check settings, for further changes.
    pub fn health_mut(&mut self) -> &mut RawHealth {
        self.health.get_or_insert_with(RawHealth::default)
    }
}

/// The usual shape: one MQTT-aware TLS listener `mqtts` on `listen`
/// forwarding to pool `pool` of `servers`.
pub fn tls_proxy(
    listen: &str,
    cert: &str,
    key: &str,
    pool: &str,
    servers: &[(&str, &str)],
) -> RawConfig {
    let mut c = RawConfig::default();
    c.listener
        .push(RawListener::mqtt("mqtts", listen, pool).with_tls(cert, key));
    c.pool.insert(pool.to_string(), RawPool::of(servers));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Strategy, parse_toml};

    #[test]
    fn a_template_round_trips_through_the_loader() {
        let mut raw = tls_proxy(
            "127.0.0.1:8883",
            "certs/server.pem",
            "certs/server.key",
            "nodes",
            &[("node1", "127.0.0.1:1883"), ("node2", "127.0.0.1:1884")],
        );
        raw.pool_mut("nodes").strategy = Some("client-id".into());
        raw.pool_mut("nodes").health_mut().interval = Some("1s".into());
        raw.limits.drain_timeout = Some("2s".into());
        let text = raw.to_toml();
        // The loader checks that certificate files exist.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        for f in ["server.pem", "server.key"] {
            std::fs::write(dir.path().join("certs").join(f), "").unwrap();
        }
        let config = Config::from_raw("t.toml", dir.path(), parse_toml("t.toml", &text).unwrap())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let pool = &config.pools["nodes"];
        assert_eq!(pool.strategy, Strategy::ClientId);
        assert_eq!(pool.servers.len(), 2);
        assert_eq!(pool.health.interval, std::time::Duration::from_secs(1));
        assert!(config.listeners[0].tls.is_some() && config.listeners[0].mqtt.is_some());
        assert_eq!(
            config.limits.drain_timeout,
            std::time::Duration::from_secs(2)
        );
    }
}
