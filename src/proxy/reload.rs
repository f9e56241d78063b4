//! Reloads: a new configuration (SIGHUP, the admin API) becomes the next
//! *generation*. Everything that can fail (TLS files, new listeners' ports)
//! happens before anything changes; then each pool's long-lived node set
//! gets the new settings and node list in place (nodes that stay keep
//! their state and checks), listener contexts are swapped (their state
//! reconfigured, not replaced), removed listeners stop and new ones start.
//! DNS answers never come through here: discovery changes its own pool's
//! node set.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::accept::bind_listener;
use super::{Generation, ListenerSlot, ProxyHandle, lock};
use crate::accesslog::AccessLog;
use crate::balance::{Pool, discovery};
use crate::config::{Config, ConfigError, ConfigErrors, ListenerConfig};
use crate::sys::ListenerSockets;
use crate::tls::{SessionKeys, TlsAcceptor};

/// Why a reload did not apply; the old configuration keeps running.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Bind(std::io::Error),
    #[error("no configuration file to reload from (started from flags only)")]
    NoSource,
}

/// What a successful reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
}

/// Load TLS material for every listener (ticket keys included: a
/// `ticket_keys` file is read again, `session_keys` are the process's);
/// errors name the config key.
pub(super) fn load_tls(
    config: &Config,
    session_keys: &SessionKeys,
) -> Result<Vec<Option<TlsAcceptor>>, ConfigErrors> {
    let mut errors = Vec::new();
    let own_keys = session_keys.ring();
    let tls = config
        .listeners
        .iter()
        .map(|l| {
            l.tls.as_ref().and_then(|t| {
                TlsAcceptor::from_config(&format!("{}.tls", l.key), &l.name, t, &own_keys)
                    .map_err(|e| errors.push(ConfigError::tls(&config.source, e)))
                    .ok()
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(tls)
    } else {
        Err(ConfigErrors(errors))
    }
}

impl ProxyHandle {
    /// Read the configuration file again (with the original flags) and
    /// apply it; on any error the running configuration stays.
    pub async fn reload_from_source(&self) -> Result<ReloadSummary, ReloadError> {
        let source = lock(&self.state.source).clone();
        let Some((path, overrides)) = source else {
            self.state.metrics.reload("error");
            return Err(ReloadError::NoSource);
        };
        match Config::load(Some(&path), &overrides) {
            Ok(config) => self.reload(config).await,
            Err(e) => {
                self.state.metrics.reload("error");
                warn!(error = %e, "reload refused: invalid configuration; the running one stays");
                Err(e.into())
            }
        }
    }

    /// Apply `config`: new certificates for new handshakes, backends added,
    /// removed (their connections drain) or reweighted, listeners added or
    /// removed. All or nothing: on error the old configuration keeps
    /// running and `mqttlb_config_reloads_total{result="error"}` counts it.
    pub async fn reload(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        let result = self.apply(config).await;
        match &result {
            Ok(s) => {
                self.state.metrics.reload("ok");
                info!(?s, "configuration reloaded");
            }
            Err(e) => {
                self.state.metrics.reload("error");
                warn!(error = %e, "reload refused; the running configuration stays");
            }
        }
        result
    }

    async fn apply(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        let state = &self.state;
        let _one_at_a_time = state.reload_lock.lock().await;
        let old = state.current.load_full();
        let tls = load_tls(&config, &state.session_keys)?;
        AccessLog::check(&config.log.destination)
            .map_err(|e| super::access_log_error(&config, &e))?;

        // Listeners to open: new names, or a name whose address changed.
        // Bind them all before changing anything, so a busy port refuses
        // the whole reload.
        let running: BTreeMap<String, Arc<ListenerSlot>> = lock(&state.listeners).clone();
        let mut fresh = Vec::new();
        for i in to_open(&addrs(&running), &config.listeners) {
            if let Some(l) = config.listeners.get(i) {
                fresh.push((i, bind_listener(l).map_err(ReloadError::Bind)?));
            }
        }
        let summary = self.install(config, tls, &old, running, fresh);
        Ok(summary)
    }

    /// Give each pool's node set the new settings and nodes (a new pool
    /// gets a new set; a removed pool's set stops), then swap listener
    /// contexts, stop removed listeners and start `fresh` ones.
    fn install(
        &self,
        config: Config,
        tls: Vec<Option<TlsAcceptor>>,
        old: &Generation,
        running: BTreeMap<String, Arc<ListenerSlot>>,
        fresh: Vec<(usize, ListenerSockets)>,
    ) -> ReloadSummary {
        let state = &self.state;
        let mut summary = ReloadSummary::default();
        let mut pools = BTreeMap::new();
        for (name, cfg) in &config.pools {
            let pool = match old.pools.get(name) {
                Some(p) => Pool::with_nodes(cfg, p.nodes.clone()),
                None => Pool::new(cfg, &state.metrics),
            };
            // DNS nodes of entries that stay are kept until discovery
            // answers again; new entries resolve right after.
            let answers =
                discovery::carried_answers(old.config.pools.get(name), cfg, &pool.backends());
            let changes = pool
                .nodes
                .set_backends(&discovery::pool_nodes(cfg, &answers));
            summary.backends_added.extend(changes.added);
            summary.backends_removed.extend(changes.removed);
            state.start_pool(&pool, cfg, answers);
            pools.insert(name.clone(), Arc::new(pool));
        }
        for (name, p) in &old.pools {
            if !pools.contains_key(name) {
                p.nodes.stop();
                for b in p.backends().iter() {
                    summary.backends_removed.push(b.name.clone());
                    // Its metric series go, unless another pool has a
                    // node of that name (the label is the name alone).
                    let named = |n: &Arc<Pool>| n.backends().iter().any(|o| o.name == b.name);
                    if !pools.values().any(named) {
                        state.metrics.forget_backend(&b.name);
                    }
                }
            }
        }

        // Before the listeners' contexts: they follow it on or off.
        state.access.configure(&config.log);
        let generation = Arc::new(Generation { config, pools, tls });
        state.current.store(generation.clone());
        state.export_certificates(&generation);
        state.export_routes(&generation);
        lock(&state.listener_states).retain(|name, listener| {
            let keep = generation.config.listeners.iter().any(|l| &l.name == name);
            if keep {
                listener.configure(&generation.config.limits);
            }
            keep
        });
        for (l, tls) in generation
            .config
            .listeners
            .iter()
            .zip(generation.tls.iter().cloned())
        {
            if let Some(slot) = running.get(&l.name).filter(|s| s.addr == l.listen) {
                let local = slot.ctx.load().local_addr;
                if let Some(ctx) = state.listener_ctx(&generation, l, local, tls) {
                    slot.ctx.store(Arc::new(ctx));
                }
            }
        }
        for name in to_stop(&addrs(&running), &generation.config.listeners) {
            if let Some(slot) = running.get(&name) {
                slot.stop.cancel();
            }
            lock(&state.listeners).remove(&name);
            summary.listeners_removed.push(name);
        }
        for (i, listener) in fresh {
            let (Some(l), Some(tls)) = (generation.config.listeners.get(i), generation.tls.get(i))
            else {
                continue; // `fresh` indexes this generation's listeners
            };
            state.start_listener(&generation, l, listener, tls.clone());
            summary.listeners_added.push(l.name.clone());
        }
        self.resize_limit(generation.config.limits.max_connections);
        summary
    }

    fn resize_limit(&self, wanted: usize) {
        let state = &self.state;
        let wanted = wanted.min(Semaphore::MAX_PERMITS);
        let current = state.limit_size.load(Ordering::Acquire);
        if wanted > current {
            state.limit.add_permits(wanted - current);
            state.limit_size.store(wanted, Ordering::Release);
        } else if wanted < current {
            // Only idle permits can be forgotten; with more connections
            // open than the new limit, the limit shrinks as far as it can
            // now and the effective value is recorded.
            let forgotten = state.limit.forget_permits(current - wanted);
            let effective = current - forgotten;
            state.limit_size.store(effective, Ordering::Release);
            if effective != wanted {
                warn!(
                    wanted,
                    effective,
                    "max_connections lowered below the open connections; reload again once they close"
                );
            }
        }
    }
}

/// Configured address of each running listener, by name.
fn addrs(running: &BTreeMap<String, Arc<ListenerSlot>>) -> BTreeMap<String, SocketAddr> {
    running
        .iter()
        .map(|(name, slot)| (name.clone(), slot.addr))
        .collect()
}

/// Listeners of the new configuration to open (positions in `wanted`): a
/// new name, or a known name on a new address.
fn to_open(running: &BTreeMap<String, SocketAddr>, wanted: &[ListenerConfig]) -> Vec<usize> {
    (0..)
        .zip(wanted)
        .filter(|(_, l)| running.get(&l.name) != Some(&l.listen))
        .map(|(i, _)| i)
        .collect()
}

/// Running listeners to stop: gone from the configuration, or moved to
/// another address (the new address is opened by [`to_open`]).
fn to_stop(running: &BTreeMap<String, SocketAddr>, wanted: &[ListenerConfig]) -> Vec<String> {
    running
        .iter()
        .filter(|(name, addr)| {
            !wanted
                .iter()
                .any(|l| &&l.name == name && &l.listen == *addr)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str, addr: &str) -> ListenerConfig {
        ListenerConfig {
            name: name.into(),
            listen: addr.parse().unwrap(),
            pool: "p".into(),
            backlog: 16,
            accept_sockets: 1,
            tls: None,
            mqtt: None,
            websocket: None,
            proxy_protocol: None,
            routes: Vec::new(),
            key: format!("listener[{name}]"),
        }
    }

    #[test]
    fn listener_diff_opens_new_and_moved_and_stops_gone_and_moved() {
        let running: BTreeMap<String, SocketAddr> = [
            ("keep", "127.0.0.1:1000"),
            ("moved", "127.0.0.1:1001"),
            ("gone", "127.0.0.1:1002"),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
        .collect();
        let wanted = [
            listener("keep", "127.0.0.1:1000"),
            listener("moved", "127.0.0.1:2001"),
            listener("new", "127.0.0.1:1003"),
        ];
        assert_eq!(to_open(&running, &wanted), [1, 2]);
        assert_eq!(to_stop(&running, &wanted), ["gone", "moved"]);
        assert!(to_open(&running, &wanted[..1]).is_empty());
    }
}
