//! Where a pool's nodes come from, besides its static servers.
//!
//! A [`Discovery`] answers one question — "which nodes now?" — with a set
//! of [`NodeSpec`]s; [`run`] asks it every interval and hands the answer to
//! the pool's [`NodeSet`], which adds and removes exactly the nodes that
//! changed. Discovery never reaches the proxy: a changed answer touches
//! its own pool and nothing else (no generation is rebuilt, no other
//! pool's checks restart). Today's source is DNS ([`Dns`]); others
//! (Kubernetes EndpointSlices, Consul) fit the same trait.
//!
//! [`Dns`]: pool servers given as `host:port` are re-resolved every
//! `resolve_interval`; every address becomes a node `{name}/{ip}`, as
//! HAProxy's `server-template` with `resolvers` does. Resolution uses
//! hickory-resolver (pure Rust, reads `/etc/resolv.conf` and `/etc/hosts`
//! itself), so it works in a static binary in a scratch container where
//! glibc's NSS modules are absent. A failed lookup keeps that entry's
//! previous answer (a DNS hiccup must not empty a pool); a successful
//! empty answer removes its nodes.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::NameServerConfig;
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use tracing::warn;

use super::config::{DnsServerConfig, PoolConfig, ResolverConfig};

/// A node a pool should have: from its static servers or from discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub addr: std::net::SocketAddr,
    pub weight: u32,
    /// Client connections the node takes at most (0: no cap).
    pub max_connections: u32,
}

/// The future a discovery round returns.
pub type Answer<'a> = Pin<Box<dyn Future<Output = Result<Vec<NodeSpec>, String>> + Send + 'a>>;

/// A source of a pool's node set.
pub trait Discovery: Send + Sync {
    /// Every node the pool should have now; an error keeps the current set.
    fn nodes(&self) -> Answer<'_>;
}

/// Name of the node a DNS answer produced: stable for a given address, so
/// client-id hashing agrees across mqttlb instances and re-resolutions.
pub fn dns_node_name(server: &str, ip: IpAddr) -> String {
    format!("{server}/{ip}")
}

/// The static servers of a pool as node specs.
pub fn static_nodes(cfg: &PoolConfig) -> Vec<NodeSpec> {
    cfg.servers
        .iter()
        .map(|s| NodeSpec {
            name: s.name.clone(),
            addr: s.addr,
            weight: s.weight.get(),
            max_connections: s.max_connections,
        })
        .collect()
}

/// The nodes `entry` produces for `ips`.
fn entry_nodes(entry: &DnsServerConfig, ips: &[IpAddr]) -> impl Iterator<Item = NodeSpec> {
    ips.iter().map(|ip| NodeSpec {
        name: dns_node_name(&entry.name, *ip),
        addr: SocketAddr::new(*ip, entry.port),
        weight: entry.weight.get(),
        max_connections: entry.max_connections,
    })
}

/// The answers a reload carries over: for every DNS entry of `new` that an
/// entry of `old` also had (same name, host and port), the addresses of
/// the current nodes it produced; nothing for entries that are new (they
/// resolve right after).
pub fn carried_answers(
    old: Option<&PoolConfig>,
    new: &PoolConfig,
    nodes: &[Arc<super::Backend>],
) -> Vec<Vec<IpAddr>> {
    new.dns
        .iter()
        .map(|d| {
            let known = old.is_some_and(|o| o.dns.iter().any(|od| same_entry(od, d)));
            if !known {
                return Vec::new();
            }
            let prefix = format!("{}/", d.name);
            nodes
                .iter()
                .filter(|b| b.name.starts_with(&prefix) && b.addr.port() == d.port)
                .map(|b| b.addr.ip())
                .collect()
        })
        .collect()
}

/// The same DNS entry, perhaps reweighted.
fn same_entry(a: &DnsServerConfig, b: &DnsServerConfig) -> bool {
    a.name == b.name && a.host == b.host && a.port == b.port
}

/// A pool's static servers plus `answers[i]` for its DNS entry `i`.
pub fn pool_nodes(cfg: &PoolConfig, answers: &[Vec<IpAddr>]) -> Vec<NodeSpec> {
    let mut nodes = static_nodes(cfg);
    for (d, ips) in cfg.dns.iter().zip(answers) {
        nodes.extend(entry_nodes(d, ips));
    }
    nodes
}

/// DNS discovery for one pool: its static servers plus every address of
/// each `host:port` entry.
pub struct Dns {
    cfg: PoolConfig,
    /// The last answer per entry (kept when a lookup fails).
    answers: Mutex<Vec<Vec<IpAddr>>>,
    /// Built at the first round (and again after a failure to read the
    /// system configuration).
    servers: ResolverConfig,
    resolver: Mutex<Option<TokioResolver>>,
}

impl Dns {
    /// Discovery for `cfg`'s DNS entries, starting from `answers` (one
    /// list per entry, e.g. [`carried_answers`]).
    pub fn new(cfg: &PoolConfig, resolver: &ResolverConfig, mut answers: Vec<Vec<IpAddr>>) -> Dns {
        answers.resize(cfg.dns.len(), Vec::new());
        Dns {
            cfg: cfg.clone(),
            servers: resolver.clone(),
            answers: Mutex::new(answers),
            resolver: Mutex::new(None),
        }
    }

    fn resolver(&self) -> Result<TokioResolver, String> {
        let mut slot = self.resolver.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let mut builder = if self.servers.nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?
        } else {
            let mut config = hickory_resolver::config::ResolverConfig::new();
            for addr in &self.servers.nameservers {
                config.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
            }
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        builder.options_mut().timeout = self.servers.timeout;
        let r = builder.build();
        *slot = Some(r.clone());
        Ok(r)
    }

    async fn resolve(&self) -> Result<Vec<NodeSpec>, String> {
        let resolver = self.resolver()?;
        let mut fresh = Vec::with_capacity(self.cfg.dns.len());
        for d in &self.cfg.dns {
            fresh.push(match lookup(&resolver, &d.host).await {
                Ok(ips) => Some(ips),
                Err(e) => {
                    warn!(pool = %self.cfg.name, host = %d.host, error = %e, "DNS lookup failed; keeping the previous answer");
                    None
                }
            });
        }
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        for (kept, new) in answers.iter_mut().zip(fresh) {
            if let Some(ips) = new {
                *kept = ips;
            }
        }
        Ok(pool_nodes(&self.cfg, &answers))
    }
}

impl Discovery for Dns {
    fn nodes(&self) -> Answer<'_> {
        Box::pin(self.resolve())
    }
}

async fn lookup(r: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, String> {
    // Sorted and deduplicated, so answer order does not look like change.
    let answer = r.lookup_ip(host).await.map_err(|e| e.to_string())?;
    let ips: BTreeSet<IpAddr> = answer.iter().collect();
    Ok(ips.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn entry(name: &str, host: &str, port: u16) -> DnsServerConfig {
        DnsServerConfig {
            name: name.into(),
            host: host.into(),
            port,
            weight: NonZeroU32::MIN,
            max_connections: 0,
        }
    }

    #[test]
    fn nodes_are_static_servers_then_one_per_address() {
        let mut cfg = super::super::config::test_pool("p", &[("n1", 1)]);
        cfg.dns = vec![entry("b", "brokers.example", 1883)];
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let nodes = pool_nodes(&cfg, &[vec![ip]]);
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "b/10.0.0.7"]);
        assert_eq!(nodes[1].addr, SocketAddr::new(ip, 1883));
    }
}
