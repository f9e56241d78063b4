//! `mqttlb doctor` as operators run it: against this machine (the values it
//! reports must match what the kernel says), and against fixture roots
//! standing in for `/` (small limits fail with the sysctls to change,
//! generous ones pass, a small cgroup memory limit fails, unreadable files
//! are "unknown", never a crash).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mqttlb");

/// Exit code and stdout of `mqttlb doctor ARGS`.
fn doctor(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("doctor")
        .args(args)
        .output()
        .expect("run mqttlb");
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    (out.status.code().expect("exit code"), stdout)
}

/// `doctor --json ARGS`, parsed, with the exit code.
fn doctor_json(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out) = doctor(&all);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (code, v)
}

fn checks(report: &Value) -> &Vec<Value> {
    report["checks"].as_array().expect("checks array")
}

/// The check named `name`.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    checks(report)
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

fn status<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["status"].as_str().expect("status")
}

/// Exit 1 exactly when some check is an error.
fn assert_exit_matches(code: i32, report: &Value) {
    let errors = checks(report)
        .iter()
        .filter(|c| c["status"] == "error")
        .count();
    assert_eq!(code, i32::from(errors > 0), "{report:#}");
    assert_eq!(report["status"] == "error", errors > 0);
}

/// A directory standing in for `/`.
struct Root(tempfile::TempDir);

impl Root {
    fn new(files: &[(&str, &str)]) -> Root {
        let root = Root(tempfile::tempdir().expect("tempdir"));
        for (path, text) in files {
            root.write(path, text);
        }
        root
    }

    fn write(&self, path: &str, text: &str) {
        let p = self.0.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write fixture");
    }

    fn path(&self) -> &str {
        self.0.path().to_str().expect("utf-8 tempdir")
    }
}

fn limits(soft: u64, hard: u64) -> String {
    format!(
        "Limit                     Soft Limit           Hard Limit           Units     \n\
         Max open files            {soft:<20} {hard:<20} files     \n"
    )
}

/// A node tuned for a million connections, in a cgroup v2 without limits.
fn generous() -> Root {
    let lim = limits(2_097_152, 2_097_152);
    Root::new(&[
        ("proc/self/limits", &lim),
        ("proc/sys/fs/nr_open", "2097152\n"),
        ("proc/sys/fs/file-max", "9223372036854775807\n"),
        ("proc/sys/fs/file-nr", "1000\t0\t9223372036854775807\n"),
        ("proc/sys/net/core/somaxconn", "65535\n"),
        ("proc/sys/net/ipv4/tcp_max_syn_backlog", "65535\n"),
        ("proc/sys/net/ipv4/ip_local_port_range", "1024\t65535\n"),
        ("proc/sys/net/ipv4/tcp_tw_reuse", "1\n"),
        ("proc/sys/net/ipv4/tcp_fin_timeout", "30\n"),
        ("proc/sys/net/core/rmem_default", "212992\n"),
        ("proc/sys/net/core/rmem_max", "16777216\n"),
        ("proc/sys/net/core/wmem_default", "212992\n"),
        ("proc/sys/net/core/wmem_max", "16777216\n"),
        ("proc/sys/net/ipv4/tcp_rmem", "4096\t87380\t16777216\n"),
        ("proc/sys/net/ipv4/tcp_wmem", "4096\t16384\t16777216\n"),
        ("proc/sys/net/ipv4/tcp_mem", "3000000\t4000000\t6000000\n"),
        ("proc/sys/net/netfilter/nf_conntrack_max", "2097152\n"),
        ("proc/sys/net/netfilter/nf_conntrack_count", "12\n"),
        (
            "proc/meminfo",
            "MemTotal:       67108864 kB\nMemAvailable:   60000000 kB\n",
        ),
        ("proc/self/cgroup", "0::/system.slice/mqttlb.service\n"),
        ("sys/fs/cgroup/cgroup.controllers", "cpu memory pids\n"),
        (
            "sys/fs/cgroup/system.slice/mqttlb.service/memory.max",
            "max\n",
        ),
        (
            "sys/fs/cgroup/system.slice/mqttlb.service/memory.current",
            "10485760\n",
        ),
        (
            "sys/fs/cgroup/system.slice/mqttlb.service/cpu.max",
            "max 100000\n",
        ),
        (
            "sys/fs/cgroup/system.slice/mqttlb.service/pids.max",
            "max\n",
        ),
    ])
}

/// A stock small VM: every limit too low for 10000 proxied clients.
fn small() -> Root {
    let lim = limits(1024, 4096);
    Root::new(&[
        ("proc/self/limits", &lim),
        ("proc/sys/fs/nr_open", "4096\n"),
        ("proc/sys/fs/file-max", "8192\n"),
        ("proc/sys/net/core/somaxconn", "128\n"),
        ("proc/sys/net/ipv4/tcp_max_syn_backlog", "128\n"),
        ("proc/sys/net/ipv4/ip_local_port_range", "60000 60999\n"),
        ("proc/sys/net/ipv4/tcp_tw_reuse", "0\n"),
        ("proc/sys/net/ipv4/tcp_fin_timeout", "60\n"),
        ("proc/sys/net/ipv4/tcp_rmem", "4096 131072 6291456\n"),
        ("proc/sys/net/ipv4/tcp_wmem", "4096 16384 4194304\n"),
        ("proc/sys/net/ipv4/tcp_mem", "1000 2000 3000\n"),
        ("proc/sys/net/netfilter/nf_conntrack_max", "8192\n"),
        (
            "proc/meminfo",
            "MemTotal:  524288 kB\nMemAvailable:   262144 kB\n",
        ),
        ("proc/self/cgroup", "0::/\n"),
    ])
}

/// Checks reported with a Linux root: 2 rlimits, 15 kernel, 4 memory/cgroup.
const LINUX_CHECKS: usize = 21;

#[test]
fn reports_what_this_machine_says() {
    let (code, report) = doctor_json(&["--connections", "1000"]);
    assert_eq!(report["connections"], 1000);
    assert_exit_matches(code, &report);
    for c in checks(&report) {
        let s = c["status"].as_str().expect("status");
        assert!(["ok", "warn", "error", "unknown"].contains(&s), "{c}");
        if s != "ok" && s != "unknown" {
            assert!(c["recommendation"].is_string(), "{c}");
        }
    }
    // The child inherits this test's rlimits.
    #[cfg(target_os = "linux")]
    {
        assert_eq!(checks(&report).len(), LINUX_CHECKS);
        let read = |p: &str| std::fs::read_to_string(p).expect(p);
        let words = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            check(&report, "net.core.somaxconn")["value"],
            read("/proc/sys/net/core/somaxconn").trim()
        );
        assert_eq!(
            check(&report, "net.ipv4.ip_local_port_range")["value"],
            words(read("/proc/sys/net/ipv4/ip_local_port_range"))
        );
        let limits = read("/proc/self/limits");
        let line = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .expect("Max open files line");
        let hard = line.split_whitespace().nth(1).expect("hard limit");
        assert_eq!(check(&report, "RLIMIT_NOFILE hard")["value"], hard);
    }
    #[cfg(not(target_os = "linux"))]
    {
        assert!(
            report["notes"].to_string().contains("Linux-only"),
            "{report:#}"
        );
        check(&report, "RLIMIT_NOFILE hard");
    }
}

#[test]
fn small_limits_are_errors_with_the_exact_fix() {
    let root = small();
    let (code, report) = doctor_json(&["--root", root.path(), "--connections", "10000"]);
    assert_eq!(code, 1);
    assert_exit_matches(code, &report);
    assert_eq!(checks(&report).len(), LINUX_CHECKS);
    for name in [
        "RLIMIT_NOFILE hard",
        "fs.nr_open",
        "fs.file-max",
        "net.ipv4.ip_local_port_range",
        "net.netfilter.nf_conntrack_max",
        "MemAvailable",
    ] {
        assert_eq!(status(&report, name), "error", "{name}");
    }
    // Small queues, TIME_WAIT reuse and TCP memory are warnings, not errors.
    for name in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.tcp_tw_reuse",
        "net.ipv4.tcp_mem",
    ] {
        assert_eq!(status(&report, name), "warn", "{name}");
    }
    assert_eq!(
        check(&report, "RLIMIT_NOFILE hard")["needed"],
        ">= 21024 (2 x N + 1024)"
    );
    assert_eq!(
        check(&report, "net.ipv4.ip_local_port_range")["value"],
        "60000 60999"
    );

    let (code, text) = doctor(&["--root", root.path(), "--connections", "10000"]);
    assert_eq!(code, 1);
    for fix in [
        "sysctl -w fs.nr_open=65536",
        "sysctl -w fs.file-max=65536",
        "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"",
        "sysctl -w net.netfilter.nf_conntrack_max=65536",
        "sysctl -w net.core.somaxconn=10000",
        "sysctl -w net.ipv4.tcp_max_syn_backlog=10000",
        "sysctl -w net.ipv4.tcp_tw_reuse=1",
        "\"net.core.somaxconn = 10000\" to /etc/sysctl.d/90-mqttlb.conf",
        "docker run --sysctl net.ipv4.ip_local_port_range=\"1024 65535\"",
        "--allowed-unsafe-sysctls=net.core.somaxconn",
        "LimitNOFILE=65536",
        "* hard nofile 65536",
        "docker run --ulimit nofile=65536:65536",
        "Would stop 10000 connections: RLIMIT_NOFILE hard, fs.nr_open",
    ] {
        assert!(text.contains(fix), "missing {fix:?} in\n{text}");
    }
}

#[test]
fn generous_limits_pass() {
    let root = generous();
    let (code, report) = doctor_json(&["--root", root.path(), "--connections", "50000"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(checks(&report).len(), LINUX_CHECKS);
    for c in checks(&report) {
        assert_eq!(c["status"], "ok", "{c}");
    }
    assert_eq!(check(&report, "cgroup memory.max")["value"], "unlimited");
    let (code, text) = doctor(&["--root", root.path(), "--connections", "50000"]);
    assert_eq!(code, 0);
    assert!(!text.contains("What to change"), "{text}");
    assert!(
        text.contains("Nothing here stops 50000 connections"),
        "{text}"
    );
}

#[test]
fn a_cgroup_memory_limit_too_small_is_an_error() {
    let root = generous();
    root.write("sys/fs/cgroup/system.slice/memory.max", "268435456\n");
    // Two broker addresses: 50000 ports per pair fit the range.
    let (code, report) = doctor_json(&[
        "--root",
        root.path(),
        "--connections",
        "100000",
        "--backends",
        "2",
    ]);
    assert_eq!(code, 1);
    let mem = check(&report, "cgroup memory.max");
    assert_eq!(mem["status"], "error", "{mem}");
    assert_eq!(mem["value"], "256.0 MiB");
    assert!(
        mem["why"]
            .as_str()
            .unwrap()
            .contains("/sys/fs/cgroup/system.slice/memory.max")
    );
    let how = mem["how_to_apply"].to_string();
    assert!(
        how.contains("docker run --memory=") && how.contains("resources.limits.memory"),
        "{how}"
    );
    // Everything else still passes: the cgroup alone stops it.
    let errors: Vec<_> = checks(&report)
        .iter()
        .filter(|c| c["status"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
}

#[test]
fn pid_limits_and_cgroup_come_from_its_proc_entry() {
    let root = generous();
    root.write("proc/4242/limits", &limits(1024, 1024));
    root.write("proc/4242/cgroup", "0::/small\n");
    root.write("sys/fs/cgroup/small/memory.max", "1048576\n");
    let (code, report) = doctor_json(&[
        "--root",
        root.path(),
        "--connections",
        "1000",
        "--pid",
        "4242",
    ]);
    assert_eq!(code, 1);
    assert_eq!(status(&report, "RLIMIT_NOFILE hard"), "ok");
    let hard = check(&report, "RLIMIT_NOFILE hard (pid 4242)");
    assert_eq!(hard["status"], "error");
    assert!(
        hard["how_to_apply"]
            .to_string()
            .contains("prlimit --pid 4242 --nofile=65536:65536")
    );
    assert_eq!(status(&report, "cgroup memory.max"), "error");
    // A pid that is gone is unknown, not an error.
    let (code, report) =
        doctor_json(&["--root", root.path(), "--connections", "1000", "--pid", "7"]);
    assert_eq!(code, 0);
    assert_eq!(status(&report, "RLIMIT_NOFILE hard (pid 7)"), "unknown");
}

#[test]
fn a_load_generator_is_told_to_use_source_ips() {
    let root = generous();
    root.write("proc/sys/net/ipv4/ip_local_port_range", "32768 60999\n");
    let (code, report) = doctor_json(&[
        "--root",
        root.path(),
        "--connections",
        "100000",
        "--role",
        "bench",
    ]);
    assert_eq!(code, 1);
    let ports = check(&report, "net.ipv4.ip_local_port_range");
    assert_eq!(ports["status"], "error");
    assert!(
        ports["recommendation"]
            .as_str()
            .unwrap()
            .contains("need 4 source IPs")
    );
    assert!(
        ports["how_to_apply"][0]
            .as_str()
            .unwrap()
            .contains("--source-ips")
    );
    // As a proxy over 4 broker addresses the same range is enough.
    let (code, report) = doctor_json(&[
        "--root",
        root.path(),
        "--connections",
        "100000",
        "--backends",
        "4",
    ]);
    assert_eq!(code, 0, "{report:#}");
}

#[test]
fn unreadable_files_are_unknown_not_a_crash() {
    let root = Root::new(&[]);
    let (code, report) = doctor_json(&["--root", root.path()]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(checks(&report).len(), LINUX_CHECKS);
    for c in checks(&report) {
        if c["name"] == "net.netfilter.nf_conntrack_max" {
            assert_eq!(c["value"], "not loaded");
            continue;
        }
        assert_eq!(c["status"], "unknown", "{c}");
        assert!(c["why"].as_str().unwrap().contains("does not exist"), "{c}");
    }
    let (code, text) = doctor(&["--root", root.path()]);
    assert_eq!(code, 0);
    assert!(
        text.contains("unknown net.core.somaxconn = unknown"),
        "{text}"
    );
}

#[test]
fn bad_usage_exits_64_and_root_is_hidden() {
    assert_eq!(doctor(&["--connections", "0"]).0, 64);
    assert_eq!(doctor(&["--connections", "many"]).0, 64);
    assert_eq!(doctor(&["--role", "router"]).0, 64);
    let (code, help) = doctor(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        help.contains("--connections") && help.contains("--pid"),
        "{help}"
    );
    assert!(!help.contains("--root"), "{help}");
    assert!(Path::new(BIN).exists());
}
