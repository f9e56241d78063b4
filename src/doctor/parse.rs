//! Pure parsers for the kernel files doctor reads. Each returns `None` on
//! text it does not recognise; the caller names the file and what was
//! expected.

/// A limit that may be absent ("max", "unlimited", RLIM_INFINITY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Max {
    Limited(u64),
    Unlimited,
}

impl Max {
    /// True when the limit holds at least `need`.
    pub fn covers(self, need: u64) -> bool {
        match self {
            Max::Limited(v) => v >= need,
            Max::Unlimited => true,
        }
    }

    /// The number, `u64::MAX` for no limit (for arithmetic and ordering).
    pub fn or_max(self) -> u64 {
        match self {
            Max::Limited(v) => v,
            Max::Unlimited => u64::MAX,
        }
    }
}

impl std::fmt::Display for Max {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Max::Limited(v) => write!(f, "{v}"),
            Max::Unlimited => f.write_str("unlimited"),
        }
    }
}

/// Soft and hard RLIMIT_NOFILE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nofile {
    pub soft: Max,
    pub hard: Max,
}

/// `net.ipv4.ip_local_port_range`: the ephemeral ports `connect()` picks
/// from, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    /// How many ports the range holds.
    pub fn size(self) -> u64 {
        u64::from(self.high) - u64::from(self.low) + 1
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.low, self.high)
    }
}

/// cgroup CPU bandwidth: `quota` microseconds of CPU time per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMax {
    Unlimited,
    Quota { quota_us: u64, period_us: u64 },
}

impl CpuMax {
    /// CPUs' worth of time per period; `None` = unlimited.
    pub fn cpus(self) -> Option<f64> {
        match self {
            CpuMax::Unlimited => None,
            CpuMax::Quota {
                quota_us,
                period_us,
            } => Some(quota_us as f64 / period_us as f64),
        }
    }
}

/// Which cgroups a process is in (`/proc/<pid>/cgroup`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The cgroup v2 path (`0::/path`), if the unified hierarchy is mounted.
    pub v2: Option<String>,
    /// cgroup v1: (controllers, path) per hierarchy, e.g. (["cpu","cpuacct"], "/x").
    pub v1: Vec<(Vec<String>, String)>,
}

impl Membership {
    /// The v1 path and hierarchy controllers that hold `controller`.
    pub fn v1_for(&self, controller: &str) -> Option<(&[String], &str)> {
        self.v1
            .iter()
            .find(|(c, _)| c.iter().any(|x| x == controller))
            .map(|(c, p)| (c.as_slice(), p.as_str()))
    }
}

/// A single unsigned number (most sysctls).
pub fn number(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

/// "max" or a number (cgroup v2 `memory.max`, `pids.max`).
pub fn max_or_number(s: &str) -> Option<Max> {
    match s.trim() {
        "max" => Some(Max::Unlimited),
        t => t.parse().ok().map(Max::Limited),
    }
}

/// cgroup v1 `memory.limit_in_bytes`: "no limit" is the largest page-aligned
/// i64 (9223372036854771712); anything from 2^62 up is treated as none.
pub fn v1_memory_limit(s: &str) -> Option<Max> {
    let v: u64 = s.trim().parse().ok()?;
    Some(if v >= 1 << 62 {
        Max::Unlimited
    } else {
        Max::Limited(v)
    })
}

/// cgroup v1 `cpu.cfs_quota_us`: -1 = no limit.
pub fn v1_cpu_quota(s: &str) -> Option<Option<u64>> {
    match s.trim() {
        "-1" => Some(None),
        t => t.parse().ok().map(Some),
    }
}

/// "low high" (tabs or spaces).
pub fn port_range(s: &str) -> Option<PortRange> {
    let mut it = s.split_whitespace();
    let low: u16 = it.next()?.parse().ok()?;
    let high: u16 = it.next()?.parse().ok()?;
    (it.next().is_none() && low <= high).then_some(PortRange { low, high })
}

/// Three numbers: `tcp_mem` (pages), `tcp_rmem`/`tcp_wmem` (bytes).
pub fn triple(s: &str) -> Option<[u64; 3]> {
    let mut it = s.split_whitespace().map(str::parse::<u64>);
    let v = [it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?];
    it.next().is_none().then_some(v)
}

/// `fs.file-nr`: "allocated unused max" → allocated handles.
pub fn file_nr_allocated(s: &str) -> Option<u64> {
    s.split_whitespace().next()?.parse().ok()
}

/// The "Max open files" line of `/proc/<pid>/limits`.
pub fn limits_nofile(s: &str) -> Option<Nofile> {
    let line = s.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    let mut it = line.split_whitespace();
    let soft = rlimit_value(it.next()?)?;
    let hard = rlimit_value(it.next()?)?;
    Some(Nofile { soft, hard })
}

fn rlimit_value(s: &str) -> Option<Max> {
    match s {
        "unlimited" => Some(Max::Unlimited),
        t => t.parse().ok().map(Max::Limited),
    }
}

/// A "Key: <n> kB" line of `/proc/meminfo`, in bytes.
pub fn meminfo_bytes(s: &str, key: &str) -> Option<u64> {
    let rest = s
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    let mut it = rest.split_whitespace();
    let v: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") => v.checked_mul(1024),
        None => Some(v),
        Some(_) => None,
    }
}

/// The first "KernelPageSize: <n> kB" of `/proc/self/smaps`, in bytes.
pub fn kernel_page_size(smaps: &str) -> Option<u64> {
    meminfo_bytes(smaps, "KernelPageSize")
}

/// cgroup v2 `cpu.max`: "max 100000" or "200000 100000" (a lone "max" is
/// accepted too).
pub fn cpu_max(s: &str) -> Option<CpuMax> {
    let mut it = s.split_whitespace();
    let quota = it.next()?;
    let period: u64 = match it.next() {
        Some(p) => p.parse().ok()?,
        None => 100_000,
    };
    if it.next().is_some() || period == 0 {
        return None;
    }
    match quota {
        "max" => Some(CpuMax::Unlimited),
        q => Some(CpuMax::Quota {
            quota_us: q.parse().ok()?,
            period_us: period,
        }),
    }
}

/// `/proc/<pid>/cgroup`: "hierarchy-id:controllers:path" lines. Paths with
/// `..` are ignored (they would walk out of the cgroup mount).
pub fn membership(s: &str) -> Membership {
    let mut m = Membership::default();
    for line in s.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            continue;
        }
        if id == "0" && ctrl.is_empty() {
            m.v2 = Some(path.to_owned());
        } else if !ctrl.is_empty() {
            let ctrls = ctrl
                .split(',')
                .map(|c| c.strip_prefix("name=").unwrap_or(c).to_owned())
                .collect();
            m.v1.push((ctrls, path.to_owned()));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        let r = port_range("32768\t60999\n").unwrap();
        assert_eq!((r.low, r.high, r.size()), (32768, 60999, 28232));
        assert_eq!(r.to_string(), "32768 60999");
        assert_eq!(port_range("1024 65535").unwrap().size(), 64512);
        assert_eq!(port_range("5000 5000").unwrap().size(), 1);
        for bad in ["", "1024", "60999 32768", "1 70000", "a b", "1 2 3"] {
            assert_eq!(port_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn triples() {
        assert_eq!(
            triple("287898\t383867\t575796\n"),
            Some([287898, 383867, 575796])
        );
        assert_eq!(triple("4096 131072"), None);
        assert_eq!(triple("1 2 3 4"), None);
        assert_eq!(triple("1 x 3"), None);
    }

    #[test]
    fn proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             96365                96365                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(
            limits_nofile(text),
            Some(Nofile {
                soft: Max::Limited(1024),
                hard: Max::Limited(524288)
            })
        );
        let unl = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(
            limits_nofile(unl),
            Some(Nofile {
                soft: Max::Unlimited,
                hard: Max::Unlimited
            })
        );
        assert_eq!(limits_nofile("Max processes 1 1 processes"), None);
        assert_eq!(limits_nofile("Max open files  lots  1  files"), None);
    }

    #[test]
    fn cgroup_cpu_max() {
        assert_eq!(cpu_max("max 100000\n"), Some(CpuMax::Unlimited));
        assert_eq!(cpu_max("max"), Some(CpuMax::Unlimited));
        let q = cpu_max("200000 100000").unwrap();
        assert_eq!(q.cpus(), Some(2.0));
        assert_eq!(cpu_max("50000 100000").unwrap().cpus(), Some(0.5));
        assert_eq!(cpu_max("1 0"), None);
        assert_eq!(cpu_max("lots 100000"), None);
        assert_eq!(cpu_max(""), None);
    }

    #[test]
    fn cgroup_memory_max() {
        assert_eq!(max_or_number("max\n"), Some(Max::Unlimited));
        assert_eq!(max_or_number("536870912"), Some(Max::Limited(536870912)));
        assert_eq!(max_or_number("-1"), None);
        assert_eq!(v1_memory_limit("9223372036854771712"), Some(Max::Unlimited));
        assert_eq!(v1_memory_limit("1073741824"), Some(Max::Limited(1 << 30)));
        assert_eq!(v1_cpu_quota("-1"), Some(None));
        assert_eq!(v1_cpu_quota("150000"), Some(Some(150000)));
        assert!(Max::Unlimited.covers(u64::MAX));
        assert!(!Max::Limited(5).covers(6));
        assert!(Max::Limited(5) < Max::Unlimited);
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       24684084 kB\nMemFree:        16890416 kB\n\
                    MemAvailable:   23833128 kB\nHugePages_Total:       0\n";
        assert_eq!(meminfo_bytes(text, "MemAvailable"), Some(23833128 * 1024));
        assert_eq!(meminfo_bytes(text, "MemTotal"), Some(24684084 * 1024));
        assert_eq!(meminfo_bytes(text, "HugePages_Total"), Some(0));
        assert_eq!(meminfo_bytes(text, "Mem"), None);
        assert_eq!(meminfo_bytes(text, "SwapTotal"), None);
        let smaps = "55e4-55e5 r--p 0 08:01 1 /bin/x\nSize: 4 kB\nKernelPageSize:        4 kB\n";
        assert_eq!(kernel_page_size(smaps), Some(4096));
    }

    #[test]
    fn cgroup_membership() {
        let v2 = membership("0::/system.slice/mqttlb.service\n");
        assert_eq!(v2.v2.as_deref(), Some("/system.slice/mqttlb.service"));
        assert!(v2.v1.is_empty());
        let hybrid =
            membership("9:name=systemd:/\n4:memory:/process_api/aa95\n1:cpu,cpuacct:/\n0::/\n");
        assert_eq!(hybrid.v2.as_deref(), Some("/"));
        assert_eq!(
            hybrid.v1_for("memory"),
            Some((&["memory".to_owned()][..], "/process_api/aa95"))
        );
        assert_eq!(hybrid.v1_for("cpuacct").map(|x| x.1), Some("/"));
        assert_eq!(hybrid.v1_for("pids"), None);
        assert_eq!(
            membership("0::/../../etc\nnonsense\n"),
            Membership::default()
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(number(" 4096\n"), Some(4096));
        assert_eq!(number("-1"), None);
        assert_eq!(file_nr_allocated("1568\t0\t2466170\n"), Some(1568));
    }
}
