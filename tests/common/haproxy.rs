//! A real HAProxy process as an L4 balancer (`mode tcp`) on loopback
//! ports, sending PROXY headers to its servers, as a cloud load balancer
//! does in front of mqttlb replicas.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use tokio::net::TcpStream;

use super::{DEADLINE, free_port, wait_until};

/// One frontend: its name, the servers it balances (round robin) and the
/// options of each `server` line (e.g. `send-proxy-v2`).
pub struct Frontend<'a> {
    pub name: &'a str,
    pub servers: &'a [SocketAddr],
    pub options: &'a str,
}

/// HAProxy in the foreground (`-db`), killed on drop.
pub struct HaProxy {
    frontends: Vec<(String, SocketAddr)>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    pub async fn start(frontends: &[Frontend<'_>]) -> HaProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conf = String::from(
            "global\n  maxconn 512\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
        );
        let mut bound = Vec::new();
        for f in frontends {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            conf.push_str(&format!(
                "frontend fe_{name}\n  bind {addr}\n  default_backend be_{name}\n\
                 backend be_{name}\n  balance roundrobin\n",
                name = f.name
            ));
            for (i, server) in f.servers.iter().enumerate() {
                conf.push_str(&format!("  server s{i} {server} {}\n", f.options));
            }
            bound.push((f.name.to_string(), addr));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, conf).expect("write haproxy.cfg");
        // Debian installs it in /usr/sbin, which a non-root PATH may lack.
        let program = ["/usr/sbin/haproxy", "haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("haproxy");
        let child = Command::new(program)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (scripts/test installs it: apt-get install haproxy)");
        let haproxy = HaProxy {
            frontends: bound,
            child,
            _dir: dir,
        };
        for (_, addr) in &haproxy.frontends {
            let addr = *addr;
            wait_until("haproxy accepts connections", DEADLINE, || async move {
                TcpStream::connect(addr).await.is_ok()
            })
            .await;
        }
        haproxy
    }

    /// The address of frontend `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.frontends
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no frontend {name}"))
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
