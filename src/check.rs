//! `mqttlb check`: validate a configuration file the way the server that
//! would read it does, TLS files included.

use std::path::Path;

use prometheus_client::registry::Registry;

use crate::config::broker::{BrokerConfig, BrokerOverrides};
use crate::config::{Config, ConfigErrors, Overrides};
use crate::proxy::Proxy;

/// Which server a configuration file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Proxy,
    Broker,
}

/// A file with a top-level `[broker]` table configures `mqttlb broker`;
/// anything else, the proxy (whose errors then explain what is wrong).
pub fn kind_of(text: &str) -> Kind {
    match text.parse::<toml::Table>() {
        Ok(t) if t.contains_key("broker") => Kind::Broker,
        _ => Kind::Proxy,
    }
}

/// Load and validate `path`; for the proxy, also load every certificate,
/// key and CA (as a start or reload would). Errors name file, key and
/// reason.
pub fn check(path: &Path) -> Result<Kind, ConfigErrors> {
    let kind = std::fs::read_to_string(path)
        .map(|t| kind_of(&t))
        .unwrap_or(Kind::Proxy);
    match kind {
        Kind::Broker => BrokerConfig::load(Some(path), &BrokerOverrides::default()).map(|_| kind),
        Kind::Proxy => Config::load(Some(path), &Overrides::default())
            .and_then(|c| Proxy::build(c, &mut Registry::default()))
            .map(|_| kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_table_makes_a_broker_config() {
        assert_eq!(
            kind_of("[broker]\nlisten = \"127.0.0.1:1883\"\n"),
            Kind::Broker
        );
        assert_eq!(kind_of("[[listener]]\nname = \"x\"\n"), Kind::Proxy);
        assert_eq!(kind_of("not toml ["), Kind::Proxy);
    }

    #[test]
    fn check_reports_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let broker = dir.path().join("broker.toml");
        std::fs::write(&broker, "[broker]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(check(&broker), Ok(Kind::Broker));

        let proxy = dir.path().join("proxy.toml");
        std::fs::write(
            &proxy,
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
             [listener.tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n\
             [pool.p]\nservers = [ { addr = \"127.0.0.1:1883\" } ]\n",
        )
        .unwrap();
        let errors = check(&proxy).unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.file.ends_with("proxy.toml") && e.key.starts_with("listener")),
            "{errors:?}"
        );
    }
}
