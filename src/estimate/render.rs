//! Output: the human-readable report and the `--json` one.

use std::fmt::Write as _;

use serde::Serialize;

use super::calibration::Calibration;
use super::figures::{ComponentEstimate, Estimate, NodeFigures, PacedStorm, QueueLimit, Term};
use super::num::{fmt_num, to_f64};
use super::workload::Workload;

/// Everything `--json` prints.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub inputs: Inputs<'a>,
    pub calibration: CalibrationInfo<'a>,
    pub proxy: &'a ComponentEstimate,
    pub broker: &'a ComponentEstimate,
    pub warnings: &'a [String],
}

/// The workload with its derived rates.
#[derive(Debug, Serialize)]
pub struct Inputs<'a> {
    #[serde(flatten)]
    pub workload: &'a Workload,
    pub deliveries_per_s: f64,
    pub pingreqs_per_s: f64,
}

/// The calibration used and where it came from.
#[derive(Debug, Serialize)]
pub struct CalibrationInfo<'a> {
    pub source: &'a str,
    #[serde(flatten)]
    pub calibration: &'a Calibration,
}

/// The `--json` report.
pub fn render_json(
    w: &Workload,
    source: &str,
    cal: &Calibration,
    e: &Estimate,
    warnings: &[String],
) -> String {
    let report = Report {
        inputs: Inputs {
            workload: w,
            deliveries_per_s: w.deliveries_per_s(),
            pingreqs_per_s: w.pingreqs_per_s(),
        },
        calibration: CalibrationInfo {
            source,
            calibration: cal,
        },
        proxy: &e.proxy,
        broker: &e.broker,
        warnings,
    };
    // Serialising plain structs of finite numbers and strings cannot fail;
    // fall back to an empty object rather than panic.
    let mut s = serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".to_string());
    s.push('\n');
    s
}

/// Memory given in MiB, in the unit that reads best.
fn fmt_mib(mib: f64) -> String {
    if mib < 1.0 {
        format!("{} KiB", fmt_num(mib * 1024.0))
    } else if mib < 1024.0 {
        format!("{} MiB", fmt_num(mib))
    } else if mib < 1024.0 * 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{:.2} TiB", mib / 1024.0 / 1024.0)
    }
}

fn fmt_cores(n: u64) -> String {
    match n {
        1 => "1 core".to_string(),
        2..1000 => format!("{n} cores"),
        _ => format!("{} cores", fmt_num(to_f64(n))),
    }
}

fn fmt_payload(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else {
        fmt_mib(to_f64(bytes) / 1024.0 / 1024.0)
    }
}

fn render_component(out: &mut String, name: &str, c: &ComponentEstimate, w: &Workload) {
    let (title, sized) = if c.nodes > 1 {
        (
            format!(
                "{} nodes, each sized for one lost ({} carrying the load)",
                c.nodes, c.per_node.live_nodes
            ),
            "one node, one lost",
        )
    } else {
        ("1 node: no redundancy".to_string(), "the node")
    };
    let node = |label: &str, f: &NodeFigures| {
        format!(
            "  {label:<20} {}, {}  ({} cores busy, {} used)\n",
            fmt_cores(f.cores),
            fmt_mib(f.memory_mib),
            fmt_num(f.cpu_busy),
            fmt_mib(f.memory_used_mib)
        )
    };
    let _ = writeln!(out, "{name}: {title}");
    out.push_str(&node("size each node", &c.per_node));
    if c.nodes > 1 {
        out.push_str(&node(
            &format!("all {} up, each", c.nodes),
            &c.per_node_all_up,
        ));
    }
    out.push_str(&node("one node for all", &c.single_node));
    let _ = writeln!(
        out,
        "  {:<20} {} ({:.0} % of a node's cost)",
        "bottleneck",
        c.bottleneck.describe(),
        c.bottleneck_share * 100.0
    );
    let _ = writeln!(out, "  CPU of {sized}: rate × cost = cores busy");
    for t in &c.cpu {
        // Counts, not rates: the connections held cost their unit every
        // second, the background once.
        let (count, unit) = match t.term {
            Term::HeldConnections => (fmt_num(t.rate_per_s), "µs/s"),
            Term::Background => ("1".to_string(), "µs/s"),
            _ => (format!("{}/s", fmt_num(t.rate_per_s)), "µs"),
        };
        let _ = writeln!(
            out,
            "    {:<16} {:>10} × {:>8} {:<4} = {:>7.3}",
            t.term.label(),
            count,
            fmt_num(t.unit_cpu_us),
            unit,
            t.cores
        );
    }
    let _ = writeln!(
        out,
        "    {:<46}{:>7.3} / {} → {}",
        "total",
        c.per_node.cpu_busy,
        w.headroom,
        fmt_cores(c.per_node.cores)
    );
    render_wakeups(out, c);
    let _ = writeln!(out, "  memory of {sized}: count × size");
    for t in &c.memory {
        if t.term == Term::BaseMemory {
            let _ = writeln!(out, "    {:<16} {:>38}", t.term.label(), fmt_mib(t.mib));
        } else {
            let _ = writeln!(
                out,
                "    {:<16} {:>10} × {:>8} KiB = {:>10}",
                t.term.label(),
                fmt_num(t.count),
                fmt_num(t.unit_kib),
                fmt_mib(t.mib)
            );
        }
    }
    let _ = writeln!(
        out,
        "    {:<44}{:>11} / {} → {}",
        "total",
        fmt_mib(c.per_node.memory_used_mib),
        w.headroom,
        fmt_mib(c.per_node.memory_mib)
    );
    if let Some(s) = &c.reconnect_storm {
        let time = match s.seconds_at_spare {
            Some(t) => format!("≈ {} s on the survivors' spare cores", fmt_num(t)),
            None => "the survivors have no spare cores (--headroom 1)".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<20} {} clients reconnect: {} CPU-s, {time}",
            "losing a node",
            fmt_num(s.clients),
            fmt_num(s.cpu_seconds)
        );
        if let Some(a) = &s.admission {
            render_paced_storm(out, a, s.clients, w);
        }
    }
    let _ = writeln!(out);
}

/// The wake-up rates the relay terms assumed, and what it would cost if
/// no two socket wake-ups ever shared a thread wake-up (arrivals spread
/// out more evenly than the calibration's generator sends them).
fn render_wakeups(out: &mut String, c: &ComponentEstimate) {
    let find = |terms: [Term; 2]| c.cpu.iter().find(|t| terms.contains(&t.term));
    let (Some(conn), Some(thread)) = (
        find([Term::RelayWakeups, Term::BrokerWakeups]),
        find([Term::RelayThreadWakeups, Term::BrokerThreadWakeups]),
    ) else {
        return;
    };
    // Packets per socket read: the proxy relays every packet it reads.
    let packets: f64 = c
        .cpu
        .iter()
        .filter(|t| {
            matches!(
                t.term,
                Term::RelayPublish | Term::RelayAcks | Term::KeepAlive
            )
        })
        .map(|t| t.rate_per_s)
        .sum();
    let per = if conn.term == Term::RelayWakeups && conn.rate_per_s > 0.0 && packets > 0.0 {
        format!(" ({} packets each)", fmt_num(packets / conn.rate_per_s))
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "  wake-ups assumed     {}/s sockets read{per}, {}/s threads woken",
        fmt_num(conn.rate_per_s),
        fmt_num(thread.rate_per_s)
    );
    let worst = (conn.rate_per_s - thread.rate_per_s).max(0.0) * thread.unit_cpu_us / 1e6;
    if worst >= 0.0005 {
        let _ = writeln!(
            out,
            "  {:<20} +{} cores busy if every socket read woke a thread",
            "",
            fmt_num(worst)
        );
    }
}

fn fmt_rate(per_s: f64) -> String {
    format!("{}/s", fmt_num(per_s))
}

/// Losing a broker node through the proxies' admission: the lines under
/// the broker's "losing a node".
fn render_paced_storm(out: &mut String, a: &PacedStorm, clients: f64, w: &Workload) {
    let row = |out: &mut String, label: &str, text: String| {
        let _ = writeln!(out, "    {label:<16} {text}");
    };
    let back = |seconds: Option<f64>| match seconds {
        Some(t) => format!("all back in ≈ {} s", fmt_num(t)),
        None => "as fast as the clients come".to_string(),
    };
    let proxies = format!(
        "{} prox{}",
        a.proxies,
        if a.proxies == 1 { "y" } else { "ies" }
    );
    let pace = match (a.paced_rate_per_s, a.paced, a.arrival_per_s) {
        (Some(total), true, _) => format!(
            "max_connect_rate {} × {proxies} = {} to the {} survivors: {}",
            fmt_rate(f64::from(w.max_connect_rate)),
            fmt_rate(total),
            a.survivors,
            back(a.seconds)
        ),
        (rate, _, Some(arrival)) => format!(
            "{}: as fast as the {proxies} handshake, {}: {}",
            if rate.is_some() {
                "max_connect_rate is above the arrival, nobody waits"
            } else {
                "no max_connect_rate"
            },
            fmt_rate(arrival),
            back(a.seconds)
        ),
        (_, _, None) => "no max_connect_rate: as fast as the clients come (the proxies have no \
                         spare cores to bound the handshakes)"
            .to_string(),
    };
    row(out, "pace", pace);
    if let (Some(rate), Some(peak)) = (a.broker_rate_per_s, a.broker_cpu_peak) {
        let unpaced = match (a.paced, a.broker_cpu_peak_unpaced) {
            (true, Some(u)) => format!(" (unpaced: {})", fmt_num(u)),
            (true, None) => " (unpaced: unbounded)".to_string(),
            (false, _) => String::new(),
        };
        row(
            out,
            "survivors' CPU",
            format!(
                "{} + {} ÷ {} × {} µs = {} cores busy each, of {}{unpaced}",
                fmt_num(a.broker_cpu_steady),
                fmt_rate(rate),
                a.survivors,
                fmt_num(a.broker_connect_cpu_us),
                fmt_num(peak),
                a.broker_cores
            ),
        );
    }
    let proxy_cpu = match a.proxy_busy_seconds {
        Some(t) => format!(
            "not paced: {} handshakes each at {} on its spare cores: {} of {} cores busy for {} s",
            fmt_num(a.clients_per_proxy),
            fmt_rate(a.arrival_per_s.unwrap_or(0.0) / f64::from(a.proxies.max(1))),
            fmt_num(a.proxy_cpu_peak),
            a.proxy_cores,
            fmt_num(t)
        ),
        None => format!(
            "not paced: {} handshakes each take cores from the relay ({} of {} cores busy)",
            fmt_num(a.clients_per_proxy),
            fmt_num(a.proxy_cpu_peak),
            a.proxy_cores
        ),
    };
    row(out, "proxies' CPU", proxy_cpu);
    let Some(q) = &a.queue else {
        return;
    };
    let limits = format!(
        "size {}, timeout {} s",
        fmt_num(to_f64(w.queue_size)),
        fmt_num(w.queue_timeout_s)
    );
    let queue = if q.refused > 0.0 {
        format!(
            "does not hold the wave: {} would wait at once, the last for {} s ({limits}): ≈ {} \
             of {} refused \"server busy\" (queue.{}), they come back: {} CPU-s more handshakes",
            fmt_num(q.unbounded_peak_waiting),
            fmt_num(q.unbounded_longest_wait_s),
            fmt_num(q.refused),
            fmt_num(clients),
            q.refused_by.map_or("size", QueueLimit::as_str),
            fmt_num(q.retry_cpu_seconds)
        )
    } else {
        format!(
            "at most {} waiting on each proxy, the longest {} s ({limits}): holds the wave",
            fmt_num(q.peak_waiting),
            fmt_num(q.longest_wait_s)
        )
    };
    row(out, "queue", queue);
    row(
        out,
        "queue memory",
        format!(
            "{} × {} KiB = {} on each proxy at the peak",
            fmt_num(q.peak_waiting),
            fmt_num(q.waiter_kib),
            fmt_mib(q.peak_memory_mib)
        ),
    );
}

/// The human-readable report.
pub fn render_text(
    w: &Workload,
    source: &str,
    cal: &Calibration,
    e: &Estimate,
    warnings: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Workload");
    let _ = writeln!(
        out,
        "  connections          {}, {:.0} % over TLS",
        fmt_num(to_f64(w.connections)),
        w.tls_share * 100.0
    );
    if let Some(ps) = &w.pubsub {
        let _ = writeln!(
            out,
            "  publishers           {} × {} msg/s; {} subscribers over {} topic{}",
            fmt_num(to_f64(ps.publishers)),
            fmt_num(ps.rate_per_publisher),
            fmt_num(to_f64(ps.subscribers)),
            fmt_num(to_f64(ps.topics)),
            if ps.topics == 1 { "" } else { "s" }
        );
    }
    let _ = writeln!(
        out,
        "  messages             {} published/s × fan-out {} = {} deliveries/s",
        fmt_num(w.publish_rate),
        fmt_num(w.fan_out),
        fmt_num(w.deliveries_per_s())
    );
    let _ = writeln!(
        out,
        "  payload, QoS         {}, QoS {}",
        fmt_payload(w.payload_bytes),
        w.qos.level()
    );
    let _ = writeln!(
        out,
        "  new connections      {}/s{}",
        fmt_num(w.new_connections_per_s),
        if w.new_connections_default {
            " (default: each client reconnects once an hour)"
        } else {
            ""
        }
    );
    if w.keep_alive_s > 0.0 {
        let _ = writeln!(
            out,
            "  keep-alive           {} s: {} PINGREQ/s and as many PINGRESP/s",
            fmt_num(w.keep_alive_s),
            fmt_num(w.pingreqs_per_s())
        );
    } else {
        let _ = writeln!(out, "  keep-alive           off");
    }
    let _ = writeln!(
        out,
        "  headroom             the load may use {:.0} % of a node's cores and memory",
        w.headroom * 100.0
    );
    let _ = writeln!(
        out,
        "  nodes                {} proxy, {} broker; {} GiB per core",
        w.proxy_nodes,
        w.broker_nodes,
        fmt_num(w.gib_per_core)
    );
    let _ = writeln!(out);
    let m = &cal.measured;
    let _ = writeln!(out, "Calibration          {source}");
    let _ = writeln!(out, "  measured by        {}", m.command);
    let _ = writeln!(
        out,
        "  on                 {}, {} CPUs ({}), mqttlb {}",
        m.date, m.cpus, m.cpu_model, m.mqttlb_version
    );
    if let Some(f) = &cal.fit {
        let _ = writeln!(
            out,
            "  relay model fit    {} runs: proxy CPU within {:+.0} % (rms {:.0} %), broker {:+.0} % (rms {:.0} %)",
            f.points.len(),
            100.0 * f.proxy_max_error,
            100.0 * f.proxy_rms_error,
            100.0 * f.broker_max_error,
            100.0 * f.broker_rms_error
        );
    }
    let _ = writeln!(out);
    render_component(&mut out, "Proxy", &e.proxy, w);
    render_component(&mut out, "Broker (mqttlb broker)", &e.broker, w);
    if !warnings.is_empty() {
        let _ = writeln!(out, "Notes");
        for n in warnings {
            let _ = writeln!(out, "  - {n}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "OS limits for this load: mqttlb doctor --connections {:.0}",
        e.proxy.per_node.connections.ceil()
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;
    use crate::estimate::estimate;
    use crate::estimate::model::tests::{round, workload};

    #[test]
    fn memory_formatting() {
        assert_eq!(fmt_mib(0.5), "512 KiB");
        assert_eq!(fmt_mib(2048.0), "2.00 GiB");
    }

    #[test]
    fn reports_render_every_figure() {
        let (w, cal) = (workload(), round());
        let e = estimate(&w, &cal).unwrap();
        let text = render_text(&w, "cal.toml", &cal, &e, &[]);
        assert!(text.contains("Calibration          cal.toml"), "{text}");
        assert!(text.contains("size each node       7 cores"), "{text}");
        assert!(text.contains("message relay"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&w, "cal.toml", &cal, &e, &[])).unwrap();
        assert_eq!(json["proxy"]["per_node"]["cores"], 7);
        assert_eq!(json["proxy"]["bottleneck"], "message_relay");
        assert_eq!(json["inputs"]["deliveries_per_s"], 200_000.0);
        assert_eq!(json["inputs"]["qos"], 0);
        assert_eq!(json["calibration"]["measured"]["command"], "test");
        let storm = &json["broker"]["reconnect_storm"]["admission"];
        assert_eq!(storm["paced"], false);
        assert_eq!(storm["queue"], serde_json::Value::Null);
        assert!(text.contains("no max_connect_rate: as fast as the 2 proxies handshake, 10,990/s"));
    }

    #[test]
    fn a_paced_storm_reports_its_queue() {
        let cal = round();
        let w = Workload {
            max_connect_rate: 10,
            queue_size: 50,
            ..workload()
        };
        let e = estimate(&w, &cal).unwrap();
        let text = render_text(&w, "cal.toml", &cal, &e, &[]);
        for line in [
            "    pace             max_connect_rate 10/s × 2 proxies = 20/s to the 2 survivors: \
             all back in ≈ 16.7 s",
            "    survivors' CPU   1.10 + 20/s ÷ 2 × 50 µs = 1.10 cores busy each, of 3 (unpaced: 1.38)",
            "    proxies' CPU     not paced: 167 handshakes each at 5,495/s on its spare cores: \
             7 of 7 cores busy for 0.03 s",
            "≈ 233 of 333 refused \"server busy\" (queue.size)",
            "    queue memory     50 × 21.2 KiB = 1.03 MiB on each proxy at the peak",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&w, "cal.toml", &cal, &e, &[])).unwrap();
        let storm = &json["broker"]["reconnect_storm"]["admission"];
        assert_eq!(storm["paced"], true);
        assert_eq!(storm["broker_rate_per_s"], 20.0);
        assert_eq!(storm["queue"]["refused_by"], "size");
        assert_eq!(storm["queue"]["peak_waiting"], 50.0);
        assert_eq!(json["inputs"]["max_connect_rate"], 10);
        assert_eq!(json["inputs"]["queue_size"], 50);
        assert_eq!(json["inputs"]["queue_timeout_s"], 10.0);
    }
}
