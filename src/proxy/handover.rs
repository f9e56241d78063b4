//! Listening sockets across processes: a new proxy builds its listeners
//! from sockets it inherited (`upgrade::take_over`, systemd activation),
//! and a running proxy offers duplicates of its own to the process that
//! replaces it. The protocol and the descriptor passing are in
//! [`crate::upgrade`].

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::accept::bind_listener;
use super::{Proxy, ProxyHandle, lock};
use crate::config::UpgradeConfig;
use crate::sys::ListenerSockets;
use crate::upgrade::{Assignment, InheritedListener, Offer, Offers, UpgradeError, assign};

impl Proxy {
    /// Like [`Proxy::bind`], but a listener whose sockets were inherited
    /// (matched by name, else by address: [`assign`]) uses them instead of
    /// binding: every inherited socket, so that no accept queue is left
    /// unserved. Inherited sockets no listener wants are closed.
    pub fn bind_with(
        &self,
        inherited: Vec<InheritedListener>,
    ) -> std::io::Result<Vec<ListenerSockets>> {
        let generation = self.state.current.load();
        let listeners = &generation.config.listeners;
        let wanted: Vec<_> = listeners
            .iter()
            .map(|l| (l.name.as_str(), l.listen))
            .collect();
        let offered: Vec<_> = inherited
            .iter()
            .map(|i| (i.name.as_deref(), i.addr))
            .collect();
        let plan = assign(&wanted, &offered);
        let mut inherited: Vec<Option<InheritedListener>> =
            inherited.into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(listeners.len());
        for (l, choice) in listeners.iter().zip(plan) {
            let sockets = match choice {
                Assignment::Inherit(i) => inherited.get_mut(i).and_then(Option::take),
                Assignment::AddressChanged(i) => {
                    if let Some(old) = inherited.get_mut(i).and_then(Option::take) {
                        warn!(listener = %l.name, inherited = %old.addr, configured = %l.listen,
                            "listener moved: binding the configured address; the inherited sockets close");
                    }
                    None
                }
                Assignment::Fresh => None,
            };
            match sockets {
                Some(s) => {
                    info!(listener = %l.name, addr = %s.addr, sockets = s.sockets.len(), "using inherited listening sockets");
                    out.push(ListenerSockets::from_std(s.sockets)?);
                }
                None => out.push(bind_listener(l)?),
            }
        }
        for left in inherited.into_iter().flatten() {
            warn!(listener = ?left.name, addr = %left.addr, "inherited sockets no listener is configured for; closing them");
        }
        Ok(out)
    }
}

impl ProxyHandle {
    /// Duplicates of every running listener's sockets, for a process that
    /// takes over. A socket that cannot be duplicated (EMFILE) leaves its
    /// listener out; the new process then binds it afresh.
    pub fn offers(&self) -> Vec<Offer> {
        lock(&self.state.listeners)
            .iter()
            .filter_map(|(name, slot)| {
                let sockets = lock(&slot.handover)
                    .iter()
                    .map(socket2::Socket::try_clone)
                    .collect::<std::io::Result<Vec<_>>>();
                match sockets {
                    Ok(sockets) if !sockets.is_empty() => Some(Offer {
                        name: Some(name.clone()),
                        addr: slot.ctx.load().local_addr,
                        sockets,
                    }),
                    Ok(_) => None,
                    Err(e) => {
                        warn!(listener = %name, error = %e, "cannot duplicate a listening socket for the hand-over");
                        None
                    }
                }
            })
            .collect()
    }
}

impl ProxyHandle {
    /// Offer this proxy's listening sockets (and `admin`, the admin
    /// listener's), then its session-ticket keys, on `cfg.socket` until a
    /// new process takes them over
    /// — then cancel `shutdown`: stop accepting and drain, as on SIGTERM —
    /// or the proxy stops. `replace` takes the socket path over even if
    /// something answers there (the process this one just took over from).
    /// Call after [`Proxy::start`](super::Proxy::start).
    pub fn serve_upgrades(
        &self,
        cfg: &UpgradeConfig,
        admin: Option<socket2::Socket>,
        replace: bool,
        shutdown: CancellationToken,
    ) -> Result<(), UpgradeError> {
        #[cfg(unix)]
        {
            let socket = crate::upgrade::UpgradeSocket::bind(&cfg.socket, replace)?;
            info!(path = %cfg.socket.display(), "upgrade socket ready (mqttlb proxy --takeover PATH)");
            let handle = self.clone();
            let stop = self.state.shutdown.clone();
            let timeout = cfg.timeout;
            self.state.background.spawn(async move {
                let offers = || {
                    let mut offers = handle.offers();
                    if let Some(admin) = &admin {
                        match (
                            admin.try_clone(),
                            admin.local_addr().ok().and_then(|a| a.as_socket()),
                        ) {
                            (Ok(dup), Some(addr)) => offers.push(Offer {
                                name: None,
                                addr,
                                sockets: vec![dup],
                            }),
                            _ => warn!("cannot duplicate the admin socket for the hand-over"),
                        }
                    }
                    Offers {
                        sockets: offers,
                        ticket_keys: handle.session_keys(),
                    }
                };
                if socket.serve(offers, timeout, &stop).await.is_some() {
                    shutdown.cancel();
                }
            });
            Ok(())
        }
        #[cfg(not(unix))]
        {
            let _ = (cfg, admin, replace, shutdown);
            Err(UpgradeError::Unsupported)
        }
    }
}
