//! Fitting the relay model to measured runs (pure): `mqttlb bench
//! calibrate` measures CPU at several message rates and connection shapes,
//! and this finds the coefficients that explain them best.
//!
//! The model is linear in its costs (CPU per thread wake-up, per connection
//! wake-up, per packet, per byte, …) once its two coalescing times are
//! fixed, and those enter non-linearly (how many wake-ups a stream of
//! packets causes; see [`super::relay`]). So the fit is *separable*: for
//! every pair of coalescing times on a logarithmic grid it solves the
//! linear part exactly, by non-negative least squares on the relative
//! error (a cost cannot be negative, and a capacity planner cares about the
//! error in per cent, not in CPU-seconds of the biggest run), and keeps the
//! pair with the smallest error. With at most six linear terms the
//! non-negative solution is found by trying every subset of free terms
//! (at most 64 small solves per grid point): exact, and simpler to trust
//! than an iterative solver. Written here rather than taken from a crate
//! because it is 150 lines and the crates that do it (nalgebra-based
//! solvers) are far larger than the problem.

/// The coalescing times the model uses (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coalescing {
    /// A stream of packets at `r`/s wakes its reader `r / (1 + r·stream)`
    /// times a second.
    pub stream: f64,
    /// `e` connection wake-ups a second wake the thread `e / (1 + e·thread)`
    /// times a second.
    pub thread: f64,
}

/// The fitted model.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub coalescing: Coalescing,
    /// One cost per feature, ≥ 0, in the feature's unit (CPU-µs per event
    /// when the measured values are CPU-µs per second).
    pub costs: Vec<f64>,
    /// `(fitted − measured) / measured` for each point, in input order.
    pub errors: Vec<f64>,
}

impl Fit {
    /// Root mean square of the relative errors.
    pub fn rms_error(&self) -> f64 {
        if self.errors.is_empty() {
            return 0.0;
        }
        (self.errors.iter().map(|e| e * e).sum::<f64>() / self.errors.len() as f64).sqrt()
    }

    /// The largest relative error, by magnitude (signed).
    pub fn max_error(&self) -> f64 {
        self.errors
            .iter()
            .copied()
            .fold(0.0, |m: f64, e| if e.abs() > m.abs() { e } else { m })
    }
}

/// The coalescing times tried: 0 and 1 µs to 1 s, eight per decade.
pub fn grid() -> Vec<f64> {
    let mut g = vec![0.0];
    for i in 0..=48 {
        g.push(1e-6 * 10f64.powf(f64::from(i) / 8.0));
    }
    g
}

/// Fit `measured[i] ≈ Σ costs[j] · features(i, coalescing)[j]`.
/// `features` gives the same number of features (≤ 6) for every point.
/// With `thread_grid` false only the stream coalescing is searched (the
/// thread one stays 0: the features do not use it). None when there are
/// fewer points than features, a measured value is not positive, or
/// nothing can be solved.
pub fn fit<F>(measured: &[f64], thread_grid: bool, features: F) -> Option<Fit>
where
    F: Fn(usize, Coalescing) -> Vec<f64>,
{
    if measured.is_empty() || measured.iter().any(|m| !(m.is_finite() && *m > 0.0)) {
        return None;
    }
    let grid = grid();
    let threads: &[f64] = if thread_grid { &grid } else { &[0.0] };
    let mut best: Option<(f64, Fit)> = None;
    for &stream in &grid {
        for &thread in threads {
            let c = Coalescing { stream, thread };
            let rows: Vec<Vec<f64>> = (0..measured.len()).map(|i| features(i, c)).collect();
            let n = rows.first().map_or(0, Vec::len);
            if n == 0 || n > 6 || measured.len() < n || rows.iter().any(|r| r.len() != n) {
                return None;
            }
            let Some(costs) = nnls_relative(&rows, measured) else {
                continue;
            };
            let errors: Vec<f64> = rows
                .iter()
                .zip(measured)
                .map(|(r, m)| (dot(r, &costs) - m) / m)
                .collect();
            let sse: f64 = errors.iter().map(|e| e * e).sum();
            if best.as_ref().is_none_or(|(b, _)| sse < *b - 1e-15) {
                best = Some((
                    sse,
                    Fit {
                        coalescing: c,
                        costs,
                        errors,
                    },
                ));
            }
        }
    }
    best.map(|(_, f)| f)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Non-negative least squares of `Σ c_j r_ij ≈ m_i` weighted by `1/m_i`:
/// the best solution over every subset of free (non-zero) terms whose
/// unconstrained solution is non-negative.
fn nnls_relative(rows: &[Vec<f64>], measured: &[f64]) -> Option<Vec<f64>> {
    let n = rows.first()?.len();
    let scaled: Vec<Vec<f64>> = rows
        .iter()
        .zip(measured)
        .map(|(r, m)| r.iter().map(|x| x / m).collect())
        .collect();
    let mut best: Option<(f64, Vec<f64>)> = None;
    for mask in 1u32..(1 << n) {
        let free: Vec<usize> = (0..n).filter(|j| mask & (1 << j) != 0).collect();
        // Normal equations over the free terms; the target is 1 per row.
        let columns: Vec<Vec<f64>> = free
            .iter()
            .map(|&j| {
                scaled
                    .iter()
                    .map(|r| r.get(j).copied().unwrap_or(0.0))
                    .collect()
            })
            .collect();
        let a: Vec<Vec<f64>> = columns
            .iter()
            .map(|cp| {
                let mut row: Vec<f64> = columns.iter().map(|cq| dot(cp, cq)).collect();
                row.push(cp.iter().sum());
                row
            })
            .collect();
        let Some(x) = solve(a) else { continue };
        if x.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            continue;
        }
        let mut costs = vec![0.0; n];
        for (&j, v) in free.iter().zip(&x) {
            if let Some(c) = costs.get_mut(j) {
                *c = *v;
            }
        }
        let sse: f64 = scaled
            .iter()
            .map(|r| {
                let e = dot(r, &costs) - 1.0;
                e * e
            })
            .sum();
        if best.as_ref().is_none_or(|(b, _)| sse < *b) {
            best = Some((sse, costs));
        }
    }
    best.map(|(_, c)| c)
}

/// Gaussian elimination with partial pivoting on an augmented `k × (k+1)`
/// matrix; None when singular (or not of that shape).
fn solve(mut a: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let k = a.len();
    if a.iter().any(|r| r.len() != k + 1) {
        return None;
    }
    let cell = |a: &[Vec<f64>], r: usize, c: usize| a.get(r).and_then(|row| row.get(c)).copied();
    for col in 0..k {
        let pivot = (col..k).max_by(|&i, &j| {
            let (x, y) = (
                cell(&a, i, col).unwrap_or(0.0),
                cell(&a, j, col).unwrap_or(0.0),
            );
            x.abs().total_cmp(&y.abs())
        })?;
        let scale = (0..k)
            .filter_map(|r| cell(&a, r, col))
            .fold(0.0, |m: f64, v| m.max(v.abs()));
        if cell(&a, pivot, col)?.abs() <= 1e-12 * scale.max(1e-300) {
            return None;
        }
        a.swap(col, pivot);
        let (top, bottom) = a.split_at_mut(col + 1);
        let prow = top.last()?;
        let diag = *prow.get(col)?;
        for row in bottom {
            let f = *row.get(col)? / diag;
            for (x, p) in row.iter_mut().zip(prow).skip(col) {
                *x -= f * p;
            }
        }
    }
    let mut x = vec![0.0; k];
    for (r, row) in a.iter().enumerate().rev() {
        let s: f64 = row
            .iter()
            .zip(&x)
            .skip(r + 1)
            .take(k.saturating_sub(r + 1))
            .map(|(a, x)| a * x)
            .sum();
        let v = (row.get(k)? - s) / row.get(r)?;
        *x.get_mut(r)? = v;
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wake-ups of a stream, as the relay model has them.
    fn w(rate: f64, tau: f64) -> f64 {
        rate / (1.0 + rate * tau)
    }

    #[test]
    fn recovers_known_linear_costs() {
        // cost = 3·x + 0·y + 5·z, no coalescing involved.
        let pts = [
            (1.0, 2.0, 3.0),
            (4.0, 1.0, 0.5),
            (2.0, 2.0, 2.0),
            (0.5, 3.0, 1.0),
        ];
        let measured: Vec<f64> = pts.iter().map(|p| 3.0 * p.0 + 5.0 * p.2).collect();
        let f = fit(&measured, false, |i, _| vec![pts[i].0, pts[i].1, pts[i].2]).unwrap();
        assert!((f.costs[0] - 3.0).abs() < 1e-9, "{f:?}");
        assert!(f.costs[1].abs() < 1e-9, "{f:?}");
        assert!((f.costs[2] - 5.0).abs() < 1e-9, "{f:?}");
        assert!(f.max_error().abs() < 1e-9);
    }

    #[test]
    fn recovers_synthetic_relay_coefficients() {
        // Streams (connections, packets/s each) like calibration runs:
        // many slow publishers and few fast ones; a thread wake-up costs
        // 12 µs, a connection wake-up 9 µs, a packet 2.5 µs, with a
        // stream coalescing time of 1 ms and a thread one of 100 µs (both
        // on the grid).
        let (tau, tau_t) = (1e-3, 1e-4);
        let (ct, cw, cp) = (12.0, 9.0, 2.5);
        let runs = [
            (1000.0, 1.0),
            (2000.0, 3.0),
            (2000.0, 8.0),
            (4.0, 500.0),
            (8.0, 1500.0),
            (2.0, 3000.0),
            (500.0, 0.5),
            (16.0, 200.0),
        ];
        let features = |i: usize, c: Coalescing| {
            let (n, r): (f64, f64) = runs[i];
            let e = n * w(r, c.stream);
            vec![w(e, c.thread), e, n * r]
        };
        let truth = Coalescing {
            stream: tau,
            thread: tau_t,
        };
        let measured: Vec<f64> = (0..runs.len())
            .map(|i| {
                let f = features(i, truth);
                ct * f[0] + cw * f[1] + cp * f[2]
            })
            .collect();
        let f = fit(&measured, true, features).unwrap();
        assert!((f.coalescing.stream - tau).abs() / tau < 1e-6, "{f:?}");
        assert!((f.coalescing.thread - tau_t).abs() / tau_t < 1e-6, "{f:?}");
        for (got, want) in f.costs.iter().zip([ct, cw, cp]) {
            assert!((got - want).abs() / want < 1e-6, "{f:?}");
        }
        assert!(f.rms_error() < 1e-9);

        // With ±3 % noise the individual costs trade against each other
        // (thread and connection wake-ups move together), but the fitted
        // model still gives the true CPU within 5 % at every point.
        let noise = [1.03, 0.97, 1.02, 0.98, 1.01, 0.99, 1.03, 0.97];
        let noisy: Vec<f64> = measured.iter().zip(noise).map(|(m, n)| m * n).collect();
        let f = fit(&noisy, true, features).unwrap();
        assert!(f.rms_error() < 0.03, "{f:?}");
        for (i, truth) in measured.iter().enumerate() {
            let got = dot(&features(i, f.coalescing), &f.costs);
            assert!((got - truth).abs() / truth < 0.05, "{i}: {got} vs {truth}");
        }
    }

    #[test]
    fn costs_are_never_negative() {
        // The data want a negative second cost; the fit drops the term.
        let pts = [(1.0, 1.0), (2.0, 1.0), (3.0, 1.0), (4.0, 1.0)];
        let measured: Vec<f64> = pts.iter().map(|p| 2.0 * p.0 - 0.5 * p.1).collect();
        let f = fit(&measured, false, |i, _| vec![pts[i].0, pts[i].1]).unwrap();
        assert!(f.costs.iter().all(|c| *c >= 0.0), "{f:?}");
        assert_eq!(f.costs[1], 0.0);
    }

    #[test]
    fn refuses_what_cannot_be_fitted() {
        assert_eq!(fit(&[], false, |_, _| vec![1.0]), None);
        assert_eq!(fit(&[1.0, 0.0], false, |_, _| vec![1.0]), None);
        assert_eq!(fit(&[1.0], false, |_, _| vec![1.0, 2.0]), None);
    }
}
