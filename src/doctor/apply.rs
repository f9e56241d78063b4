//! How to apply a recommendation: the exact command or configuration line
//! for a shell, sysctl.d, limits.conf, systemd, Docker and Kubernetes.

/// Where a sysctl lives, which decides who may set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Per network namespace and on Kubernetes' safe list: a pod may set it.
    PodSafe,
    /// Per network namespace, not on the safe list: a pod may set it once
    /// the node's kubelet allows it.
    PodUnsafe,
    /// Host-wide (or writable only in the host's namespace).
    Host,
}

/// The lines that set sysctl `name` to `value` now, persistently, and in
/// containers.
pub fn sysctl(name: &str, value: &str, scope: Scope) -> Vec<String> {
    let arg = if value.contains(' ') {
        format!("{name}=\"{value}\"")
    } else {
        format!("{name}={value}")
    };
    let mut lines = vec![
        format!("now:        sysctl -w {arg}"),
        format!(
            "persist:    add \"{name} = {value}\" to /etc/sysctl.d/90-mqttlb.conf, then sysctl --system"
        ),
    ];
    match scope {
        Scope::PodSafe | Scope::PodUnsafe => {
            lines.push(format!("docker:     docker run --sysctl {arg} ..."));
            let k8s = format!(
                "kubernetes: pod spec.securityContext.sysctls: [{{name: {name}, value: \"{value}\"}}]"
            );
            lines.push(if scope == Scope::PodUnsafe {
                format!("{k8s} (not on the safe list: the node's kubelet needs --allowed-unsafe-sysctls={name})")
            } else {
                k8s
            });
        }
        Scope::Host => {
            lines
                .push("docker:     host-wide, not per container: set it on the Docker host".into());
            lines.push(
                "kubernetes: node-level, not settable from a pod: set it on the node (node image, a privileged DaemonSet or a tuning operator)"
                    .into(),
            );
        }
    }
    lines
}

/// The lines that give a process `value` open files (soft = hard = value).
pub fn nofile(value: u64, pid: Option<u32>) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(pid) = pid {
        lines.push(format!("running:    prlimit --pid {pid} --nofile={value}:{value}  (as root; lasts until it exits)"));
    }
    lines.extend([
        format!("shell:      ulimit -n {value}  (before starting mqttlb; above the current hard limit only as root)"),
        format!("login:      /etc/security/limits.conf: \"* soft nofile {value}\" and \"* hard nofile {value}\" (pam_limits sessions, not systemd services)"),
        format!("systemd:    LimitNOFILE={value} in the unit's [Service] (systemctl edit mqttlb; then restart it)"),
        format!("docker:     docker run --ulimit nofile={value}:{value} ..."),
        format!("kubernetes: no pod field: the container runtime's limit applies (LimitNOFILE={value} in containerd.service, or dockerd --default-ulimit nofile={value}:{value})"),
    ]);
    lines
}

/// The lines that give a container or service `bytes` of memory.
pub fn memory_limit(bytes: u64) -> Vec<String> {
    let mib = bytes.div_ceil(1 << 20);
    vec![
        format!("docker:     docker run --memory={mib}m ..."),
        format!(
            "kubernetes: resources.limits.memory: {mib}Mi (and requests.memory for scheduling)"
        ),
        format!("systemd:    MemoryMax={mib}M in the unit's [Service]"),
    ]
}

/// The lines that allow `tasks` processes/threads.
pub fn pids_limit(tasks: u64) -> Vec<String> {
    vec![
        format!("docker:     docker run --pids-limit={tasks} ..."),
        format!("kubernetes: the kubelet's podPidsLimit (at least {tasks})"),
        format!("systemd:    TasksMax={tasks} in the unit's [Service]"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_lines_quote_ranges_and_respect_the_scope() {
        let l = sysctl("net.ipv4.ip_local_port_range", "1024 65535", Scope::PodSafe);
        assert!(l[0].ends_with("sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\""));
        assert!(l[1].contains("net.ipv4.ip_local_port_range = 1024 65535"));
        assert!(l[2].contains("docker run --sysctl net.ipv4.ip_local_port_range=\"1024 65535\""));
        assert!(!l[3].contains("unsafe"));
        let l = sysctl("net.core.somaxconn", "16384", Scope::PodUnsafe);
        assert!(l[3].contains("--allowed-unsafe-sysctls=net.core.somaxconn"));
        let l = sysctl("fs.nr_open", "2097152", Scope::Host);
        assert!(l[0].ends_with("sysctl -w fs.nr_open=2097152"));
        assert!(l[2].contains("host-wide") && l[3].contains("node-level"));
    }

    #[test]
    fn nofile_lines_cover_every_launcher() {
        let l = nofile(262144, Some(42)).join("\n");
        for s in [
            "prlimit --pid 42 --nofile=262144:262144",
            "ulimit -n 262144",
            "* hard nofile 262144",
            "LimitNOFILE=262144",
            "--ulimit nofile=262144:262144",
        ] {
            assert!(l.contains(s), "{s}");
        }
        assert!(!nofile(1, None).join("\n").contains("prlimit"));
        assert!(memory_limit(3 << 29).join("\n").contains("--memory=1536m"));
    }
}
