//! A real DNS server for tests: dnsmasq (Debian package `dnsmasq-base`)
//! on a loopback port, answering from a hosts file the test rewrites
//! ([`Dnsmasq::set_hosts`] re-reads it on SIGHUP), with TTL 0 so that a
//! resolver never answers from its cache.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::{DEADLINE, free_port, wait_until};

pub struct Dnsmasq {
    pub addr: SocketAddr,
    hosts: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("dnsmasq is installed (scripts/test installs dnsmasq-base)")
}

impl Dnsmasq {
    /// Start with `hosts` (lines of `/etc/hosts` format) as its only data.
    pub async fn start(hosts: &str) -> Dnsmasq {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        std::fs::write(&path, hosts).expect("write hosts");
        let log = dir.path().join("dnsmasq.log");
        // A port found free may be taken before dnsmasq binds it: retry.
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let mut child = Command::new(binary())
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--local-ttl=0",
                    "--user=root",
                    "--pid-file=",
                ])
                .arg(format!("--port={}", addr.port()))
                .arg(format!("--addn-hosts={}", path.display()))
                .arg(format!("--log-facility={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn dnsmasq");
            let mut exited = false;
            let up = async {
                loop {
                    if let Ok(Some(_)) = child.try_wait() {
                        exited = true;
                        return false;
                    }
                    if tokio::net::TcpStream::connect(addr).await.is_ok() {
                        return true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            };
            match tokio::time::timeout(DEADLINE, up).await {
                Ok(true) => {
                    return Dnsmasq {
                        addr,
                        hosts: path,
                        child,
                        _dir: dir,
                    };
                }
                _ if exited => continue,
                _ => panic!(
                    "dnsmasq did not listen on {addr}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
        panic!(
            "dnsmasq did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Replace the hosts file and make dnsmasq read it again; returns once
    /// dnsmasq logged the reload.
    pub async fn set_hosts(&mut self, hosts: &str) {
        let log = self.hosts.with_file_name("dnsmasq.log");
        let reads = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("read ")
                .count()
        };
        let before = reads();
        std::fs::write(&self.hosts, hosts).expect("write hosts");
        let pid = self.child.id().expect("dnsmasq runs");
        let hup = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(hup.success(), "SIGHUP dnsmasq");
        wait_until("dnsmasq read the hosts file again", DEADLINE, || async {
            reads() > before
        })
        .await;
    }
}
