//! Routes (`[[listener.route]]`): which pool a listener's client goes to.
//! Pure: the rules as configured and the matching, no sockets, no pools.
//!
//! Rules are tried in order and the first that matches wins; none → the
//! listener's own pool. A rule matches when every matcher it has matches:
//!
//! * `sni` — the TLS server name, ASCII case-insensitive: an exact name, or
//!   `*.example.com`, which matches exactly one label more (`a.example.com`,
//!   not `example.com`, not `a.b.example.com`): the rule a `*.` SAN of the
//!   listener's certificate follows, so a name gets the certificate and the
//!   route of the same entry. A connection without SNI never matches.
//! * `cert_cn_prefix` — the verified client certificate's subject CN starts
//!   with these bytes (case-sensitive). No certificate (or no CN): no match.
//! * `client_id_prefix`, `username_prefix` — the CONNECT's client id or
//!   user name starts with these bytes (case-sensitive: MQTT client ids
//!   are). A CONNECT without a user name never matches a `username_prefix`;
//!   an empty prefix matches any present value.
//!
//! `sni` and `cert_cn_prefix` are *handshake* facts; `client_id_prefix` and
//! `username_prefix` need the CONNECT, which only MQTT-aware listeners read.

/// `sni` of a route: an exact host name, or `*.` and a domain; held in
/// lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniPattern {
    Exact(String),
    /// The domain after `*.`: the server name is one more label and this.
    Wildcard(String),
}

impl SniPattern {
    /// Parse `mqtt.example.com` or `*.example.com`: DNS labels of letters,
    /// digits, `-` and `_` (at most 63 bytes each, 253 in all), `*` only as
    /// the whole first label.
    pub fn parse(s: &str) -> Result<SniPattern, String> {
        let lower = s.to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, lower.as_str()),
        };
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || lower.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "expected a host name such as \"mqtt.example.com\" or \"*.example.com\" \
                 (a wildcard only as the whole first label), got {s:?}"
            ));
        }
        let name = name.to_string();
        Ok(if wild {
            SniPattern::Wildcard(name)
        } else {
            SniPattern::Exact(name)
        })
    }

    /// Does the client's server name match (ASCII case-insensitive)?
    pub fn matches(&self, sni: &str) -> bool {
        match self {
            SniPattern::Exact(name) => sni.eq_ignore_ascii_case(name),
            SniPattern::Wildcard(domain) => sni.split_once('.').is_some_and(|(first, rest)| {
                !first.is_empty() && rest.eq_ignore_ascii_case(domain)
            }),
        }
    }
}

impl std::fmt::Display for SniPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SniPattern::Exact(name) => f.write_str(name),
            SniPattern::Wildcard(domain) => write!(f, "*.{domain}"),
        }
    }
}

/// What a rule asks of a connection; every matcher given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMatch {
    pub sni: Option<SniPattern>,
    pub cert_cn_prefix: Option<String>,
    pub client_id_prefix: Option<String>,
    pub username_prefix: Option<String>,
}

/// One `[[listener.route]]`: a name (for logs and the `route` metric
/// label), what it matches and the pool it sends to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub name: String,
    pub when: RouteMatch,
    pub pool: String,
}

/// What routing knows of a connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// The TLS server name; `None` on plain listeners or without SNI.
    pub sni: Option<&'a str>,
    /// The verified client certificate's subject CN.
    pub cert_cn: Option<&'a str>,
    /// The CONNECT's fields; `None` on pass-through listeners (no CONNECT
    /// is read, so no rule that needs one matches).
    pub connect: Option<ConnectFacts<'a>>,
}

/// The CONNECT fields routes look at.
#[derive(Debug, Clone, Copy)]
pub struct ConnectFacts<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

impl RouteMatch {
    /// No matcher at all (the configuration refuses such a rule).
    pub fn is_empty(&self) -> bool {
        self == &RouteMatch::default()
    }

    /// Does the rule need the CONNECT (client id or user name)?
    pub fn needs_connect(&self) -> bool {
        self.client_id_prefix.is_some() || self.username_prefix.is_some()
    }

    /// Does the connection match every matcher of the rule?
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        let sni = match &self.sni {
            None => true,
            Some(pattern) => facts.sni.is_some_and(|s| pattern.matches(s)),
        };
        let connect = facts.connect;
        sni && prefixed(self.cert_cn_prefix.as_deref(), facts.cert_cn)
            && prefixed(
                self.client_id_prefix.as_deref(),
                connect.map(|c| c.client_id),
            )
            && prefixed(
                self.username_prefix.as_deref(),
                connect.and_then(|c| c.username),
            )
    }
}

/// `prefix` absent: no condition; present: `value` is there and starts
/// with it (bytes, case-sensitive).
fn prefixed(prefix: Option<&str>, value: Option<&str>) -> bool {
    match prefix {
        None => true,
        Some(p) => value.is_some_and(|v| v.as_bytes().starts_with(p.as_bytes())),
    }
}

/// The position of the first rule that matches, or `None`: the listener's
/// own pool.
pub fn first_match<'r>(
    rules: impl IntoIterator<Item = &'r RouteMatch>,
    facts: &Facts<'_>,
) -> Option<usize> {
    rules.into_iter().position(|r| r.matches(facts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sni(s: &str) -> SniPattern {
        SniPattern::parse(s).unwrap()
    }

    #[test]
    fn sni_patterns_parse_in_lower_case_and_refuse_other_wildcards() {
        assert_eq!(
            sni("MQTT.Example.com"),
            SniPattern::Exact("mqtt.example.com".into())
        );
        assert_eq!(
            sni("*.Tenant-A.example.com"),
            SniPattern::Wildcard("tenant-a.example.com".into())
        );
        assert_eq!(sni("*.example.com").to_string(), "*.example.com");
        let bad = [
            "",
            "*",
            "*.",
            "a*.example.com",
            "*a.example.com",
            "a.*.example.com",
            "*.*.example.com",
            "ex ample.com",
            "example..com",
            ".example.com",
            "example.com.",
            "exämple.com",
        ];
        for b in bad {
            assert!(SniPattern::parse(b).is_err(), "{b:?}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(SniPattern::parse(&long_label).is_err());
        let long_name = vec!["a".repeat(60); 5].join(".");
        assert!(SniPattern::parse(&long_name).is_err(), "over 253 bytes");
    }

    #[test]
    fn sni_matching_is_case_insensitive_and_a_wildcard_is_one_label() {
        let exact = sni("mqtt.example.com");
        assert!(exact.matches("mqtt.example.com"));
        assert!(exact.matches("MQTT.example.COM"));
        assert!(!exact.matches("a.mqtt.example.com"));
        assert!(!exact.matches("mqtt.example.co"));
        let wild = sni("*.example.com");
        for yes in ["a.example.com", "A.EXAMPLE.com", "dev-1.example.com"] {
            assert!(wild.matches(yes), "{yes}");
        }
        for no in [
            "example.com",
            "a.b.example.com",
            ".example.com",
            "aexample.com",
            "a.example.org",
            "",
        ] {
            assert!(!wild.matches(no), "{no}");
        }
    }

    #[test]
    fn every_matcher_given_must_match() {
        let rule = RouteMatch {
            sni: Some(sni("*.tenant-a.example.com")),
            client_id_prefix: Some("factory-7/".into()),
            ..RouteMatch::default()
        };
        let connect = |client_id, username| {
            Some(ConnectFacts {
                client_id,
                username,
            })
        };
        let facts = Facts {
            sni: Some("x.tenant-a.example.com"),
            cert_cn: None,
            connect: connect("factory-7/press-1", None),
        };
        assert!(rule.matches(&facts));
        assert!(rule.needs_connect());
        assert!(
            !rule.matches(&Facts { sni: None, ..facts }),
            "no SNI never matches"
        );
        assert!(!rule.matches(&Facts {
            sni: Some("x.tenant-b.example.com"),
            ..facts
        }));
        assert!(
            !rule.matches(&Facts {
                connect: connect("Factory-7/press-1", None),
                ..facts
            }),
            "prefixes are case-sensitive"
        );
        assert!(
            !rule.matches(&Facts {
                connect: None,
                ..facts
            }),
            "no CONNECT never matches a CONNECT rule"
        );
    }

    #[test]
    fn prefixes_are_bytes_and_absent_fields_never_match() {
        let by_user = RouteMatch {
            username_prefix: Some("ops-".into()),
            ..RouteMatch::default()
        };
        let any_user = RouteMatch {
            username_prefix: Some(String::new()),
            ..RouteMatch::default()
        };
        let by_cn = RouteMatch {
            cert_cn_prefix: Some("dev-".into()),
            ..RouteMatch::default()
        };
        let facts = |username, cert_cn| Facts {
            sni: None,
            cert_cn,
            connect: Some(ConnectFacts {
                client_id: "c",
                username,
            }),
        };
        assert!(by_user.matches(&facts(Some("ops-1"), None)));
        assert!(!by_user.matches(&facts(Some("op"), None)));
        assert!(!by_user.matches(&facts(None, None)), "no user name");
        assert!(
            any_user.matches(&facts(Some(""), None)),
            "an empty prefix: any user name"
        );
        assert!(!any_user.matches(&facts(None, None)));
        assert!(by_cn.matches(&facts(None, Some("dev-42"))));
        assert!(!by_cn.matches(&facts(None, None)), "no certificate");
        assert!(!by_cn.needs_connect());
        assert!(
            by_cn.matches(&Facts {
                connect: None,
                ..facts(None, Some("dev-1"))
            }),
            "a handshake rule needs no CONNECT"
        );
        // Multi-byte UTF-8: a byte prefix, whatever the characters.
        let utf8 = RouteMatch {
            client_id_prefix: Some("gerät-".into()),
            ..RouteMatch::default()
        };
        let id = |client_id| Facts {
            connect: Some(ConnectFacts {
                client_id,
                username: None,
            }),
            ..Facts::default()
        };
        assert!(utf8.matches(&id("gerät-1")));
        assert!(!utf8.matches(&id("gerat-1")));
    }

    #[test]
    fn the_first_rule_that_matches_wins() {
        let rules = [
            RouteMatch {
                client_id_prefix: Some("factory-7/".into()),
                ..RouteMatch::default()
            },
            RouteMatch {
                client_id_prefix: Some("factory-".into()),
                ..RouteMatch::default()
            },
            RouteMatch {
                sni: Some(sni("*.example.com")),
                ..RouteMatch::default()
            },
        ];
        let facts = |client_id, sni| Facts {
            sni,
            cert_cn: None,
            connect: Some(ConnectFacts {
                client_id,
                username: None,
            }),
        };
        assert_eq!(first_match(&rules, &facts("factory-7/a", None)), Some(0));
        assert_eq!(
            first_match(&rules, &facts("factory-8/a", Some("a.example.com"))),
            Some(1)
        );
        assert_eq!(
            first_match(&rules, &facts("other", Some("a.example.com"))),
            Some(2)
        );
        assert_eq!(
            first_match(&rules, &facts("other", Some("example.com"))),
            None
        );
        assert_eq!(first_match(&[], &facts("other", None)), None);
        assert!(RouteMatch::default().is_empty());
        assert!(!rules[2].is_empty());
    }
}
