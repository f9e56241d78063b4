//! Backend selection as pure functions: given the nodes currently in
//! rotation, return them in the order to try.
//!
//! * **round-robin** — smooth weighted round robin (as NGINX does it): a
//!   node of weight 3 next to one of weight 1 is chosen `A A B A`, not `A A A B`.
//! * **least-connections** — fewest active connections per unit of weight;
//!   ties rotate so equal nodes share new clients.
//! * **client-id** — rendezvous (highest random weight) hashing with xxh3 of
//!   the key seeded by each node's name: every mqttlb instance with the same
//!   node names sends a key to the same node, and losing one of N nodes only
//!   moves the keys that lived on it. The rest of the order is the HRW
//!   ranking itself, so the failover node is just as deterministic.
//!   A missing or empty key falls back to least-connections.
//!
//! **Slow start**: a node that has just entered rotation carries a ramp
//! ([`NodeView::ramp`], per mille of its full share). Round robin and least
//! connections scale its weight by it. Client-id hashing sends a key whose
//! home it is there only if the key's own ramp threshold ([`ramp_gate`], a
//! second hash of the key) is below the ramp, else to the key's next node
//! on its ranking: the node's clients come home in a fixed order as the
//! ramp grows, the same order on every replica, never all at once.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::config::Strategy;

/// What selection needs to know of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeView {
    /// Seed derived from the node's name ([`name_seed`]).
    pub seed: u64,
    pub weight: u32,
    pub active: u64,
    /// Slow start: its share so far, per mille ([`FULL`] when not ramping;
    /// at least 1 while it ramps).
    pub ramp: u32,
}

/// A ramp that is complete: the node takes its full share.
pub const FULL: u32 = 1000;

/// Salt of the second hash that orders a node's keys for slow start
/// (independent of the ranking hash).
const RAMP_SALT: u64 = 0x736c_6f77_5f73_7461;

/// A key's threshold on a ramping node, in `[0, FULL)`: the key goes home
/// once the node's ramp exceeds it.
pub fn ramp_gate(key: &[u8], seed: u64) -> u32 {
    u32::try_from(xxh3_64_with_seed(key, seed ^ RAMP_SALT) % u64::from(FULL)).unwrap_or(0)
}

/// The weight selection uses: the configured weight scaled by the ramp
/// (per mille), so a node at half its ramp counts half.
fn effective_weight(n: &NodeView) -> u64 {
    u64::from(n.weight) * u64::from(n.ramp.clamp(1, FULL))
}

/// The stable per-node hash seed: depends on the name only, so moving a node
/// to a new address does not move its clients.
pub fn name_seed(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

/// Rendezvous score of `key` on a node.
pub fn hrw_score(key: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(key, seed)
}

/// Mutable state of smooth weighted round robin, one slot per node.
#[derive(Debug, Default)]
pub struct SmoothWrr {
    current: Vec<i64>,
}

impl SmoothWrr {
    /// Pick the next node among `nodes` (indices into the node list) and
    /// return its position in `nodes`.
    fn pick(&mut self, nodes: &[NodeView], eligible: &[usize]) -> usize {
        if self.current.len() != nodes.len() {
            self.current = vec![0; nodes.len()];
        }
        let weight = |i: usize| {
            nodes.get(i).map_or(0, |n| {
                i64::try_from(effective_weight(n)).unwrap_or(i64::MAX)
            })
        };
        let total: i64 = eligible.iter().map(|&i| weight(i)).sum();
        // (position in `eligible`, node index, its current weight)
        let mut best: Option<(usize, usize, i64)> = None;
        for (pos, &i) in eligible.iter().enumerate() {
            let Some(current) = self.current.get_mut(i) else {
                continue;
            };
            *current += weight(i);
            if best.is_none_or(|(_, _, b)| *current > b) {
                best = Some((pos, i, *current));
            }
        }
        let Some((pos, i, _)) = best else {
            return 0;
        };
        if let Some(current) = self.current.get_mut(i) {
            *current -= total;
        }
        pos
    }
}

/// Order `eligible` (indices into `nodes`, all in rotation) for a new
/// connection. `rotor` is a per-pool counter that breaks ties fairly.
pub fn order(
    strategy: Strategy,
    nodes: &[NodeView],
    eligible: &[usize],
    key: Option<&[u8]>,
    wrr: &mut SmoothWrr,
    rotor: usize,
) -> Vec<usize> {
    if eligible.is_empty() {
        return Vec::new();
    }
    match (strategy, key) {
        (Strategy::ClientId, Some(key)) if !key.is_empty() => {
            let mut v: Vec<(u64, u64, usize)> = eligible
                .iter()
                .filter_map(|&i| Some((nodes.get(i)?.seed, i)))
                .map(|(seed, i)| (hrw_score(key, seed), seed, i))
                .collect();
            v.sort_unstable_by(|a, b| b.cmp(a));
            let mut ranked: Vec<usize> = v.into_iter().map(|(_, _, i)| i).collect();
            // Slow start: the first node on the ranking that takes this key
            // now goes first; those it passed stay next, in ranking order.
            let takes = |i: usize| {
                nodes
                    .get(i)
                    .is_none_or(|n| n.ramp >= FULL || ramp_gate(key, n.seed) < n.ramp)
            };
            if let Some(pos) = ranked.iter().position(|&i| takes(i)).filter(|&p| p > 0) {
                let home = ranked.remove(pos);
                ranked.insert(0, home);
            }
            ranked
        }
        (Strategy::RoundRobin, _) => {
            let first = wrr.pick(nodes, eligible);
            rotated(eligible, first)
        }
        _ => least_connections(nodes, eligible, rotor),
    }
}

fn least_connections(nodes: &[NodeView], eligible: &[usize], rotor: usize) -> Vec<usize> {
    let mut v = rotated(eligible, rotor);
    // Compare active/weight without division: a.active * b.weight vs b.active * a.weight.
    // A stable sort keeps the rotated order among equals.
    let load = |i: usize| {
        nodes
            .get(i)
            .map_or((0, 1), |n| (n.active, effective_weight(n)))
    };
    v.sort_by(|&a, &b| {
        let ((a_active, a_weight), (b_active, b_weight)) = (load(a), load(b));
        (u128::from(a_active) * u128::from(b_weight))
            .cmp(&(u128::from(b_active) * u128::from(a_weight)))
    });
    v
}

/// `items` starting at position `first` (modulo its length), wrapping.
fn rotated(items: &[usize], first: usize) -> Vec<usize> {
    let n = items.len().max(1);
    let (head, tail) = items.split_at(first % n);
    tail.iter().chain(head).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<NodeView> {
        names
            .iter()
            .map(|n| NodeView {
                seed: name_seed(n),
                weight: 1,
                active: 0,
                ramp: FULL,
            })
            .collect()
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let mut ns = nodes(&["a", "b", "c"]);
        ns[0].weight = 5;
        let mut wrr = SmoothWrr::default();
        let picks: Vec<usize> = (0..7)
            .map(|_| order(Strategy::RoundRobin, &ns, &[0, 1, 2], None, &mut wrr, 0)[0])
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        // The whole order lists every eligible node once.
        let mut all = order(Strategy::RoundRobin, &ns, &[0, 1, 2], None, &mut wrr, 0);
        all.sort();
        assert_eq!(all, [0, 1, 2]);
    }

    #[test]
    fn round_robin_skips_nodes_out_of_rotation() {
        let ns = nodes(&["a", "b", "c"]);
        let mut wrr = SmoothWrr::default();
        let picks: Vec<usize> = (0..4)
            .map(|_| order(Strategy::RoundRobin, &ns, &[0, 2], None, &mut wrr, 0)[0])
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
    }

    #[test]
    fn least_connections_prefers_idle_and_weighs() {
        let mut ns = nodes(&["a", "b", "c"]);
        ns[0].active = 10;
        ns[1].active = 3;
        ns[2].active = 5;
        let mut wrr = SmoothWrr::default();
        assert_eq!(
            order(
                Strategy::LeastConnections,
                &ns,
                &[0, 1, 2],
                None,
                &mut wrr,
                0
            ),
            [1, 2, 0]
        );
        ns[0].weight = 10; // 10 active over weight 10 = 1 per unit
        assert_eq!(
            order(
                Strategy::LeastConnections,
                &ns,
                &[0, 1, 2],
                None,
                &mut wrr,
                0
            ),
            [0, 1, 2]
        );
        // Ties rotate.
        let ns = nodes(&["a", "b", "c"]);
        let firsts: Vec<usize> = (0..3)
            .map(|r| {
                order(
                    Strategy::LeastConnections,
                    &ns,
                    &[0, 1, 2],
                    None,
                    &mut wrr,
                    r,
                )[0]
            })
            .collect();
        assert_eq!(firsts, [0, 1, 2]);
    }

    #[test]
    fn client_id_is_deterministic_and_falls_back_without_a_key() {
        let ns = nodes(&["node1", "node2", "node3"]);
        let mut wrr = SmoothWrr::default();
        let a = order(
            Strategy::ClientId,
            &ns,
            &[0, 1, 2],
            Some(b"dev-7"),
            &mut wrr,
            0,
        );
        let b = order(
            Strategy::ClientId,
            &ns,
            &[0, 1, 2],
            Some(b"dev-7"),
            &mut SmoothWrr::default(),
            99,
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        let mut busy = ns.clone();
        busy[0].active = 5;
        busy[1].active = 5;
        for key in [None, Some(&b""[..])] {
            assert_eq!(
                order(Strategy::ClientId, &busy, &[0, 1, 2], key, &mut wrr, 0)[0],
                2
            );
        }
    }

    #[test]
    fn losing_one_node_moves_only_its_clients() {
        let names: Vec<String> = (1..=5).map(|i| format!("node{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let ns = nodes(&refs);
        let mut wrr = SmoothWrr::default();
        let all = [0, 1, 2, 3, 4];
        let without_2 = [0, 1, 3, 4];
        let mut per_node = [0usize; 5];
        let keys = 10_000;
        for k in 0..keys {
            let key = format!("client-{k}");
            let before = order(
                Strategy::ClientId,
                &ns,
                &all,
                Some(key.as_bytes()),
                &mut wrr,
                0,
            );
            let after = order(
                Strategy::ClientId,
                &ns,
                &without_2,
                Some(key.as_bytes()),
                &mut wrr,
                0,
            );
            per_node[before[0]] += 1;
            if before[0] != 2 {
                assert_eq!(before[0], after[0], "{key} moved although its node stayed");
            } else {
                // Its new node is the runner-up of the full ranking.
                assert_eq!(after[0], before[1]);
            }
        }
        // Spread is even within ±10 % of the fair share.
        for n in per_node {
            assert!((1800..=2200).contains(&n), "uneven spread {per_node:?}");
        }
    }

    /// A ramping node's keys come home in a fixed order as the ramp
    /// grows: at ramp r about r/1000 of them, each that came home at a
    /// lower ramp stays home, the others go to their runner-up, and keys
    /// whose home is elsewhere never move.
    #[test]
    fn slow_start_brings_a_nodes_keys_home_gradually() {
        let mut ns = nodes(&["node1", "node2", "node3"]);
        let all = [0, 1, 2];
        let keys: Vec<String> = (0..6000).map(|k| format!("dev-{k}")).collect();
        let mut wrr = SmoothWrr::default();
        let rank = |ns: &[NodeView], key: &str, wrr: &mut SmoothWrr| {
            order(Strategy::ClientId, ns, &all, Some(key.as_bytes()), wrr, 0)
        };
        let full: Vec<Vec<usize>> = keys.iter().map(|k| rank(&ns, k, &mut wrr)).collect();
        let homed_on_1 = full.iter().filter(|o| o[0] == 1).count();
        let mut home_before = vec![false; keys.len()];
        for ramp in [1, 100, 250, 500, 900, FULL] {
            ns[1].ramp = ramp;
            let mut home = 0;
            for (k, key) in keys.iter().enumerate() {
                let o = rank(&ns, key, &mut wrr);
                assert_eq!(o.len(), 3);
                if full[k][0] != 1 {
                    assert_eq!(o, full[k], "{key} is not node1's and moved");
                    continue;
                }
                if o[0] == 1 {
                    home += 1;
                    home_before[k] = true;
                } else {
                    assert!(!home_before[k], "{key} left home as the ramp grew");
                    assert_eq!(o[0], full[k][1], "{key} goes to its runner-up");
                    assert_eq!(o[1], 1, "then home");
                }
            }
            let want = homed_on_1 as f64 * f64::from(ramp) / 1000.0;
            assert!(
                (home as f64 - want).abs() <= 0.05 * homed_on_1 as f64 + 2.0,
                "ramp {ramp}: {home} of {homed_on_1} home, want about {want}"
            );
        }
    }

    #[test]
    fn slow_start_scales_round_robin_and_least_connections_shares() {
        let mut ns = nodes(&["a", "b"]);
        ns[1].ramp = 250;
        let mut wrr = SmoothWrr::default();
        let to_b = (0..1000)
            .filter(|_| order(Strategy::RoundRobin, &ns, &[0, 1], None, &mut wrr, 0)[0] == 1)
            .count();
        // weight 1 x 250 against 1 x 1000: a fifth of the picks.
        assert_eq!(to_b, 200);
        // 10 on a, 2 on b at a quarter: b counts as 8 per full unit.
        ns[0].active = 10;
        ns[1].active = 2;
        assert_eq!(
            order(Strategy::LeastConnections, &ns, &[0, 1], None, &mut wrr, 0),
            [1, 0]
        );
        ns[1].active = 3;
        assert_eq!(
            order(Strategy::LeastConnections, &ns, &[0, 1], None, &mut wrr, 0),
            [0, 1]
        );
    }

    #[test]
    fn empty_rotation_yields_no_candidates() {
        let ns = nodes(&["a"]);
        let mut wrr = SmoothWrr::default();
        for s in [
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::ClientId,
        ] {
            assert!(order(s, &ns, &[], Some(b"k"), &mut wrr, 0).is_empty());
        }
    }
}
