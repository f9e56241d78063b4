//! Memory and cgroup limits: whether N connections fit in the memory the
//! kernel can give and in the container's or service's cgroup, and the
//! cgroup's CPU and task limits.

use super::apply;
use super::checks::with;
use super::parse::{self, CpuMax, Max};
use super::probe::{Cgroup, Found, Probe, Reading};
use super::text::bytes;
use super::{BASE_BYTES, Check, Status, Target};

/// `MemAvailable` from /proc/meminfo against N connections.
pub fn mem_available(r: &Reading<u64>, t: &Target) -> Check {
    const NAME: &str = "MemAvailable";
    let meaning = "Memory the kernel can give to new work without swapping (/proc/meminfo).";
    with(NAME, r, meaning, |&v| {
        let need = t.memory();
        let c = Check::new(NAME, bytes(v), Status::Ok, meaning).needs(format!(
            ">= {} ({})",
            bytes(need),
            t.memory_formula()
        ));
        let status = if v < need {
            Status::Error
        } else if v < need.saturating_add(need / 5) {
            Status::Warn
        } else {
            return c;
        };
        let fits = v.saturating_sub(BASE_BYTES) / t.bytes_per_conn();
        c.fix(
            status,
            format!(
                "{} holds about {fits} idle connections ((MemAvailable - {}) / {}), {} wanted: add memory, \
                 stop other work here, or spread the clients over more nodes.",
                bytes(v),
                bytes(BASE_BYTES),
                bytes(t.bytes_per_conn()),
                t.connections
            ),
            Vec::new(),
        )
    })
}

/// The cgroup memory limit (v2 `memory.max` or v1 `memory.limit_in_bytes`).
pub fn cgroup_memory(r: &Reading<Option<Found<Max>>>, t: &Target) -> Check {
    let meaning = "The container's or service's memory limit (the smallest along its cgroup path); \
                   past it the kernel reclaims and then OOM-kills. Socket memory is charged to it too.";
    let name = match r {
        Ok(Some(f)) if f.file.ends_with("limit_in_bytes") => "cgroup memory.limit_in_bytes",
        _ => "cgroup memory.max",
    };
    with(name, r, meaning, |found| {
        let Some(f) = found else {
            return Check::info(
                name,
                "none",
                "No cgroup memory limit on this process's path.",
            );
        };
        let need = t.memory();
        let used = f
            .current
            .map(|u| format!(", {} in use", bytes(u)))
            .unwrap_or_default();
        let value = match f.value {
            Max::Limited(v) => bytes(v),
            Max::Unlimited => "unlimited".to_owned(),
        };
        let c = Check::new(
            name,
            value,
            Status::Ok,
            format!("{meaning} Read from {}{used}.", f.file),
        )
        .needs(format!(">= {} ({})", bytes(need), t.memory_formula()));
        let limit = f.value.or_max();
        let status = if limit < need {
            Status::Error
        } else if limit.saturating_sub(f.current.unwrap_or(0)) < need {
            Status::Warn
        } else {
            return c;
        };
        let want = need.saturating_add(f.current.unwrap_or(0));
        c.fix(
            status,
            format!(
                "Give the container or service at least {} ({} for {} connections{used}).",
                bytes(want),
                bytes(need),
                t.connections
            ),
            apply::memory_limit(want),
        )
    })
}

/// The cgroup CPU bandwidth limit: reported, warned about below one CPU.
pub fn cgroup_cpu(r: &Reading<Option<Found<CpuMax>>>) -> Check {
    const NAME: &str = "cgroup cpu.max";
    let meaning = "CPU time the cgroup may use per period. It caps handshakes and messages per second, not \
                   connections: size it with mqttlb estimate.";
    with(NAME, r, meaning, |found| {
        let Some(f) = found else {
            return Check::info(NAME, "none", "No cgroup CPU limit on this process's path.");
        };
        let why = format!("{meaning} Read from {}.", f.file);
        match f.value {
            CpuMax::Unlimited => Check::info(NAME, "max", why),
            CpuMax::Quota {
                quota_us,
                period_us,
            } => {
                let cpus = f.value.cpus().unwrap_or(0.0);
                let c = Check::info(
                    NAME,
                    format!("{cpus:.2} CPUs ({quota_us} {period_us})"),
                    why,
                )
                .needs(">= 1 CPU");
                if cpus >= 1.0 {
                    return c;
                }
                c.fix(
                    Status::Warn,
                    "Less than one CPU: TLS handshakes after a restart will queue; give it at least one (docker --cpus=1, Kubernetes resources.limits.cpu: 1).",
                    Vec::new(),
                )
            }
        }
    })
}

/// The cgroup task limit against mqttlb's threads.
pub fn cgroup_pids(r: &Reading<Option<Found<Max>>>, cpus: Option<u64>) -> Check {
    const NAME: &str = "cgroup pids.max";
    let meaning = "Processes and threads the cgroup may hold. mqttlb runs one worker thread per CPU plus a few; \
                   connections do not add threads.";
    with(NAME, r, meaning, |found| {
        let Some(f) = found else {
            return Check::info(NAME, "none", "No cgroup task limit on this process's path.");
        };
        let need = cpus.unwrap_or(4).saturating_add(32);
        let c = Check::info(NAME, f.value, format!("{meaning} Read from {}.", f.file))
            .needs(format!(">= {need} free (CPUs + 32)"));
        let free = f.value.or_max().saturating_sub(f.current.unwrap_or(0));
        if free >= need {
            return c;
        }
        let v = need.saturating_add(f.current.unwrap_or(0));
        c.fix(
            Status::Warn,
            format!("Only {free} more tasks fit; allow at least {v}."),
            apply::pids_limit(v),
        )
    })
}

/// Memory and the cgroup limits of process `who` ("self" or a pid).
pub fn gather(p: &Probe, t: &Target, who: &str, cpus: Option<u64>) -> Vec<Check> {
    let avail = p.parsed(
        "/proc/meminfo",
        |s| parse::meminfo_bytes(s, "MemAvailable"),
        "a MemAvailable line",
    );
    let cg: Cgroup = match p.cgroup(who) {
        Ok(cg) => cg,
        Err(e) => Cgroup {
            memory: Err(e.clone()),
            cpu: Err(e.clone()),
            pids: Err(e),
        },
    };
    vec![
        mem_available(&avail, t),
        cgroup_memory(&cg.memory, t),
        cgroup_cpu(&cg.cpu),
        cgroup_pids(&cg.pids, cpus),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Role;

    fn proxy(n: u64, backends: u64) -> Target {
        Target {
            connections: n,
            role: Role::Proxy,
            backends,
        }
    }

    #[test]
    fn memory_needs_sockets_and_mqttlb_per_connection() {
        let t = proxy(100_000, 1);
        assert_eq!(t.bytes_per_conn(), 22 << 10);
        let need = t.memory();
        assert_eq!(mem_available(&Ok(need * 2), &t).status, Status::Ok);
        assert_eq!(mem_available(&Ok(need + 1), &t).status, Status::Warn);
        let c = mem_available(&Ok(1 << 30), &t);
        assert_eq!(c.status, Status::Error);
        assert!(
            c.recommendation
                .unwrap()
                .contains("holds about 44683 idle connections")
        );
    }

    #[test]
    fn cgroup_memory_limits() {
        let t = proxy(100_000, 1);
        let found = |value, current| {
            Ok(Some(Found {
                value,
                file: "/sys/fs/cgroup/a/memory.max".to_owned(),
                current,
            }))
        };
        assert_eq!(
            cgroup_memory(&found(Max::Unlimited, None), &t).status,
            Status::Ok
        );
        assert_eq!(cgroup_memory(&Ok(None), &t).value, "none");
        let c = cgroup_memory(&found(Max::Limited(512 << 20), Some(1 << 20)), &t);
        assert_eq!(
            (c.name.as_str(), c.status),
            ("cgroup memory.max", Status::Error)
        );
        assert!(
            c.how_to_apply
                .iter()
                .any(|l| l.contains("resources.limits.memory"))
        );
        let c = cgroup_memory(
            &found(Max::Limited(t.memory() + (1 << 20)), Some(2 << 20)),
            &t,
        );
        assert_eq!(c.status, Status::Warn);
    }

    #[test]
    fn cgroup_cpu_and_pids() {
        fn f<T>(value: T) -> Reading<Option<Found<T>>> {
            Ok(Some(Found {
                value,
                file: "/x".to_owned(),
                current: Some(10),
            }))
        }
        let c = cgroup_cpu(&f(CpuMax::Quota {
            quota_us: 200_000,
            period_us: 100_000,
        }));
        assert_eq!(
            (c.value.as_str(), c.status),
            ("2.00 CPUs (200000 100000)", Status::Ok)
        );
        assert_eq!(
            cgroup_cpu(&f(CpuMax::Quota {
                quota_us: 50_000,
                period_us: 100_000
            }))
            .status,
            Status::Warn
        );
        assert_eq!(cgroup_cpu(&f(CpuMax::Unlimited)).value, "max");
        assert_eq!(
            cgroup_pids(&f(Max::Limited(100)), Some(8)).status,
            Status::Ok
        );
        assert_eq!(
            cgroup_pids(&f(Max::Limited(40)), Some(8)).status,
            Status::Warn
        );
    }
}
