//! Command-line flags of `mqttlb proxy`, applied to the raw configuration
//! before it is validated (so their errors name the flag's key).

use super::raw::{RawConfig, RawListener, RawServer, RawTls};

/// Command-line flags of `mqttlb proxy`; each overrides its config key.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
    pub backends: Vec<String>,
    pub strategy: Option<String>,
    pub proxy_protocol: Option<String>,
    pub admin: Option<String>,
    /// `--upgrade-socket` → `upgrade.socket`.
    pub upgrade_socket: Option<String>,
}

impl Overrides {
    fn is_empty(&self) -> bool {
        self.listen.is_none()
            && self.cert.is_none()
            && self.key.is_none()
            && self.client_ca.is_none()
            && self.backends.is_empty()
            && self.strategy.is_none()
            && self.proxy_protocol.is_none()
    }

    /// Apply the flags to the first listener and the pool it uses, creating
    /// an MQTT-aware TLS listener and a pool named `default` when the file
    /// has none.
    pub(super) fn apply(&self, raw: &mut RawConfig) {
        if let Some(a) = &self.admin {
            raw.admin.get_or_insert_with(Default::default).listen = Some(a.clone());
        }
        if let Some(s) = &self.upgrade_socket {
            raw.upgrade.get_or_insert_with(Default::default).socket = Some(s.clone());
        }
        if self.is_empty() {
            return;
        }
        if raw.listener.is_empty() {
            raw.listener.push(RawListener {
                name: Some("mqtts".into()),
                mqtt: Some(Default::default()),
                tls: Some(RawTls::default()),
                ..Default::default()
            });
        }
        let Some(listener) = raw.listener.first_mut() else {
            return; // pushed above
        };
        let pool_name = listener
            .pool
            .get_or_insert_with(|| "default".into())
            .clone();
        if let Some(l) = &self.listen {
            listener.listen = Some(l.clone());
        }
        if self.cert.is_some() || self.key.is_some() || self.client_ca.is_some() {
            let tls = listener.tls.get_or_insert_with(RawTls::default);
            if let Some(c) = &self.cert {
                tls.cert = Some(c.clone());
            }
            if let Some(k) = &self.key {
                tls.key = Some(k.clone());
            }
            if let Some(ca) = &self.client_ca {
                tls.client_ca = Some(ca.clone());
                tls.client_auth.get_or_insert_with(|| "required".into());
            }
        }
        let pool = raw.pool.entry(pool_name).or_default();
        if !self.backends.is_empty() {
            pool.servers = self
                .backends
                .iter()
                .enumerate()
                .map(|(i, addr)| RawServer {
                    name: Some(format!("node{}", i + 1)),
                    addr: addr.clone(),
                    weight: None,
                    max_connections: None,
                })
                .collect();
        }
        if let Some(s) = &self.strategy {
            pool.strategy = Some(s.clone());
        }
        if let Some(p) = &self.proxy_protocol {
            pool.proxy_protocol = Some(p.clone());
        }
    }
}
