//! A listener's routes as its connections use them: each rule with its
//! pool of this generation and its counter, and the `default` route (the
//! listener's own pool). Built with the listener's context, so a reload's
//! rules serve the connections accepted after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;

use crate::balance::Pool;
use crate::balance::route::{Facts, RouteMatch, first_match};
use crate::config::{ListenerConfig, ProxyProtocol};
use crate::metrics::{Metrics, RouteLabel};

/// Where a client goes: a rule, or the listener's default.
pub struct Route {
    /// The rule's name, `default` for the listener's pool.
    pub name: String,
    /// Empty for the default route.
    when: RouteMatch,
    pub pool: Arc<Pool>,
    /// `mqttlb_connections_routed_total{listener,route,pool}`.
    pub routed: Counter,
}

/// A listener's rules in order, and its default route.
pub struct Routes {
    rules: Box<[Route]>,
    default: Route,
    /// Some reachable pool sends a PROXY header.
    proxy_header: bool,
}

/// The `route` label of clients no rule matched.
pub const DEFAULT_ROUTE: &str = "default";

impl Routes {
    /// The routes of `cfg` over `pools` (this generation's); `None` when a
    /// pool it names does not exist (config conversion prevents that).
    pub fn new(
        cfg: &ListenerConfig,
        pools: &BTreeMap<String, Arc<Pool>>,
        metrics: &Metrics,
    ) -> Option<Routes> {
        let route = |name: &str, when: RouteMatch, pool: &str| {
            Some(Route {
                name: name.to_string(),
                when,
                pool: pools.get(pool)?.clone(),
                routed: metrics.route(&route_label(cfg, name, pool)),
            })
        };
        let rules = cfg
            .routes
            .iter()
            .map(|r| route(&r.name, r.when.clone(), &r.pool))
            .collect::<Option<Box<[Route]>>>()?;
        let default = route(DEFAULT_ROUTE, RouteMatch::default(), &cfg.pool)?;
        let mut routes = Routes {
            rules,
            default,
            proxy_header: false,
        };
        let proxy_header = routes
            .pools()
            .any(|p| p.proxy_protocol != ProxyProtocol::Off);
        routes.proxy_header = proxy_header;
        Some(routes)
    }

    /// The first rule `facts` match, else the default route.
    pub fn choose(&self, facts: &Facts<'_>) -> &Route {
        first_match(self.rules.iter().map(|r| &r.when), facts)
            .and_then(|i| self.rules.get(i))
            .unwrap_or(&self.default)
    }

    /// Where `route` (one of these) stands: the rules in order, then the
    /// default. [`Routes::at`] finds it again.
    pub fn position(&self, route: &Route) -> Option<usize> {
        self.rules
            .iter()
            .chain(std::iter::once(&self.default))
            .position(|r| std::ptr::eq(r, route))
    }

    /// The route at `position`.
    pub fn at(&self, position: usize) -> Option<&Route> {
        self.rules
            .get(position)
            .or_else(|| (position == self.rules.len()).then_some(&self.default))
    }

    /// Does the listener have rules (else every client takes the default)?
    pub fn any(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The listener's own pool.
    pub fn default_pool(&self) -> &Arc<Pool> {
        &self.default.pool
    }

    /// Every pool a client of the listener can reach, the default first.
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        std::iter::once(&self.default.pool).chain(self.rules.iter().map(|r| &r.pool))
    }

    /// Does any reachable pool send a PROXY header (which needs the
    /// connection's local address)?
    pub fn sends_proxy_header(&self) -> bool {
        self.proxy_header
    }
}

/// The metric labels of a listener's routes, its default included.
pub fn route_labels(cfg: &ListenerConfig) -> impl Iterator<Item = RouteLabel> + '_ {
    std::iter::once(route_label(cfg, DEFAULT_ROUTE, &cfg.pool)).chain(
        cfg.routes
            .iter()
            .map(move |r| route_label(cfg, &r.name, &r.pool)),
    )
}

fn route_label(cfg: &ListenerConfig, route: &str, pool: &str) -> RouteLabel {
    RouteLabel {
        listener: cfg.name.clone(),
        route: route.to_string(),
        pool: pool.to_string(),
    }
}
