//! The status page at the admin listener's `/` (proxy role): one
//! server-rendered HTML document, no external assets, from a [`Snapshot`]
//! read through the [`ProxyHandle`].
//!
//! [`render`] is pure: a snapshot (or none, when a token is needed and
//! was not presented) and the page settings in, HTML out. Every string a
//! config file or a peer controls (listener, pool and node names,
//! addresses, certificate paths, check errors) goes through [`Esc`];
//! names in API paths also through [`PathSegment`].
//!
//! The page refreshes itself: its inline script fetches `/` again every
//! `refresh` seconds (with the bearer token when one is kept) and swaps
//! the `<main>` element; without JavaScript a `<noscript>` meta refresh
//! reloads the page. Its buttons POST to the JSON API from the same
//! origin, which the admin server's cross-site rule lets through
//! (`origin.rs`).

use std::fmt::{self, Display, Write};
use std::time::Duration;

use crate::balance::rebalance::Trigger;
use crate::proxy::{
    BackendStatus, CertStatus, ListenerStatus, PoolStatus, ProcessStatus, ProxyHandle,
};

/// Seconds between refreshes when `?refresh=` does not say.
pub const DEFAULT_REFRESH: u32 = 5;
/// Longest refresh period `?refresh=` may ask for (0: never).
pub const MAX_REFRESH: u32 = 3600;

/// Everything the page shows, read at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub version: &'static str,
    pub pid: u32,
    pub process: ProcessStatus,
    /// Open descriptors and the soft limit (`None`: not known here).
    pub fds: Option<(u64, u64)>,
    /// Unix seconds now (certificate days left are counted from it).
    pub now: i64,
    pub listeners: Vec<ListenerStatus>,
    pub pools: Vec<PoolStatus>,
    pub backends: Vec<BackendStatus>,
    pub certificates: Vec<CertStatus>,
}

impl Snapshot {
    /// Read the running proxy now.
    pub fn of(proxy: &ProxyHandle) -> Snapshot {
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            process: proxy.process(),
            fds: crate::sys::open_fds(),
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            listeners: proxy.listener_status(),
            pools: proxy.pools(),
            backends: proxy.backends(),
            certificates: proxy.certificates(),
        }
    }
}

/// How the page is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Seconds between refreshes (0: none).
    pub refresh: u32,
    /// `admin.token_file` is set: the script sends the token it keeps.
    pub token_required: bool,
}

impl Page {
    /// The refresh period asked for in a `refresh` query value: whole
    /// seconds, at most [`MAX_REFRESH`]; anything else is the default.
    pub fn refresh_from(query: Option<&str>) -> u32 {
        query
            .and_then(|v| v.parse::<u32>().ok())
            .map_or(DEFAULT_REFRESH, |n| n.min(MAX_REFRESH))
    }
}

/// A string HTML-escaped for text and quoted attribute values.
pub struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            let (plain, tail) = rest.split_at(i);
            f.write_str(plain)?;
            let mut chars = tail.chars();
            f.write_str(match chars.next() {
                Some('&') => "&amp;",
                Some('<') => "&lt;",
                Some('>') => "&gt;",
                Some('"') => "&quot;",
                _ => "&#39;",
            })?;
            rest = chars.as_str();
        }
        f.write_str(rest)
    }
}

/// A name percent-encoded as one URL path segment (RFC 3986 unreserved
/// characters kept): safe in a path and in an attribute.
pub struct PathSegment<'a>(pub &'a str);

impl Display for PathSegment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                f.write_char(char::from(b))?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

/// Undo [`PathSegment`] (and any percent-encoding of a path segment);
/// `None` when an escape is malformed or the bytes are not UTF-8.
pub fn decode_segment(segment: &str) -> Option<String> {
    let mut out = Vec::with_capacity(segment.len());
    let mut bytes = segment.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Append formatted text (writing to a `String` cannot fail).
fn w(out: &mut String, args: fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn date(unix: i64) -> String {
    let Ok(secs) = u64::try_from(unix) else {
        return "before 1970".into();
    };
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

const STYLE: &str = r#"
:root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2329;background:#f4f6f8}
body{margin:0 auto;max-width:72rem;padding:.75rem}
header{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:baseline}
h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.05rem;margin:.2rem 0 .4rem}
section{background:#fff;border:1px solid #d8dee4;border-radius:6px;padding:.5rem .75rem;margin:.75rem 0}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.3rem .45rem;border-bottom:1px solid #e6eaee;vertical-align:top;overflow-wrap:anywhere}
th{font-weight:600;color:#4b5661}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:0}dt{color:#4b5661}dd{margin:0}
.state{font-weight:700;border-radius:4px;padding:.05rem .4rem}
.up{background:#dff5e3;color:#116329}.down{background:#ffe1e0;color:#a40e26}.draining{background:#fff1c7;color:#7a4d00}
.warn{color:#7a4d00;font-weight:600}.crit{color:#a40e26;font-weight:700}.muted{color:#6b7682}
button{font:inherit;font-size:.85rem;padding:.2rem .6rem;margin:.1rem;border:1px solid #8c959f;border-radius:4px;background:#f6f8fa;cursor:pointer}
#msg{font-size:.9rem}#msg.error{color:#a40e26}
@media (max-width:40rem){
 table,thead,tbody,tr,th,td{display:block}thead{display:none}
 tr{border:1px solid #e6eaee;border-radius:6px;margin:.5rem 0;padding:.25rem}
 td{border:0;padding:.15rem .3rem;display:flex;gap:.5rem}
 td::before{content:attr(data-label);font-weight:600;color:#4b5661;min-width:8.5rem}
}
"#;

const SCRIPT: &str = r#"
(function () {
  var body = document.body, every = +body.dataset.refresh, key = 'mqttlb-admin-token';
  var form = document.getElementById('token'), msg = document.getElementById('msg');
  function token() { try { return sessionStorage.getItem(key); } catch (e) { return null; } }
  function headers() { var h = {}, t = token(); if (t) h['Authorization'] = 'Bearer ' + t; return h; }
  function say(text, error) { msg.textContent = text; msg.className = error ? 'error' : ''; }
  function ask() { form.hidden = false; }
  function load() {
    return fetch(location.pathname + location.search, { headers: headers(), cache: 'no-store' })
      .then(function (r) {
        if (r.status === 401) { ask(); say('token required', true); return; }
        return r.text().then(function (text) {
          var page = new DOMParser().parseFromString(text, 'text/html');
          var fresh = page.getElementById('status');
          if (fresh) { document.getElementById('status').replaceWith(fresh); form.hidden = true; }
        });
      })
      .catch(function () { say('admin server unreachable', true); });
  }
  form.addEventListener('submit', function (e) {
    e.preventDefault();
    try { sessionStorage.setItem(key, form.elements.token.value); } catch (x) {}
    form.elements.token.value = '';
    load();
  });
  document.addEventListener('click', function (e) {
    var b = e.target.closest('button[data-post]');
    if (!b || (b.dataset.confirm && !confirm(b.dataset.confirm))) return;
    fetch(b.dataset.post, { method: 'POST', headers: headers() })
      .then(function (r) {
        return r.text().then(function (t) {
          var j = {}; try { j = JSON.parse(t); } catch (x) {}
          say(b.dataset.post + ': ' + r.status + ' ' + (j.status || t) +
              (j.errors ? ' (' + j.errors.join('; ') + ')' : ''), !r.ok);
        });
      })
      .then(load, function () { say('admin server unreachable', true); });
  });
  if (body.dataset.auth === 'required') { if (token()) load(); else ask(); }
  if (every > 0) setInterval(function () { if (body.dataset.auth !== 'required' || token()) load(); }, every * 1000);
})();
"#;

/// The whole document. `snapshot` is `None` when a token is needed and
/// was not presented: the page then holds no data, only the token form.
pub fn render(page: &Page, snapshot: Option<&Snapshot>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    out.push_str(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>mqttlb status</title>",
    );
    if page.refresh > 0 && !page.token_required {
        w(
            &mut out,
            format_args!(
                "<noscript><meta http-equiv=\"refresh\" content=\"{}\"></noscript>",
                page.refresh
            ),
        );
    }
    w(&mut out, format_args!("<style>{STYLE}</style></head>\n"));
    w(
        &mut out,
        format_args!(
            "<body data-refresh=\"{}\" data-auth=\"{}\">\n<header><h1>mqttlb status</h1>\
             <span id=\"msg\" role=\"status\"></span></header>\n",
            page.refresh,
            if page.token_required {
                "required"
            } else {
                "open"
            }
        ),
    );
    out.push_str(
        "<form id=\"token\" hidden><label>Admin token <input name=\"token\" type=\"password\" \
         autocomplete=\"off\" required></label> <button>Use</button> \
         <span class=\"muted\">kept in this tab only (sessionStorage)</span></form>\n\
         <noscript><p class=\"muted\">The buttons and the token form need JavaScript; \
         the page itself does not.</p></noscript>\n",
    );
    match snapshot {
        Some(s) => main(&mut out, s, page),
        None => out.push_str(
            "<main id=\"status\" data-empty=\"token\"><p>This admin server needs its \
             bearer token (admin.token_file) to show its status.</p></main>\n",
        ),
    }
    w(
        &mut out,
        format_args!("<script>{SCRIPT}</script>\n</body></html>\n"),
    );
    out
}

fn main(out: &mut String, s: &Snapshot, page: &Page) {
    out.push_str("<main id=\"status\">\n");
    process(out, s, page);
    listeners(out, &s.listeners);
    for pool in &s.pools {
        pool_section(out, pool, &s.backends);
    }
    certificates(out, &s.certificates, s.now);
    out.push_str("</main>\n");
}

fn process(out: &mut String, s: &Snapshot, page: &Page) {
    let fds = match s.fds {
        Some((open, limit)) => format!("{open} of {limit}"),
        None => "-".into(),
    };
    w(
        out,
        format_args!(
            "<section id=\"process\"><h2>Process</h2><dl>\
             <dt>version</dt><dd>{}</dd><dt>pid</dt><dd>{}</dd>\
             <dt>uptime</dt><dd>{}</dd>\
             <dt>reloads</dt><dd>{} applied, {} refused</dd>\
             <dt>open files</dt><dd>{}</dd><dt>refresh</dt><dd>{}</dd></dl></section>\n",
            Esc(s.version),
            s.pid,
            duration(s.process.uptime),
            s.process.reloads_ok,
            s.process.reloads_failed,
            fds,
            if page.refresh == 0 {
                "off".to_string()
            } else {
                format!("every {} s", page.refresh)
            },
        ),
    );
}

fn listeners(out: &mut String, listeners: &[ListenerStatus]) {
    out.push_str(
        "<section id=\"listeners\"><h2>Listeners</h2><table><thead><tr><th>Listener</th>\
         <th>Address</th><th>Active</th><th>Accepted</th><th>TLS handshakes</th>\
         <th>Rejected</th></tr></thead><tbody>\n",
    );
    for l in listeners {
        let c = &l.counts;
        let handshakes = if l.tls {
            format!(
                "{} ok, {} failed, {} timed out ({} resumed)",
                c.handshakes_ok, c.handshakes_failed, c.handshakes_timeout, c.resumed
            )
        } else {
            "plain TCP".into()
        };
        let mut rejected = String::new();
        for (reason, n) in &c.rejected {
            w(&mut rejected, format_args!("{}: {n}<br>", Esc(reason)));
        }
        if rejected.is_empty() {
            rejected.push_str("none");
        }
        w(
            out,
            format_args!(
                "<tr data-listener=\"{name}\"><td data-label=\"Listener\">{name}</td>\
                 <td data-label=\"Address\">{addr}</td><td data-label=\"Active\">{}</td>\
                 <td data-label=\"Accepted\">{}</td><td data-label=\"TLS handshakes\">{}</td>\
                 <td data-label=\"Rejected\">{rejected}</td></tr>\n",
                c.active,
                c.total,
                handshakes,
                name = Esc(&l.name),
                addr = Esc(&l.addr.to_string()),
            ),
        );
    }
    out.push_str("</tbody></table></section>\n");
}

fn pool_section(out: &mut String, p: &PoolStatus, backends: &[BackendStatus]) {
    let nodes: Vec<&BackendStatus> = backends.iter().filter(|b| b.pool == p.name).collect();
    w(
        out,
        format_args!(
            "<section class=\"pool\" data-pool=\"{name}\"><h2>Pool {name}</h2><dl>\
             <dt>in rotation</dt><dd>{} of {}</dd>",
            p.backends_in_rotation,
            nodes.len(),
            name = Esc(&p.name),
        ),
    );
    if p.max_connect_rate > 0 {
        w(
            out,
            format_args!(
                "<dt>admission</dt><dd>{}/s; queue {} of {} (timeout {} s){}</dd>",
                p.max_connect_rate,
                p.queued,
                p.queue_size,
                p.queue_timeout.as_secs_f64(),
                if p.pacing { "; <b>pacing</b>" } else { "" },
            ),
        );
    } else {
        w(
            out,
            format_args!(
                "<dt>admission</dt><dd>no rate limit; queue {} of {}{}</dd>",
                p.queued,
                p.queue_size,
                if p.pacing { "; <b>pacing</b>" } else { "" },
            ),
        );
    }
    match p.rebalance {
        Some(r) => w(
            out,
            format_args!(
                "<dt>rebalance</dt><dd>{} s after a node returns, {}/s</dd>",
                r.after.as_secs_f64(),
                r.rate
            ),
        ),
        None => out.push_str("<dt>rebalance</dt><dd>by hand only</dd>"),
    }
    match &p.last_rebalance {
        Some(run) => {
            let trigger = match &run.trigger {
                Trigger::Manual => "by hand".to_string(),
                Trigger::Node(n) => format!("{} returned", Esc(n)),
            };
            w(
                out,
                format_args!(
                    "<dt>{}</dt><dd data-rebalance=\"{}\">{trigger}: {} of {} moved, {} gone, \
                     {}/s, {:.1} s{}</dd>",
                    if run.running() {
                        "rebalancing"
                    } else {
                        "last rebalance"
                    },
                    if run.running() { "running" } else { "done" },
                    run.moved,
                    run.planned,
                    run.gone,
                    run.rate,
                    run.seconds(),
                    run.stopped
                        .map(|why| format!("; stopped: {}", Esc(why)))
                        .unwrap_or_default(),
                ),
            );
        }
        None => out.push_str("<dt>last rebalance</dt><dd>none</dd>"),
    }
    w(
        out,
        format_args!(
            "</dl><p><button type=\"button\" data-post=\"/api/v1/pools/{seg}/rebalance\" \
             data-confirm=\"Move the clients of pool {name} that are out of place?\">\
             Rebalance</button></p>\n",
            seg = PathSegment(&p.name),
            name = Esc(&p.name),
        ),
    );
    out.push_str(
        "<table><thead><tr><th>Node</th><th>Address</th><th>State</th><th>Weight</th>\
         <th>Active</th><th>Cap</th><th>Last check</th><th>Slow start</th><th></th></tr>\
         </thead><tbody>\n",
    );
    for b in nodes {
        node_row(out, b);
    }
    out.push_str("</tbody></table></section>\n");
}

fn node_row(out: &mut String, b: &BackendStatus) {
    let check = match &b.last_check {
        None => "<span class=\"muted\">none yet</span>".to_string(),
        Some(c) => format!(
            "<span class=\"{}\">{}</span> {:.1} ms{}",
            if c.ok { "up state" } else { "down state" },
            if c.ok { "ok" } else { "failed" },
            c.seconds * 1000.0,
            c.error
                .as_deref()
                .map(|e| format!(" <span class=\"muted\">{}</span>", Esc(e)))
                .unwrap_or_default(),
        ),
    };
    let cap = if b.max_connections == 0 {
        "none".to_string()
    } else {
        format!(
            "{}{}",
            b.max_connections,
            if b.at_cap {
                " <b class=\"warn\">at cap</b>"
            } else {
                ""
            }
        )
    };
    let slow = if b.slow_start_ratio >= 1.0 {
        "-".to_string()
    } else {
        format!("{:.0} %", b.slow_start_ratio * 100.0)
    };
    let seg = PathSegment(&b.name);
    let drain = format!(
        "<button type=\"button\" data-post=\"/api/v1/backends/{seg}/drain\" \
         data-confirm=\"Drain {}? New clients go elsewhere.\">Drain</button>",
        Esc(&b.name)
    );
    let enable = format!(
        "<button type=\"button\" data-post=\"/api/v1/backends/{seg}/enable\">Enable</button>"
    );
    let actions = match b.state {
        "up" => drain,
        "draining" => enable,
        _ => format!("{drain}{enable}"),
    };
    w(
        out,
        format_args!(
            "<tr data-node=\"{name}\" data-state=\"{state}\"><td data-label=\"Node\">{name}</td>\
             <td data-label=\"Address\">{addr}</td>\
             <td data-label=\"State\"><span class=\"state {state}\">{state}</span></td>\
             <td data-label=\"Weight\">{}</td><td data-label=\"Active\">{}</td>\
             <td data-label=\"Cap\">{cap}</td><td data-label=\"Last check\">{check}</td>\
             <td data-label=\"Slow start\">{slow}</td><td data-label=\"Actions\">{actions}</td></tr>\n",
            b.weight,
            b.active,
            name = Esc(&b.name),
            addr = Esc(&b.addr.to_string()),
            state = Esc(b.state),
        ),
    );
}

fn certificates(out: &mut String, certs: &[CertStatus], now: i64) {
    out.push_str(
        "<section id=\"certificates\"><h2>Certificates</h2><table><thead><tr>\
         <th>Listener</th><th>Certificate</th><th>Expires</th><th>Days left</th></tr>\
         </thead><tbody>\n",
    );
    if certs.is_empty() {
        out.push_str("<tr><td colspan=\"4\" class=\"muted\">no TLS listener</td></tr>\n");
    }
    for c in certs {
        let days = c.not_after.saturating_sub(now).div_euclid(86_400);
        let (class, left) = match days {
            ..0 => ("crit", "expired".to_string()),
            0..3 => ("crit", days.to_string()),
            3..14 => ("warn", days.to_string()),
            _ => ("", days.to_string()),
        };
        w(
            out,
            format_args!(
                "<tr data-cert=\"{cert}\"><td data-label=\"Listener\">{}</td>\
                 <td data-label=\"Certificate\">{cert}</td><td data-label=\"Expires\">{}</td>\
                 <td data-label=\"Days left\" class=\"{class}\">{left}</td></tr>\n",
                Esc(&c.listener),
                date(c.not_after),
                cert = Esc(&c.cert),
            ),
        );
    }
    out.push_str("</tbody></table></section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::LastCheck;
    use crate::balance::config::RebalanceConfig;
    use crate::balance::rebalance::Progress;
    use crate::metrics::ListenerCounts;

    fn backend(name: &str, state: &'static str) -> BackendStatus {
        BackendStatus {
            pool: "brokers".into(),
            name: name.into(),
            addr: "10.0.0.11:1883".parse().unwrap(),
            state,
            weight: 1,
            active: 7,
            max_connections: 0,
            at_cap: false,
            last_check: Some(LastCheck {
                ok: true,
                seconds: 0.0021,
                error: None,
            }),
            slow_start_ratio: 1.0,
        }
    }

    fn snapshot() -> Snapshot {
        let now = 1_900_000_000;
        Snapshot {
            version: "1.2.3",
            pid: 42,
            process: ProcessStatus {
                uptime: Duration::from_secs(3 * 3600 + 120),
                reloads_ok: 2,
                reloads_failed: 1,
            },
            fds: Some((17, 1024)),
            now,
            listeners: vec![ListenerStatus {
                name: "mqtts".into(),
                addr: "0.0.0.0:8883".parse().unwrap(),
                tls: true,
                counts: ListenerCounts {
                    active: 3,
                    total: 10,
                    handshakes_ok: 9,
                    handshakes_failed: 1,
                    handshakes_timeout: 0,
                    resumed: 4,
                    rejected: vec![("tls_handshake_failed", 1)],
                },
            }],
            pools: vec![PoolStatus {
                name: "brokers".into(),
                backends_in_rotation: 1,
                max_connect_rate: 50,
                queue_size: 100,
                queue_timeout: Duration::from_secs(10),
                queued: 4,
                pacing: true,
                rebalance: Some(RebalanceConfig {
                    after: Duration::from_secs(30),
                    rate: 20,
                }),
                last_rebalance: Some(Progress {
                    trigger: Trigger::Node("node2".into()),
                    rate: 20,
                    planned: 8,
                    moved: 5,
                    gone: 1,
                    started: tokio::time::Instant::now(),
                    finished: None,
                    stopped: None,
                }),
            }],
            backends: vec![
                backend("node1", "up"),
                BackendStatus {
                    max_connections: 100,
                    at_cap: true,
                    slow_start_ratio: 0.25,
                    last_check: Some(LastCheck {
                        ok: false,
                        seconds: 1.0,
                        error: Some("connection refused".into()),
                    }),
                    ..backend("node2", "down")
                },
            ],
            certificates: vec![
                CertStatus {
                    listener: "mqtts".into(),
                    cert: "certs/server.pem".into(),
                    not_after: now + 90 * 86_400 + 5,
                },
                CertStatus {
                    listener: "mqtts".into(),
                    cert: "certs/old.pem".into(),
                    not_after: now + 86_400 + 5,
                },
                CertStatus {
                    listener: "mqtts".into(),
                    cert: "certs/gone.pem".into(),
                    not_after: now - 5,
                },
            ],
        }
    }

    const OPEN: Page = Page {
        refresh: 5,
        token_required: false,
    };

    #[test]
    fn renders_every_part_of_a_snapshot() {
        let html = render(&OPEN, Some(&snapshot()));
        for part in [
            "<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>",
            "<dt>version</dt><dd>1.2.3</dd>",
            "<dt>uptime</dt><dd>3h 2m</dd>",
            "2 applied, 1 refused",
            "<dd>17 of 1024</dd>",
            "<tr data-listener=\"mqtts\">",
            "9 ok, 1 failed, 0 timed out (4 resumed)",
            "tls_handshake_failed: 1",
            "<section class=\"pool\" data-pool=\"brokers\">",
            "<dd>1 of 2</dd>",
            "50/s; queue 4 of 100 (timeout 10 s); <b>pacing</b>",
            "30 s after a node returns, 20/s",
            "data-rebalance=\"running\">node2 returned: 5 of 8 moved, 1 gone",
            "data-post=\"/api/v1/pools/brokers/rebalance\"",
            "<tr data-node=\"node1\" data-state=\"up\">",
            "<tr data-node=\"node2\" data-state=\"down\">",
            "ok</span> 2.1 ms",
            "failed</span> 1000.0 ms <span class=\"muted\">connection refused</span>",
            "100 <b class=\"warn\">at cap</b>",
            "25 %",
            "data-post=\"/api/v1/backends/node1/drain\"",
            "data-post=\"/api/v1/backends/node2/enable\"",
            "class=\"\">90</td>",
            "class=\"crit\">1</td>",
            "class=\"crit\">expired</td>",
            "<td data-label=\"Expires\">2030-06-15T17:46:45Z</td>",
        ] {
            assert!(html.contains(part), "missing {part:?} in\n{html}");
        }
        // An up node offers drain only.
        assert!(!html.contains("/api/v1/backends/node1/enable"));
        assert!(html.contains("data-auth=\"open\""));
        // No external assets: nothing is loaded from anywhere.
        for external in ["src=", "href=", "@import", "url("] {
            assert!(!html.contains(external), "{external}");
        }
    }

    #[test]
    fn config_and_peer_strings_are_escaped() {
        let mut s = snapshot();
        let evil = "<script>alert('x')</script>&\"";
        s.backends[0].name = evil.into();
        s.backends[1].last_check = Some(LastCheck {
            ok: false,
            seconds: 0.0,
            error: Some("<img src=x onerror=alert(1)>".into()),
        });
        s.pools[0].name = "a\"b".into();
        for b in &mut s.backends {
            b.pool = "a\"b".into();
        }
        s.listeners[0].name = "<l>".into();
        s.certificates[0].cert = "/etc/<x>.pem".into();
        let html = render(&OPEN, Some(&s));
        // The page's own script is the only one.
        assert_eq!(html.matches("<script").count(), 1, "{html}");
        assert!(!html.contains("<img"));
        assert!(!html.contains("<l>"));
        assert!(!html.contains("/etc/<x>"));
        assert!(
            html.contains(
                "data-node=\"&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\""
            )
        );
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("data-pool=\"a&quot;b\""));
        // In API paths, names are percent-encoded as one segment.
        assert!(html.contains(
            "/api/v1/backends/%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E%26%22/drain"
        ));
        assert!(html.contains("/api/v1/pools/a%22b/rebalance"));
    }

    #[test]
    fn without_the_token_the_page_holds_no_data() {
        let page = Page {
            refresh: 5,
            token_required: true,
        };
        let html = render(&page, None);
        assert!(html.contains("data-auth=\"required\""));
        assert!(html.contains("<form id=\"token\""));
        assert!(html.contains("data-empty=\"token\""));
        assert!(!html.contains("data-node="));
        // The meta refresh would reload without the token: the script
        // refreshes instead.
        assert!(!html.contains("http-equiv"));
        // With the token, the same page carries the data.
        assert!(render(&page, Some(&snapshot())).contains("data-node=\"node1\""));
    }

    #[test]
    fn refresh_parameter_is_bounded() {
        assert_eq!(Page::refresh_from(None), DEFAULT_REFRESH);
        assert_eq!(Page::refresh_from(Some("2")), 2);
        assert_eq!(Page::refresh_from(Some("0")), 0);
        assert_eq!(Page::refresh_from(Some("99999")), MAX_REFRESH);
        assert_eq!(Page::refresh_from(Some("-1")), DEFAULT_REFRESH);
        assert_eq!(Page::refresh_from(Some("x")), DEFAULT_REFRESH);
        let off = render(
            &Page {
                refresh: 0,
                token_required: false,
            },
            Some(&snapshot()),
        );
        assert!(!off.contains("http-equiv"));
        assert!(off.contains("data-refresh=\"0\""));
    }

    #[test]
    fn path_segments_round_trip() {
        for name in ["node1", "node/10.0.0.1", "a b%c", "ünï", "<x>&\""] {
            let encoded = PathSegment(name).to_string();
            assert!(!encoded.contains('/') || name.is_empty(), "{encoded}");
            assert_eq!(decode_segment(&encoded).as_deref(), Some(name));
        }
        assert_eq!(decode_segment("%2"), None);
        assert_eq!(decode_segment("%zz"), None);
        assert_eq!(decode_segment("%FF"), None);
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(Duration::from_secs(12)), "12s");
        assert_eq!(duration(Duration::from_secs(125)), "2m 5s");
        assert_eq!(duration(Duration::from_secs(3 * 86400 + 7200)), "3d 2h");
    }
}
