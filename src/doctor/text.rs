//! The human-readable report: an aligned table, then what to change for
//! every check that is not ok, then the assumptions behind the numbers.

use std::fmt::Write;

use super::{Check, Report, Status};

/// IEC size with one decimal: "22.0 KiB", "2.1 GiB".
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

fn label(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Unknown => "unknown",
        Status::Warn => "WARN",
        Status::Error => "ERROR",
    }
}

/// The whole report as text.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mqttlb doctor: {} connections, role {}{}\n",
        r.connections,
        r.role.as_str(),
        if r.role == super::Role::Proxy {
            format!(", {} broker address(es)", r.backends)
        } else {
            String::new()
        }
    );
    table(&mut out, r);
    fixes(&mut out, r);
    let _ = writeln!(out, "\nAssumptions:");
    for a in r.assumptions.iter().chain(&r.notes) {
        let _ = writeln!(out, "  - {a}");
    }
    let _ = write!(out, "\n{}", summary(r));
    out
}

fn table(out: &mut String, r: &Report) {
    let needed_head = format!("NEEDED FOR {}", r.connections);
    let rows: Vec<[&str; 4]> = r
        .checks
        .iter()
        .map(|c| {
            [
                c.name.as_str(),
                c.value.as_str(),
                c.needed.as_deref().unwrap_or("-"),
                label(c.status),
            ]
        })
        .collect();
    let head = ["CHECK", "VALUE", needed_head.as_str(), "STATUS"];
    let mut width = [0; 3];
    for row in rows.iter().chain(std::iter::once(&head)) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&head).chain(&rows) {
        let [a, b, c, d] = row;
        let _ = writeln!(
            out,
            "{a:<w0$}  {b:<w1$}  {c:<w2$}  {d}",
            w0 = width[0],
            w1 = width[1],
            w2 = width[2]
        );
    }
}

fn fixes(out: &mut String, r: &Report) {
    let mut todo: Vec<&Check> = r.checks.iter().filter(|c| c.status != Status::Ok).collect();
    if todo.is_empty() {
        return;
    }
    todo.sort_by_key(|c| std::cmp::Reverse(c.status));
    let _ = writeln!(out, "\nWhat to change:");
    for c in todo {
        let needed = c
            .needed
            .as_deref()
            .map(|n| format!(", needs {n}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\n{} {} = {}{needed}",
            label(c.status),
            c.name,
            c.value
        );
        if c.status == Status::Unknown {
            let _ = writeln!(out, "    {}", c.why);
        }
        if let Some(rec) = &c.recommendation {
            let _ = writeln!(out, "    {rec}");
        }
        for line in &c.how_to_apply {
            let _ = writeln!(out, "      {line}");
        }
    }
}

fn summary(r: &Report) -> String {
    let names = |s: Status| {
        r.checks
            .iter()
            .filter(|c| c.status == s)
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
    };
    let errors = names(Status::Error);
    let warns = names(Status::Warn);
    if errors.is_empty() {
        format!(
            "Nothing here stops {} connections ({} warning(s)); exit 0.",
            r.connections,
            warns.len()
        )
    } else {
        format!(
            "Would stop {} connections: {} ({} warning(s) besides); exit 1.",
            r.connections,
            errors.join(", "),
            warns.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Role;

    #[test]
    fn sizes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(22 << 10), "22.0 KiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn table_is_aligned_and_fixes_follow() {
        let check = |name: &str, value: &str, status| Check {
            name: name.into(),
            value: value.into(),
            needed: Some(">= 5".into()),
            status,
            why: "because".into(),
            recommendation: (status != Status::Ok).then(|| "do this".into()),
            how_to_apply: vec!["sysctl -w a.b=5".into()],
        };
        let r = Report {
            connections: 5,
            role: Role::Proxy,
            backends: 1,
            status: Status::Error,
            assumptions: vec!["assumed".into()],
            notes: vec![],
            checks: vec![
                check("a.b", "1", Status::Error),
                check("long.name.here", "100", Status::Ok),
            ],
        };
        let text = render(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "CHECK           VALUE  NEEDED FOR 5  STATUS");
        assert_eq!(lines[3], "a.b             1      >= 5          ERROR");
        assert_eq!(lines[4], "long.name.here  100    >= 5          ok");
        assert!(
            text.contains("ERROR a.b = 1, needs >= 5\n    do this\n      sysctl -w a.b=5"),
            "{text}"
        );
        assert!(text.ends_with("Would stop 5 connections: a.b (0 warning(s) besides); exit 1."));
    }
}
