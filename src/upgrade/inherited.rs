//! Sockets from outside, whichever way they came (a takeover or systemd
//! activation), and which configured listener takes which ([`assign`]).
//! Pure.

use std::net::SocketAddr;

/// Sockets of one listener from outside: its name (if known) and address.
#[derive(Debug)]
pub struct InheritedListener {
    pub name: Option<String>,
    pub addr: SocketAddr,
    pub sockets: Vec<std::net::TcpListener>,
}

/// Where a configured listener's sockets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// The inherited entry at this index.
    Inherit(usize),
    /// The entry at this index has the listener's name but another
    /// address: bind fresh (the old sockets close with the old process).
    AddressChanged(usize),
    /// Nothing inherited: bind fresh.
    Fresh,
}

/// Match configured listeners (`name`, `addr`) to inherited entries
/// (`name` if known, bound address): by name first; an unnamed entry (or
/// one whose name no listener has) by address. A configured port 0 takes
/// any port on the same IP. Each entry goes to at most one listener.
pub fn assign(
    wanted: &[(&str, SocketAddr)],
    offered: &[(Option<&str>, SocketAddr)],
) -> Vec<Assignment> {
    let fits = |want: SocketAddr, have: SocketAddr| {
        want == have || (want.port() == 0 && want.ip() == have.ip())
    };
    let mut used = vec![false; offered.len()];
    let mut out = Vec::with_capacity(wanted.len());
    for &(name, addr) in wanted {
        let by_name = offered
            .iter()
            .zip(used.iter())
            .position(|((n, _), u)| !u && *n == Some(name));
        let by_addr = || {
            offered.iter().zip(used.iter()).position(|((n, a), u)| {
                let claimed = n.is_some_and(|n| wanted.iter().any(|(w, _)| *w == n));
                !u && !claimed && fits(addr, *a)
            })
        };
        let choice = match by_name {
            Some(i) => match offered.get(i) {
                Some((_, a)) if fits(addr, *a) => Assignment::Inherit(i),
                _ => Assignment::AddressChanged(i),
            },
            None => by_addr().map_or(Assignment::Fresh, Assignment::Inherit),
        };
        if let Assignment::Inherit(i) | Assignment::AddressChanged(i) = choice {
            if let Some(u) = used.get_mut(i) {
                *u = true;
            }
        }
        out.push(choice);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn listeners_match_by_name_then_by_address() {
        let wanted = [
            ("mqtts", a("0.0.0.0:8883")),
            ("ws", a("0.0.0.0:8443")),
            ("moved", a("0.0.0.0:9000")),
            ("new", a("0.0.0.0:9999")),
            ("any", a("127.0.0.1:0")),
        ];
        let offered = [
            (Some("moved"), a("0.0.0.0:9001")),
            (None, a("0.0.0.0:8443")),
            (Some("mqtts"), a("0.0.0.0:8883")),
            // Named for another listener: not taken by address.
            (Some("moved"), a("0.0.0.0:9999")),
            (Some("mqttlb.socket"), a("127.0.0.1:4242")),
        ];
        assert_eq!(
            assign(&wanted, &offered),
            [
                Assignment::Inherit(2),
                Assignment::Inherit(1),
                Assignment::AddressChanged(0),
                Assignment::Fresh,
                Assignment::Inherit(4),
            ]
        );
        assert_eq!(assign(&wanted, &[]), [Assignment::Fresh; 5]);
    }
}
