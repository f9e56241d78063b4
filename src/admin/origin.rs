//! Cross-site request refusal for the admin API's state-changing
//! requests (docs/security.md, "Admin API").
//!
//! A page on another site can make a visitor's browser POST to the admin
//! port (a form, or `fetch` in `no-cors` mode); the browser says so in
//! `Sec-Fetch-Site` and `Origin`, which a page cannot forge. The rule, as
//! Go's `http.CrossOriginProtection`:
//!
//! * GET, HEAD and OPTIONS change nothing and pass;
//! * `Sec-Fetch-Site: same-origin` or `none` (typed by the user) passes,
//!   any other value (`same-site`, `cross-site`) is refused;
//! * without it, an `Origin` whose host and port are not the request's
//!   `Host` is refused (`Origin: null` too);
//! * a request with neither header is not from a browser (curl, scripts,
//!   Prometheus) and passes: existing clients need nothing new.

use hyper::Method;
use hyper::header::{HOST, HeaderMap, ORIGIN};

/// Whether a request must be refused as cross-site.
pub fn cross_site(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return false;
    };
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, authority)| authority);
    match (origin_host, host) {
        (Some(o), Some(h)) => !o.eq_ignore_ascii_case(h),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            let name = hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap();
            h.insert(name, v.parse().unwrap());
        }
        h
    }

    /// A request's method and headers, and whether it is refused.
    type Case<'a> = (Method, &'a [(&'a str, &'a str)], bool);

    #[test]
    fn browsers_are_held_to_their_origin_and_other_clients_pass() {
        let host = ("host", "127.0.0.1:9100");
        let cases: &[Case] = &[
            // curl, scripts: no browser headers.
            (Method::POST, &[host], false),
            (Method::POST, &[], false),
            // The status page's own fetch.
            (
                Method::POST,
                &[host, ("sec-fetch-site", "same-origin")],
                false,
            ),
            (
                Method::POST,
                &[host, ("origin", "http://127.0.0.1:9100")],
                false,
            ),
            (
                Method::POST,
                &[host, ("origin", "HTTP://127.0.0.1:9100")],
                false,
            ),
            (Method::POST, &[host, ("sec-fetch-site", "none")], false),
            // Another site's form or fetch.
            (
                Method::POST,
                &[host, ("sec-fetch-site", "cross-site")],
                true,
            ),
            (Method::POST, &[host, ("sec-fetch-site", "same-site")], true),
            (
                Method::POST,
                &[
                    host,
                    ("sec-fetch-site", "cross-site"),
                    ("origin", "http://127.0.0.1:9100"),
                ],
                true,
            ),
            (
                Method::POST,
                &[host, ("origin", "http://evil.example")],
                true,
            ),
            (
                Method::POST,
                &[host, ("origin", "http://127.0.0.1:9101")],
                true,
            ),
            (Method::POST, &[host, ("origin", "null")], true),
            (Method::POST, &[("origin", "http://127.0.0.1:9100")], true),
            (
                Method::DELETE,
                &[host, ("sec-fetch-site", "cross-site")],
                true,
            ),
            // Reading changes nothing.
            (
                Method::GET,
                &[host, ("sec-fetch-site", "cross-site")],
                false,
            ),
            (
                Method::HEAD,
                &[host, ("origin", "http://evil.example")],
                false,
            ),
        ];
        for (method, pairs, refused) in cases {
            assert_eq!(
                cross_site(method, &headers(pairs)),
                *refused,
                "{method} {pairs:?}"
            );
        }
        assert_eq!(cases.len(), 16);
    }
}
