//! `[[listener.route]]`: a listener's routing rules, checked against the
//! listener they belong to (a rule that could never match is an error, not
//! a silent no-op) and the pools defined.

use std::collections::BTreeMap;

use super::raw::RawRoute;
use super::*;

/// What a listener gives its routes to match on.
pub(super) struct RouteScope<'a> {
    /// `listener[i]`, the prefix of every key.
    pub key: &'a str,
    pub tls: Option<&'a TlsConfig>,
    /// MQTT-aware: the CONNECT is read, so client ids and user names exist.
    pub mqtt: bool,
    /// The listener's own pool (its checks are reported apart).
    pub pool: &'a str,
    /// Forwards WebSockets (`to = "ws"`) to its pools' servers.
    pub ws_forward: bool,
}

impl Cx {
    /// Convert a listener's rules; every problem is reported under
    /// `listener[i].route[j].KEY`.
    pub(super) fn routes(
        &mut self,
        scope: &RouteScope<'_>,
        raw: Vec<RawRoute>,
        pools: &BTreeMap<String, PoolConfig>,
    ) -> Vec<RouteConfig> {
        let k = scope.key;
        if raw.len() > defaults::MAX_ROUTES {
            self.err(
                &format!("{k}.route"),
                &format!(
                    "{} routes; at most {} per listener",
                    raw.len(),
                    defaults::MAX_ROUTES
                ),
            );
        }
        let mut routes: Vec<RouteConfig> = Vec::new();
        for (j, r) in raw.into_iter().enumerate() {
            let route = self.route(scope, &format!("{k}.route[{j}]"), j, r, pools);
            if routes.iter().any(|o| o.name == route.name) {
                self.err(
                    &format!("{k}.route[{j}].name"),
                    &format!("duplicate route name {:?} in this listener", route.name),
                );
            }
            routes.push(route);
        }
        if scope.ws_forward {
            let mut reported: Vec<&str> = vec![scope.pool];
            for r in &routes {
                let mqtt_check = pools
                    .get(&r.pool)
                    .is_some_and(|p| p.health.check == HealthCheckKind::Mqtt);
                if mqtt_check && !reported.contains(&r.pool.as_str()) {
                    reported.push(&r.pool);
                    self.err(
                        &format!("pool.{}.health.check", r.pool),
                        &format!(
                            "\"mqtt\" checks speak MQTT over TCP, but {k} forwards WebSockets \
                             (to = \"ws\") to this pool's servers by a route: use check = \"tcp\""
                        ),
                    );
                }
            }
        }
        routes
    }

    fn route(
        &mut self,
        scope: &RouteScope<'_>,
        rk: &str,
        j: usize,
        raw: RawRoute,
        pools: &BTreeMap<String, PoolConfig>,
    ) -> RouteConfig {
        let name = raw.name.unwrap_or_else(|| format!("route{j}"));
        let name_ok = (1..=defaults::MAX_ROUTE_NAME).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            self.err(
                &format!("{rk}.name"),
                &format!(
                    "must be 1 to {} letters, digits, '-', '_' or '.'",
                    defaults::MAX_ROUTE_NAME
                ),
            );
        } else if name == "default" {
            self.err(
                &format!("{rk}.name"),
                "\"default\" names the clients no rule matched (the listener's pool)",
            );
        }
        let pool = match raw.pool {
            Some(p) if pools.contains_key(&p) => p,
            Some(p) => {
                self.err(&format!("{rk}.pool"), &format!("no [pool.{p}] is defined"));
                p
            }
            None => {
                self.err(
                    &format!("{rk}.pool"),
                    "missing: name the [pool.NAME] matching clients go to",
                );
                String::new()
            }
        };
        let sni = raw.sni.as_deref().and_then(|s| match SniPattern::parse(s) {
            Ok(p) => Some(p),
            Err(e) => {
                self.err(&format!("{rk}.sni"), &e);
                None
            }
        });
        if raw.sni.is_some() && scope.tls.is_none() {
            self.err(
                &format!("{rk}.sni"),
                "needs [listener.tls]: a plain listener's clients send no server name",
            );
        }
        let cert_cn_prefix = self.prefix(&format!("{rk}.cert_cn_prefix"), raw.cert_cn_prefix);
        if cert_cn_prefix.is_some() && scope.tls.is_none_or(|t| t.client_auth == ClientAuth::None) {
            self.err(
                &format!("{rk}.cert_cn_prefix"),
                "needs client certificates: [listener.tls] with client_auth = \"required\" (or \"optional\")",
            );
        }
        let client_id_prefix = self.prefix(&format!("{rk}.client_id_prefix"), raw.client_id_prefix);
        let username_prefix = self.prefix(&format!("{rk}.username_prefix"), raw.username_prefix);
        for (key, given) in [
            ("client_id_prefix", client_id_prefix.is_some()),
            ("username_prefix", username_prefix.is_some()),
        ] {
            if given && !scope.mqtt {
                self.err(
                    &format!("{rk}.{key}"),
                    "needs an MQTT-aware listener ([listener.mqtt]): it is read from the CONNECT",
                );
            }
        }
        let when = RouteMatch {
            sni,
            cert_cn_prefix,
            client_id_prefix,
            username_prefix,
        };
        let any_given = raw.sni.is_some() || !when.is_empty();
        if !any_given {
            self.err(
                rk,
                "a route needs at least one of sni, client_id_prefix, username_prefix, cert_cn_prefix",
            );
        }
        RouteConfig { name, when, pool }
    }

    /// A prefix matcher: at most [`defaults::MAX_ROUTE_PREFIX`] bytes.
    fn prefix(&mut self, key: &str, v: Option<String>) -> Option<String> {
        let v = v?;
        if v.len() > defaults::MAX_ROUTE_PREFIX {
            self.err(
                key,
                &format!("at most {} bytes", defaults::MAX_ROUTE_PREFIX),
            );
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [[listener]]
        name = "mqtts"
        listen = "127.0.0.1:8883"
        pool = "main"
        [listener.tls]
        cert = "server.pem"
        key = "server.key"
        client_auth = "optional"
        client_ca = "ca.pem"
        [listener.mqtt]
        [pool.main]
        servers = [ { addr = "127.0.0.1:1883" } ]
        [pool.tenant-a]
        servers = [ { addr = "127.0.0.1:1884" } ]
    "#;

    /// `BASE` plus `extra` in a temporary directory holding the files it
    /// names: (errors, or the first listener's routes).
    fn load(extra: &str) -> Result<Vec<RouteConfig>, Vec<ConfigError>> {
        load_with(BASE, extra)
    }

    fn load_with(base: &str, extra: &str) -> Result<Vec<RouteConfig>, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        for f in ["server.pem", "server.key", "ca.pem"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let text = format!("{base}\n{extra}");
        let raw = parse_toml("t.toml", &text).map_err(|e| e.0)?;
        Config::from_raw("t.toml", dir.path(), raw)
            .map(|c| c.listeners[0].routes.clone())
            .map_err(|e| e.0)
    }

    fn keys(errors: &[ConfigError]) -> Vec<&str> {
        errors.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn routes_convert_in_order_with_default_names() {
        let routes = load(
            r#"
            [[listener.route]]
            sni = "*.Tenant-A.example.com"
            pool = "tenant-a"
            [[listener.route]]
            name = "factory-7"
            client_id_prefix = "factory-7/"
            username_prefix = ""
            cert_cn_prefix = "dev-"
            pool = "tenant-a"
            "#,
        )
        .expect("valid");
        assert_eq!(
            routes,
            [
                RouteConfig {
                    name: "route0".into(),
                    when: RouteMatch {
                        sni: Some(SniPattern::Wildcard("tenant-a.example.com".into())),
                        ..RouteMatch::default()
                    },
                    pool: "tenant-a".into(),
                },
                RouteConfig {
                    name: "factory-7".into(),
                    when: RouteMatch {
                        sni: None,
                        cert_cn_prefix: Some("dev-".into()),
                        client_id_prefix: Some("factory-7/".into()),
                        username_prefix: Some(String::new()),
                    },
                    pool: "tenant-a".into(),
                },
            ]
        );
        assert!(load("").expect("valid").is_empty());
    }

    #[test]
    fn every_route_problem_names_its_key() {
        let errors = load(&format!(
            r#"
            [[listener.route]]
            pool = "tenant-b"
            sni = "a.*.example.com"
            [[listener.route]]
            name = "default"
            pool = "main"
            [[listener.route]]
            name = "bad name"
            client_id_prefix = "{long}"
            [[listener.route]]
            name = "route0"
            username_prefix = "u"
            pool = "main"
            "#,
            long = "x".repeat(257)
        ))
        .expect_err("invalid");
        assert_eq!(
            keys(&errors),
            [
                "listener[0].route[0].pool",
                "listener[0].route[0].sni",
                "listener[0].route[1].name",
                "listener[0].route[1]",
                "listener[0].route[2].name",
                "listener[0].route[2].pool",
                "listener[0].route[2].client_id_prefix",
                "listener[0].route[3].name",
            ],
            "{errors:?}"
        );
        let text = ConfigErrors(errors).to_string();
        assert!(
            text.contains("t.toml: listener[0].route[0].pool: no [pool.tenant-b] is defined"),
            "{text}"
        );
        assert!(text.contains("at least one of sni"), "{text}");
        assert!(text.contains("at most 256 bytes"), "{text}");
        assert!(text.contains("duplicate route name \"route0\""), "{text}");
    }

    #[test]
    fn a_route_must_be_able_to_match_on_its_listener() {
        // Pass-through TLS without client certificates.
        let base = BASE
            .replace("[listener.mqtt]", "")
            .replace("client_auth = \"optional\"", "client_auth = \"none\"");
        let errors = load_with(
            &base,
            r#"
            [[listener.route]]
            sni = "a.example.com"
            client_id_prefix = "c"
            username_prefix = "u"
            cert_cn_prefix = "d"
            pool = "tenant-a"
            "#,
        )
        .expect_err("invalid");
        assert_eq!(
            keys(&errors),
            [
                "listener[0].route[0].cert_cn_prefix",
                "listener[0].route[0].client_id_prefix",
                "listener[0].route[0].username_prefix",
            ]
        );
        // SNI alone is fine there; on a plain listener it is not.
        let sni_only = "[[listener.route]]\nsni = \"a.example.com\"\npool = \"tenant-a\"\n";
        assert_eq!(load_with(&base, sni_only).expect("valid").len(), 1);
        let plain = BASE.split("[listener.tls]").next().unwrap().to_string()
            + "[pool.main]\nservers = [ { addr = \"127.0.0.1:1883\" } ]\n\
               [pool.tenant-a]\nservers = [ { addr = \"127.0.0.1:1884\" } ]\n";
        let errors = load_with(&plain, sni_only).expect_err("no TLS");
        assert_eq!(keys(&errors), ["listener[0].route[0].sni"]);
    }

    #[test]
    fn routes_per_listener_are_bounded() {
        let many: String = (0..=defaults::MAX_ROUTES)
            .map(|i| {
                format!("[[listener.route]]\nsni = \"h{i}.example.com\"\npool = \"tenant-a\"\n")
            })
            .collect();
        let errors = load(&many).expect_err("too many");
        assert_eq!(keys(&errors), ["listener[0].route"]);
    }

    #[test]
    fn forwarded_websockets_need_tcp_checks_in_routed_pools_too() {
        let base = BASE.replace("[listener.mqtt]", "[listener.websocket]\nto = \"ws\"")
            + "[pool.tenant-a.health]\ncheck = \"mqtt\"\n";
        let errors = load_with(
            &base,
            "[[listener.route]]\nsni = \"a.example.com\"\npool = \"tenant-a\"\n\
             [[listener.route]]\nsni = \"b.example.com\"\npool = \"tenant-a\"\n",
        )
        .expect_err("mqtt check");
        assert_eq!(keys(&errors), ["pool.tenant-a.health.check"], "{errors:?}");
    }
}
