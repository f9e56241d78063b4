//! A real Mosquitto broker process on a loopback port, with its log for
//! checking which clients reached it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use tokio::net::TcpStream;

use super::{DEADLINE, free_port, wait_until};

fn running_as_root() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    false
}

/// A real Mosquitto broker on 127.0.0.1.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    pub async fn start() -> Mosquitto {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
        };
        m.spawn().await;
        m
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    async fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let mut text = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest file {}\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nconnection_messages true\n",
            self.port,
            self.log_path().display()
        );
        if running_as_root() {
            text.push_str("user root\n");
        }
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto)");
        self.child = Some(child);
        let addr = self.addr();
        wait_until("mosquitto accepts connections", DEADLINE, || async move {
            TcpStream::connect(addr).await.is_ok()
        })
        .await;
    }

    /// SIGKILL: the node vanishes as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether Mosquitto logged a connection of `client_id`.
    pub fn saw_client(&self, client_id: &str) -> bool {
        let needle = format!(" as {client_id} ");
        self.log()
            .lines()
            .any(|l| l.contains("New client connected") && l.contains(&needle))
    }

    /// How many connections of `client_id` Mosquitto logged.
    pub fn connections_of(&self, client_id: &str) -> usize {
        let needle = format!(" as {client_id} ");
        self.log()
            .lines()
            .filter(|l| l.contains("New client connected") && l.contains(&needle))
            .count()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
