//! Reading the kernel's files under a root directory: `/` in production, a
//! fixture in tests. Every read returns a [`Reading`], so a missing file or
//! a permission error becomes an "unknown" row, never a panic.

use std::io::ErrorKind;
use std::path::PathBuf;

use super::parse::{self, CpuMax, Max, Membership, Nofile};

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("{path} does not exist")]
    Missing { path: String },
    #[error("{path}: permission denied")]
    Denied { path: String },
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{path}: expected {expected}, found {found:?}")]
    Parse {
        path: String,
        expected: &'static str,
        found: String,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// A value read from the system, or why it could not be.
pub type Reading<T> = Result<T, ReadError>;

/// A cgroup limit and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Found<T> {
    pub value: T,
    /// The file as seen on the real system, e.g. `/sys/fs/cgroup/x/memory.max`.
    pub file: String,
    /// Usage in the same cgroup, when the controller reports it.
    pub current: Option<u64>,
}

/// The cgroup limits that bind a process (the smallest along its path).
#[derive(Debug, Clone, PartialEq)]
pub struct Cgroup {
    /// `None`: no limit file anywhere on the path (no memory controller or
    /// not limited).
    pub memory: Reading<Option<Found<Max>>>,
    pub cpu: Reading<Option<Found<CpuMax>>>,
    pub pids: Reading<Option<Found<Max>>>,
}

/// Reads files under `root`, which stands in for `/`.
#[derive(Debug, Clone)]
pub struct Probe {
    root: PathBuf,
}

const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

impl Probe {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Probe { root: root.into() }
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// Whether `abs` (a path on the real system) exists under the root.
    pub fn exists(&self, abs: &str) -> bool {
        self.path(abs).exists()
    }

    /// The text of `abs`.
    pub fn read(&self, abs: &str) -> Reading<String> {
        std::fs::read_to_string(self.path(abs)).map_err(|e| io_error(abs, &e))
    }

    /// Read and parse `abs`.
    pub fn parsed<T>(
        &self,
        abs: &str,
        parse: impl Fn(&str) -> Option<T>,
        expected: &'static str,
    ) -> Reading<T> {
        let text = self.read(abs)?;
        parse(&text).ok_or_else(|| ReadError::Parse {
            path: abs.to_owned(),
            expected,
            found: text.trim().chars().take(80).collect(),
        })
    }

    /// A sysctl by its dotted name, from `/proc/sys`.
    pub fn sysctl<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Option<T>,
        expected: &'static str,
    ) -> Reading<T> {
        self.parsed(&sysctl_path(name), parse, expected)
    }

    /// RLIMIT_NOFILE of a process from `/proc/<pid>/limits` (`pid` may be
    /// "self").
    pub fn nofile(&self, pid: &str) -> Reading<Nofile> {
        self.parsed(
            &format!("/proc/{pid}/limits"),
            parse::limits_nofile,
            "a \"Max open files\" line",
        )
    }

    /// The cgroup limits of a process (`pid` may be "self").
    pub fn cgroup(&self, pid: &str) -> Reading<Cgroup> {
        let m = parse::membership(&self.read(&format!("/proc/{pid}/cgroup"))?);
        Ok(Cgroup {
            memory: self.cgroup_memory(&m),
            cpu: self.cgroup_cpu(&m),
            pids: self.cgroup_pids(&m),
        })
    }

    /// Where the unified (v2) hierarchy is mounted: `/sys/fs/cgroup`, or
    /// `/sys/fs/cgroup/unified` on hybrid systems.
    fn v2_mount(&self) -> Option<String> {
        [CGROUP_MOUNT.to_owned(), format!("{CGROUP_MOUNT}/unified")]
            .into_iter()
            .find(|m| self.exists(&format!("{m}/cgroup.controllers")))
    }

    /// Where the v1 hierarchy holding `controller` is mounted.
    fn v1_mount(&self, m: &Membership, controller: &str) -> Option<(String, String)> {
        let (ctrls, path) = m.v1_for(controller)?;
        [controller.to_owned(), ctrls.join(",")]
            .into_iter()
            .map(|d| format!("{CGROUP_MOUNT}/{d}"))
            .find(|d| self.path(d).is_dir())
            .map(|d| (d, path.to_owned()))
    }

    /// Every existing `file` from the cgroup at `path` up to the mount's
    /// root, parsed. Inside a container the host's path may not exist under
    /// the container's mount; walking up reaches the container's own cgroup.
    fn walk<T>(
        &self,
        mount: &str,
        path: &str,
        file: &str,
        parse: impl Fn(&str) -> Option<T>,
        expected: &'static str,
    ) -> Reading<Vec<(T, String)>> {
        let mut out = Vec::new();
        for dir in ancestors(path) {
            let abs = format!("{mount}{dir}/{file}").replace("//", "/");
            match self.parsed(&abs, &parse, expected) {
                Ok(v) => out.push((v, abs)),
                Err(ReadError::Missing { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn current(&self, limit_file: &str, usage_file: &str) -> Option<u64> {
        let dir = limit_file.rsplit_once('/').map_or("", |(d, _)| d);
        self.parsed(&format!("{dir}/{usage_file}"), parse::number, "a number")
            .ok()
    }

    fn cgroup_memory(&self, m: &Membership) -> Reading<Option<Found<Max>>> {
        if let (Some(mount), Some(path)) = (self.v2_mount(), &m.v2) {
            let all = self.walk(
                &mount,
                path,
                "memory.max",
                parse::max_or_number,
                "\"max\" or bytes",
            )?;
            if let Some((value, file)) = all.into_iter().min_by_key(|(v, _)| *v) {
                let current = self.current(&file, "memory.current");
                return Ok(Some(Found {
                    value,
                    file,
                    current,
                }));
            }
        }
        let Some((mount, path)) = self.v1_mount(m, "memory") else {
            return Ok(None);
        };
        let all = self.walk(
            &mount,
            &path,
            "memory.limit_in_bytes",
            parse::v1_memory_limit,
            "bytes",
        )?;
        Ok(all
            .into_iter()
            .min_by_key(|(v, _)| *v)
            .map(|(value, file)| {
                let current = self.current(&file, "memory.usage_in_bytes");
                Found {
                    value,
                    file,
                    current,
                }
            }))
    }

    fn cgroup_pids(&self, m: &Membership) -> Reading<Option<Found<Max>>> {
        let parse = parse::max_or_number;
        let expected = "\"max\" or a number";
        let mut all = Vec::new();
        if let (Some(mount), Some(path)) = (self.v2_mount(), &m.v2) {
            all = self.walk(&mount, path, "pids.max", parse, expected)?;
        }
        if all.is_empty() {
            if let Some((mount, path)) = self.v1_mount(m, "pids") {
                all = self.walk(&mount, &path, "pids.max", parse, expected)?;
            }
        }
        Ok(all
            .into_iter()
            .min_by_key(|(v, _)| *v)
            .map(|(value, file)| {
                let current = self.current(&file, "pids.current");
                Found {
                    value,
                    file,
                    current,
                }
            }))
    }

    fn cgroup_cpu(&self, m: &Membership) -> Reading<Option<Found<CpuMax>>> {
        let mut all = Vec::new();
        if let (Some(mount), Some(path)) = (self.v2_mount(), &m.v2) {
            all = self.walk(
                &mount,
                path,
                "cpu.max",
                parse::cpu_max,
                "\"max 100000\" or \"<quota> <period>\"",
            )?;
        }
        if all.is_empty() {
            if let Some((mount, path)) = self.v1_mount(m, "cpu") {
                all = self.v1_cpu(&mount, &path)?;
            }
        }
        let cpus = |c: &CpuMax| c.cpus().unwrap_or(f64::INFINITY);
        Ok(all
            .into_iter()
            .min_by(|a, b| cpus(&a.0).total_cmp(&cpus(&b.0)))
            .map(|(value, file)| Found {
                value,
                file,
                current: None,
            }))
    }

    /// cgroup v1 CPU bandwidth: `cpu.cfs_quota_us` (-1 = none) over
    /// `cpu.cfs_period_us` in the same directory.
    fn v1_cpu(&self, mount: &str, path: &str) -> Reading<Vec<(CpuMax, String)>> {
        let quotas = self.walk(
            mount,
            path,
            "cpu.cfs_quota_us",
            parse::v1_cpu_quota,
            "-1 or microseconds",
        )?;
        let mut out = Vec::new();
        for (quota, file) in quotas {
            let value = match quota {
                None => CpuMax::Unlimited,
                Some(quota_us) => {
                    let period_file = file.replace("cfs_quota_us", "cfs_period_us");
                    let period_us = self.parsed(&period_file, parse::number, "microseconds")?;
                    if period_us == 0 {
                        continue;
                    }
                    CpuMax::Quota {
                        quota_us,
                        period_us,
                    }
                }
            };
            out.push((value, file));
        }
        Ok(out)
    }
}

/// `/proc/sys/...` for a dotted sysctl name.
pub fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// "/a/b" → ["/a/b", "/a", ""] (the empty string is the mount's root).
fn ancestors(path: &str) -> Vec<String> {
    let trimmed = path.trim_end_matches('/');
    let mut out = vec![trimmed.to_owned()];
    let mut cur = trimmed;
    while let Some((parent, _)) = cur.rsplit_once('/') {
        out.push(parent.to_owned());
        cur = parent;
    }
    out.dedup();
    out
}

fn io_error(abs: &str, e: &std::io::Error) -> ReadError {
    let path = abs.to_owned();
    match e.kind() {
        ErrorKind::NotFound => ReadError::Missing { path },
        ErrorKind::PermissionDenied => ReadError::Denied { path },
        _ => ReadError::Io {
            path,
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn write(root: &Path, abs: &str, text: &str) {
        let p = root.join(abs.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn ancestors_reach_the_mount_root() {
        assert_eq!(ancestors("/a/b"), ["/a/b", "/a", ""]);
        assert_eq!(ancestors("/"), [""]);
        assert_eq!(ancestors("/a/"), ["/a", ""]);
    }

    #[test]
    fn missing_and_malformed_files_are_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let p = Probe::new(dir.path());
        let e = p
            .sysctl("net.core.somaxconn", parse::number, "a number")
            .unwrap_err();
        assert_eq!(e.to_string(), "/proc/sys/net/core/somaxconn does not exist");
        write(dir.path(), "/proc/sys/net/core/somaxconn", "lots\n");
        let e = p
            .sysctl("net.core.somaxconn", parse::number, "a number")
            .unwrap_err();
        assert!(matches!(e, ReadError::Parse { .. }), "{e}");
        assert!(p.cgroup("self").is_err());
    }

    #[test]
    fn v2_limits_are_the_smallest_along_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "/proc/self/cgroup", "0::/kubepods/pod1/c1\n");
        write(r, "/sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n");
        write(r, "/sys/fs/cgroup/kubepods/memory.max", "max\n");
        write(r, "/sys/fs/cgroup/kubepods/pod1/memory.max", "1073741824\n");
        write(
            r,
            "/sys/fs/cgroup/kubepods/pod1/memory.current",
            "104857600\n",
        );
        write(r, "/sys/fs/cgroup/kubepods/pod1/c1/memory.max", "max\n");
        write(r, "/sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "max 100000\n");
        write(r, "/sys/fs/cgroup/kubepods/pod1/cpu.max", "150000 100000\n");
        write(r, "/sys/fs/cgroup/kubepods/pod1/c1/pids.current", "3\n");
        write(r, "/sys/fs/cgroup/kubepods/pod1/c1/pids.max", "max\n");
        let cg = Probe::new(r).cgroup("self").unwrap();
        let mem = cg.memory.unwrap().unwrap();
        assert_eq!(mem.value, Max::Limited(1 << 30));
        assert_eq!(mem.file, "/sys/fs/cgroup/kubepods/pod1/memory.max");
        assert_eq!(mem.current, Some(100 << 20));
        assert_eq!(cg.cpu.unwrap().unwrap().value.cpus(), Some(1.5));
        let pids = cg.pids.unwrap().unwrap();
        assert_eq!((pids.value, pids.current), (Max::Unlimited, Some(3)));
    }

    #[test]
    fn v1_hybrid_falls_back_to_the_v1_controllers() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(
            r,
            "/proc/self/cgroup",
            "4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n0::/\n",
        );
        write(r, "/sys/fs/cgroup/unified/cgroup.controllers", "");
        // Inside the container the host path is absent: the mount root is
        // the container's own cgroup.
        write(
            r,
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "536870912\n",
        );
        write(r, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "200000\n");
        write(
            r,
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us",
            "100000\n",
        );
        let cg = Probe::new(r).cgroup("self").unwrap();
        let mem = cg.memory.unwrap().unwrap();
        assert_eq!(mem.value, Max::Limited(512 << 20));
        assert_eq!(mem.file, "/sys/fs/cgroup/memory/memory.limit_in_bytes");
        assert_eq!(cg.cpu.unwrap().unwrap().value.cpus(), Some(2.0));
        assert_eq!(cg.pids.unwrap(), None);
    }
}
