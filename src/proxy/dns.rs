//! Backend discovery by DNS: pool servers given as `host:port` are
//! re-resolved every `resolve_interval`; every address becomes a node
//! (`{name}/{ip}`), added and removed like a reload, as HAProxy's
//! `server-template` with `resolvers` does.
//!
//! Resolution uses hickory-resolver (pure Rust, reads `/etc/resolv.conf`
//! and `/etc/hosts` itself), so it works in a static binary in a scratch
//! container where glibc's NSS modules are absent. A failed lookup keeps
//! the previous answer (a DNS hiccup must not empty a pool); a successful
//! empty answer removes the nodes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ProxyHandle, Resolved};

/// Resolve the proxy's DNS servers until `shutdown`.
pub async fn run(handle: ProxyHandle, shutdown: CancellationToken) {
    let mut resolver: Option<TokioResolver> = None;
    loop {
        let (names, interval, current) = handle.dns_names();
        if !names.is_empty() {
            if resolver.is_none() {
                match TokioResolver::builder_tokio() {
                    Ok(b) => resolver = Some(b.build()),
                    Err(e) => {
                        warn!(error = %e, "cannot read the system DNS configuration; retrying")
                    }
                }
            }
            if let Some(r) = &resolver {
                let mut next = current.clone();
                for (pool, i, host) in &names {
                    match lookup(r, host).await {
                        Ok(ips) => set(&mut next, pool, *i, ips),
                        Err(e) => {
                            warn!(%host, error = %e, "DNS lookup failed; keeping the previous answer")
                        }
                    }
                }
                if next != current {
                    let s = handle.apply_resolved(next).await;
                    info!(added = ?s.backends_added, removed = ?s.backends_removed, "backends updated from DNS");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = handle.dns_wait(if names.is_empty() { Duration::from_secs(3600) } else { interval }) => {}
        }
    }
}

async fn lookup(r: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, String> {
    // Sorted and deduplicated, so answer order does not look like change.
    let answer = r.lookup_ip(host).await.map_err(|e| e.to_string())?;
    let ips: BTreeSet<IpAddr> = answer.iter().collect();
    Ok(ips.into_iter().collect())
}

/// Store `ips` as the answer for entry `i` of `pool`.
fn set(resolved: &mut Resolved, pool: &str, i: usize, ips: Vec<IpAddr>) {
    let entries = resolved.entry(pool.to_string()).or_default();
    if entries.len() <= i {
        entries.resize(i + 1, Vec::new());
    }
    if let Some(entry) = entries.get_mut(i) {
        *entry = ips;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_stored_per_pool_and_entry() {
        let mut r = Resolved::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        set(&mut r, "p", 1, vec![ip]);
        assert_eq!(r["p"], vec![vec![], vec![ip]]);
        set(&mut r, "p", 0, vec![]);
        assert_eq!(r["p"].len(), 2);
    }
}
