//! A real RabbitMQ 3.10 cluster on loopback, with the MQTT plugin behind
//! PROXY protocol, for tests that need a broker cluster other than our own.
//!
//! Every node runs as the current user straight from
//! `/usr/lib/rabbitmq/bin/rabbitmq-server` (not the Debian `/usr/sbin`
//! wrapper, which switches to the `rabbitmq` user), with everything it
//! writes (database, logs, cookie, pid file) under one [`tempfile::TempDir`]
//! and every port a free loopback port:
//!
//! - a private `epmd` on its own port (`ERL_EPMD_PORT`, passed to the nodes
//!   and to `rabbitmqctl`), so no system epmd is needed or left behind;
//! - `HOME` points at the temporary directory, whose `.erlang.cookie` is the
//!   cookie all nodes and `rabbitmqctl` share;
//! - `RABBITMQ_NODENAME` (`mqttlb-<pid>-<random>-<i>@localhost`, short
//!   names), `RABBITMQ_DIST_PORT` (distribution, bound to 127.0.0.1 only),
//!   `RABBITMQ_CONFIG_FILE`, `RABBITMQ_CONFIG_FILES`,
//!   `RABBITMQ_ADVANCED_CONFIG_FILE`, `RABBITMQ_CONF_ENV_FILE`,
//!   `RABBITMQ_ENABLED_PLUGINS_FILE` (only `rabbitmq_mqtt`),
//!   `RABBITMQ_MNESIA_BASE` and `RABBITMQ_LOG_BASE` all point into the
//!   temporary directory, so nothing under `/etc/rabbitmq` or
//!   `/var/lib/rabbitmq` is read or written;
//! - `detached=1` makes the `rabbitmq-server` script `exec` the Erlang VM
//!   instead of forking it behind a signal-forwarding shell, so the child
//!   process *is* `beam.smp` and a SIGKILL of it is a crash of the node.
//!
//! The cluster forms by `classic_config` peer discovery: node 0 boots
//! standalone, nodes 1.. list node 0 and join it while booting. The nodes
//! start one after the other, each once the previous one accepts MQTT: the
//! MQTT plugin's client-id tracking is a Raft cluster (`mqtt_node`) that
//! every node joins when the plugin starts, taking as peers all cluster
//! members whether or not they run the plugin yet. Booting in parallel
//! sometimes left a node outside any Raft cluster with a leader, refusing
//! every CONNECT ("client ID registration timed out"); one at a time, each
//! new node finds a working Raft cluster to join. Node 0 waits 3 to 6 s for
//! peers before electing itself (hard-coded in 3.10), each further node
//! takes about 4 s.
//!
//! Each node's main log (`RABBITMQ_LOG_BASE/<node>.log`, see
//! [`RabbitCluster::log`]) has one line per accepted MQTT connection, with
//! the addresses taken from the PROXY header:
//!
//! ```text
//! 2026-11-25 02:58:57.833936+00:00 [info] <0.710.0> accepting MQTT connection <0.710.0> (127.0.0.9:40000 -> 127.0.0.1:21883, client id: cid)
//! ```
//!
//! (`accepting` in lower case; source and destination are the PROXY header's
//! source and destination.) The harness's own readiness probes show up there
//! too, with client ids starting with [`PROBE_CLIENT_PREFIX`].
//!
//! Behaviour of RabbitMQ 3.10.8 worth knowing when testing against it:
//! - with `mqtt.proxy_protocol = true` a connection must start with a PROXY
//!   header (v1 or v2); a v2 `PROXY` header may carry the connection's own
//!   addresses (that is what the readiness probe sends);
//! - a v2 `LOCAL` header is not supported: the connection's reader process
//!   crashes in `rabbit_net:socket_ends/2` (called from
//!   `rabbit_mqtt_reader:init/1`), the socket is closed without a CONNACK
//!   and the log gets a crash report (`exception error: no match of right
//!   hand side value #{command => local,` with the rest of the map on the
//!   next line) and a supervisor report (`reason:
//!   {{badmatch,#{command => local,version => 2}},`);
//! - after [`RabbitCluster::kill`] the surviving nodes go on accepting
//!   CONNECTs at once (seen even with one node of three left).
#![cfg(unix)]

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::free_port;

/// Where the Debian package `rabbitmq-server` puts the real scripts.
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// How long the whole cluster may take to come up.
const START_DEADLINE: Duration = Duration::from_secs(90);

/// Bound on one readiness probe (connect, CONNECT, CONNACK).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on one `rabbitmqctl` run.
const CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on a killed node's processes disappearing.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// Client ids of the harness's readiness probes start with this.
pub const PROBE_CLIENT_PREFIX: &str = "mqttlb-harness-probe-";

/// A running RabbitMQ cluster; dropping it kills every node and its epmd.
pub struct RabbitCluster {
    nodes: Vec<Node>,
    epmd: Option<Child>,
    epmd_port: u16,
    bin: PathBuf,
    /// Removed after the processes are gone (fields drop after `drop`).
    dir: tempfile::TempDir,
}

struct Node {
    name: String,
    dir: PathBuf,
    mqtt_port: u16,
    /// Web MQTT (MQTT over WebSockets, path `/mqtt`), PROXY header first.
    web_mqtt_port: u16,
    amqp_port: u16,
    dist_port: u16,
    /// `beam.smp` itself (the start script `exec`s it); `None` once killed.
    child: Option<Child>,
}

impl Node {
    fn log_path(&self) -> PathBuf {
        self.dir.join("log").join(format!("{}.log", self.name))
    }

    fn stdout_path(&self) -> PathBuf {
        self.dir.join("stdout.log")
    }

    /// The last lines of the main log and of stdout/stderr (early boot
    /// failures, such as a bad config file, only show up there).
    fn log_tail(&self) -> String {
        format!(
            "--- {} (last lines of {}):\n{}\n--- stdout/stderr (last lines of {}):\n{}",
            self.name,
            self.log_path().display(),
            tail(&self.log_path(), 40),
            self.stdout_path().display(),
            tail(&self.stdout_path(), 80),
        )
    }

    fn mqtt_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.mqtt_port))
    }

    /// SIGKILL the VM and everything it started, reap, and wait until none
    /// of those processes runs any more and the MQTT port refuses.
    fn kill(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        // erl_child_setup runs in its own session (and inet_gethost and the
        // disk monitor's shell under it), so the process group alone would
        // miss them: collect the whole tree before the VM dies. (The child
        // is beam.smp itself; were it a wrapper shell, the VM would be in
        // the tree too.)
        let tree = descendants(pid);
        let _ = child.kill();
        signal_kill(&tree);
        let _ = child.wait();
        // Counted rather than timed: this also runs in `drop`, where a test
        // with a paused tokio clock would never reach a deadline.
        let step = Duration::from_millis(20);
        let mut steps_left = KILL_DEADLINE.as_millis() / step.as_millis();
        loop {
            let left: Vec<Proc> = tree.iter().copied().filter(|&p| alive(p)).collect();
            let port_open = StdTcpStream::connect(self.mqtt_addr()).is_ok();
            if left.is_empty() && !port_open {
                return Ok(());
            }
            if steps_left == 0 {
                return Err(format!(
                    "RabbitMQ node {} (pid {pid}) not gone {KILL_DEADLINE:?} after SIGKILL: \
                     processes still running {left:?}, MQTT port {} open: {port_open}",
                    self.name, self.mqtt_port
                ));
            }
            signal_kill(&left);
            std::thread::sleep(step);
            steps_left -= 1;
        }
    }
}

impl RabbitCluster {
    /// Start `nodes` clustered RabbitMQ nodes and wait (up to 90 s) until
    /// every node answers an MQTT CONNECT behind a PROXY v2 header with
    /// CONNACK accepted and the cluster reports all of them running.
    pub async fn start(nodes: usize) -> RabbitCluster {
        assert!(nodes >= 1, "a cluster needs at least one node");
        let bin = ensure_installed().await;
        let dir = tempfile::Builder::new()
            .prefix("mqttlb-rabbitmq-")
            .tempdir()
            .expect("tempdir for RabbitMQ");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("create RabbitMQ HOME");
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, format!("MQTTLBTEST{:016X}", random())).expect("write cookie");
        // Erlang refuses a cookie file others can read.
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
            .expect("chmod cookie");

        let mut cluster = RabbitCluster {
            nodes: Vec::new(),
            epmd: None,
            epmd_port: free_port(),
            bin,
            dir,
        };
        // From here on a panic drops `cluster`, which kills what started.
        cluster.start_epmd().await;
        let run = format!("mqttlb-{}-{:06x}", std::process::id(), random() & 0xff_ffff);
        for i in 0..nodes {
            let node_dir = cluster.dir.path().join(format!("node{i}"));
            cluster.nodes.push(Node {
                name: format!("{run}-{i}@localhost"),
                dir: node_dir,
                mqtt_port: free_port(),
                web_mqtt_port: free_port(),
                amqp_port: free_port(),
                dist_port: free_port(),
                child: None,
            });
        }
        // One node at a time: see the module documentation.
        let end = Instant::now() + START_DEADLINE;
        for i in 0..nodes {
            cluster.start_node(i, end).await;
        }
        cluster.wait_clustered(end).await;
        // Once clustered, MQTT client ids are registered cluster-wide (a
        // Raft group in 3.10) that may still be settling: ready means every
        // node accepts a CONNECT again now.
        for i in 0..nodes {
            cluster.wait_mqtt_ready(i, end).await;
        }
        cluster
    }

    /// Number of nodes (killed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The MQTT listener of node `i` (expects a PROXY header first).
    pub fn mqtt_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].mqtt_addr()
    }

    /// The AMQP 0-9-1 listener of node `i` (guest/guest).
    /// The Web MQTT listener of node `i` (path `/mqtt`; expects a PROXY
    /// header first).
    pub fn web_mqtt_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[i].web_mqtt_port))
    }

    pub fn amqp_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[i].amqp_port))
    }

    /// The Erlang node name of node `i`, e.g. `mqttlb-123-abcdef-0@localhost`.
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Hard-kill node `i` (SIGKILL to `beam.smp` and its helper processes),
    /// as in a crash; returns once they are gone and its MQTT port refuses.
    pub fn kill(&mut self, i: usize) {
        if let Err(e) = self.nodes[i].kill() {
            panic!("{e}");
        }
    }

    /// The main log of node `i` (`<node>.log`) as written so far. An
    /// accepted MQTT connection is logged as `accepting MQTT connection
    /// <pid> (SRC -> DST, client id: ID)` where SRC and DST come from the
    /// PROXY header. Erlang's logger writes the file with a delay (tens of
    /// ms): use [`RabbitCluster::wait_for_log`] to wait for a line.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].log_path()).unwrap_or_default()
    }

    /// Wait (up to [`super::DEADLINE`]) until a line of node `i`'s log
    /// contains every one of `needles`, and return that line; panics with
    /// the log's tail otherwise.
    pub async fn wait_for_log(&self, i: usize, needles: &[&str]) -> String {
        let end = Instant::now() + super::DEADLINE;
        loop {
            let log = self.log(i);
            if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_string();
            }
            if Instant::now() >= end {
                panic!(
                    "RabbitMQ node {i} logged no line containing {needles:?} within {:?}\n{}",
                    super::DEADLINE,
                    self.nodes[i].log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One readiness probe of node `i`: a raw MQTT 3.1.1 CONNECT behind a
    /// PROXY v2 header carrying the connection's own addresses; `Ok` when
    /// the node answers CONNACK accepted.
    pub async fn probe(&self, i: usize) -> Result<(), String> {
        probe(self.mqtt_addr(i), &format!("{PROBE_CLIENT_PREFIX}{i}")).await
    }

    /// Run `rabbitmqctl -n <node i> ARGS` (bounded by 30 s): (success,
    /// stdout, stderr).
    pub async fn rabbitmqctl(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let node = &self.nodes[i];
        let mut cmd = tokio::process::Command::new(self.bin.join("rabbitmqctl"));
        cmd.arg("-n").arg(&node.name).args(args);
        for k in inherited_env() {
            cmd.env_remove(k);
        }
        cmd.envs(self.erlang_env(&node.dir));
        // The CLI is a hidden Erlang node with its own distribution port;
        // its default range (35672-35682) is shared with everything else.
        let port = free_port().to_string();
        cmd.env("RABBITMQ_CTL_DIST_PORT_MIN", &port)
            .env("RABBITMQ_CTL_DIST_PORT_MAX", &port)
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        match tokio::time::timeout(CTL_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) => (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ),
            Ok(Err(e)) => (
                false,
                String::new(),
                format!("rabbitmqctl did not run: {e}"),
            ),
            Err(_) => (
                false,
                String::new(),
                format!("rabbitmqctl {args:?} took longer than {CTL_TIMEOUT:?}"),
            ),
        }
    }

    /// Environment shared by nodes and `rabbitmqctl`: private epmd, cookie
    /// in `HOME`, no system `rabbitmq-env.conf`. Inherited `RABBITMQ_*` and
    /// `ERL_*` variables must be removed ([`inherited_env`]).
    fn erlang_env(&self, node_dir: &Path) -> Vec<(&'static str, OsString)> {
        vec![
            ("HOME", self.dir.path().join("home").into()),
            ("ERL_EPMD_PORT", self.epmd_port.to_string().into()),
            (
                "RABBITMQ_CONF_ENV_FILE",
                node_dir.join("rabbitmq-env.conf").into(),
            ),
        ]
    }

    async fn start_epmd(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("epmd.log")).expect("epmd log");
        let child = Command::new("epmd")
            .args([
                "-port",
                &self.epmd_port.to_string(),
                "-address",
                "127.0.0.1",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("epmd log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run epmd ({e}); it comes with Erlang (apt-get install erlang-base)")
            });
        self.epmd = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.epmd_port));
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.epmd.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "epmd on port {} exited ({status}): {}",
                    self.epmd_port,
                    tail(&self.dir.path().join("epmd.log"), 20)
                );
            }
            if Instant::now() >= end {
                panic!("epmd did not listen on {addr} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn spawn_node(&mut self, i: usize) {
        let node = &self.nodes[i];
        for sub in ["", "log", "data", "conf.d"] {
            std::fs::create_dir_all(node.dir.join(sub)).expect("create node dir");
        }
        std::fs::write(node.dir.join("rabbitmq-env.conf"), "").expect("write env conf");
        std::fs::write(
            node.dir.join("enabled_plugins"),
            "[rabbitmq_mqtt,rabbitmq_web_mqtt].\n",
        )
        .expect("write enabled_plugins");
        let mut conf = format!(
            "listeners.tcp.default = 127.0.0.1:{amqp}\n\
             mqtt.listeners.tcp.default = 127.0.0.1:{mqtt}\n\
             mqtt.proxy_protocol = true\n\
             web_mqtt.tcp.ip = 127.0.0.1\n\
             web_mqtt.tcp.port = {web}\n\
             web_mqtt.ws_path = /mqtt\n\
             web_mqtt.proxy_protocol = true\n\
             mqtt.allow_anonymous = true\n\
             mqtt.default_user = guest\n\
             mqtt.default_pass = guest\n\
             loopback_users = none\n\
             disk_free_limit.absolute = 1MB\n\
             log.console = false\n\
             log.file.level = info\n",
            amqp = node.amqp_port,
            mqtt = node.mqtt_port,
            web = node.web_mqtt_port,
        );
        if i > 0 {
            // Join node 0; retry while it is still booting (up to 80 s).
            conf.push_str(&format!(
                "cluster_formation.peer_discovery_backend = classic_config\n\
                 cluster_formation.classic_config.nodes.1 = {seed}\n\
                 cluster_formation.classic_config.nodes.2 = {me}\n\
                 cluster_formation.discovery_retry_limit = 400\n\
                 cluster_formation.discovery_retry_interval = 200\n",
                seed = self.nodes[0].name,
                me = node.name,
            ));
        }
        std::fs::write(node.dir.join("rabbitmq.conf"), conf).expect("write rabbitmq.conf");

        let out = std::fs::File::create(node.stdout_path()).expect("node stdout file");
        let mut cmd = Command::new(self.bin.join("rabbitmq-server"));
        for k in inherited_env() {
            cmd.env_remove(k);
        }
        cmd.envs(self.erlang_env(&node.dir));
        cmd.env("detached", "1")
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_CONFIG_FILES", node.dir.join("conf.d"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                node.dir.join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                node.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("data"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("node stdout file"))
            .stderr(out)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        self.nodes[i].child = Some(child);
    }

    /// Spawn node `i` and wait until it serves MQTT. Its ports were found
    /// free, but another process may take one before the VM binds it: then
    /// the node exits at boot, and it is started again on fresh ports (at
    /// most three times).
    async fn start_node(&mut self, i: usize, end: Instant) {
        for attempt in 1..=3 {
            self.spawn_node(i);
            loop {
                if let Some(log) = self.exited(i) {
                    let taken = log.contains("eaddrinuse")
                        || log.contains("could not bind")
                        || log.contains("Failed to start Ranch listener");
                    if taken && attempt < 3 {
                        eprintln!("RabbitMQ node {i}: a port was taken meanwhile; new ports");
                        let node = &mut self.nodes[i];
                        node.mqtt_port = free_port();
                        node.web_mqtt_port = free_port();
                        node.amqp_port = free_port();
                        node.dist_port = free_port();
                        break;
                    }
                    panic!("RabbitMQ node {i} exited during start\n{log}");
                }
                match self.probe(i).await {
                    Ok(()) => return,
                    Err(error) if Instant::now() >= end => self.not_ready(i, &error),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    }

    /// The node's log when its VM already exited (it is then forgotten).
    fn exited(&mut self, i: usize) -> Option<String> {
        let node = &mut self.nodes[i];
        match node.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => {
                node.child = None;
                Some(format!("({}, {status})\n{}", node.name, node.log_tail()))
            }
            _ => None,
        }
    }

    /// Panic with the node's log when its VM already exited.
    fn check_alive(&mut self, i: usize) {
        if let Some(log) = self.exited(i) {
            panic!("RabbitMQ node {i} exited during start\n{log}");
        }
    }

    /// Panic: node `i` did not serve MQTT by the start deadline.
    fn not_ready(&self, i: usize, error: &str) -> ! {
        let node = &self.nodes[i];
        panic!(
            "RabbitMQ cluster not ready within {START_DEADLINE:?}: node {i} ({}) did not accept \
             an MQTT CONNECT behind a PROXY v2 header on {} (last error: {error})\n{}",
            node.name,
            node.mqtt_addr(),
            node.log_tail()
        );
    }

    /// Wait until node `i` answers a probe with CONNACK accepted.
    async fn wait_mqtt_ready(&mut self, i: usize, end: Instant) {
        loop {
            self.check_alive(i);
            let error = match self.probe(i).await {
                Ok(()) => return,
                Err(e) => e,
            };
            if Instant::now() >= end {
                self.not_ready(i, &error);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_clustered(&mut self, end: Instant) {
        let want: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        loop {
            let (ok, out, err) = self
                .rabbitmqctl(0, &["cluster_status", "--formatter", "json"])
                .await;
            let running: Vec<String> = serde_json::from_str::<serde_json::Value>(&out)
                .ok()
                .and_then(|v| {
                    v.get("running_nodes")?.as_array().map(|a| {
                        a.iter()
                            .filter_map(|n| n.as_str().map(str::to_string))
                            .collect()
                    })
                })
                .unwrap_or_default();
            if ok && want.iter().all(|w| running.contains(w)) {
                return;
            }
            for i in 0..self.nodes.len() {
                self.check_alive(i);
            }
            if Instant::now() >= end {
                let tails: Vec<String> = self.nodes.iter().map(Node::log_tail).collect();
                panic!(
                    "RabbitMQ cluster did not report all of {want:?} running within \
                     {START_DEADLINE:?}; running: {running:?}\nrabbitmqctl cluster_status \
                     (success {ok}):\n{out}{err}\n{}",
                    tails.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            // No panic in drop (it may run while unwinding).
            if let Err(e) = node.kill() {
                eprintln!("{e}");
            }
        }
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.kill();
            let _ = epmd.wait();
        }
    }
}

/// Inherited variables that would change how RabbitMQ or Erlang runs.
fn inherited_env() -> Vec<OsString> {
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            k.starts_with("RABBITMQ_") || k.starts_with("ERL_") || k == "NOTIFY_SOCKET"
        })
        .collect()
}

/// The directory holding `rabbitmq-server` and `rabbitmqctl`, installing
/// the Debian package first when it is missing.
async fn ensure_installed() -> PathBuf {
    let bin = PathBuf::from(RABBITMQ_BIN);
    let present = || bin.join("rabbitmq-server").exists() && bin.join("rabbitmqctl").exists();
    if present() {
        return bin;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ensure-packages");
    let mut cmd = tokio::process::Command::new(&script);
    cmd.arg("rabbitmq-server=rabbitmq-server")
        .stdin(Stdio::null());
    let (ok, out) = super::run_within(&mut cmd, Duration::from_secs(600)).await;
    if !present() {
        panic!(
            "RabbitMQ is not installed: {}/rabbitmq-server is missing and `{} \
             rabbitmq-server=rabbitmq-server` did not provide it (success {ok}): {out}\n\
             Install the Debian package: apt-get install rabbitmq-server (3.10, with Erlang)",
            bin.display(),
            script.display(),
        );
    }
    bin
}

/// A PROXY protocol v2 `PROXY` header for a TCP connection from `src` to
/// `dst` (both IPv4 or both IPv6), written here rather than by mqttlb's
/// encoder so the harness checks the cluster independently of the code
/// under test.
pub fn proxy_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x21); // version 2, command PROXY
    let mut addrs = Vec::new();
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11); // TCP over IPv4
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            out.push(0x21); // TCP over IPv6
            addrs.extend_from_slice(&s.ip().octets());
            addrs.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("PROXY header needs one address family, got {src} -> {dst}"),
    }
    addrs.extend_from_slice(&src.port().to_be_bytes());
    addrs.extend_from_slice(&dst.port().to_be_bytes());
    let len = u16::try_from(addrs.len()).expect("address block fits");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&addrs);
    out
}

/// CONNECT behind a PROXY v2 header with the connection's own addresses.
async fn probe(addr: SocketAddr, client_id: &str) -> Result<(), String> {
    let attempt = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let local = s.local_addr().map_err(|e| e.to_string())?;
        let mut hello = proxy_v2(local, addr);
        hello.extend_from_slice(&super::connect_packet(4, client_id));
        s.write_all(&hello)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack)
            .await
            .map_err(|e| format!("no CONNACK: {e}"))?;
        if ack != [0x20, 0x02, 0x00, 0x00] {
            return Err(format!("not CONNACK accepted: {ack:02x?}"));
        }
        let _ = s.write_all(&[0xe0, 0x00]).await; // DISCONNECT
        Ok(())
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no CONNACK within {PROBE_TIMEOUT:?}")))
}

/// Last `n` lines of a file (empty when unreadable).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A random number from the standard library's per-process hash seeds.
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// A process, identified by pid and start time so that a reused pid is
/// never taken for it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Proc {
    pid: u32,
    start: u64,
}

/// SIGKILL those of `procs` still running (best effort).
fn signal_kill(procs: &[Proc]) {
    let pids: Vec<String> = procs
        .iter()
        .filter(|p| alive(**p))
        .map(|p| p.pid.to_string())
        .collect();
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(pids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What `/proc/<pid>/stat` says about a process.
#[cfg(target_os = "linux")]
struct Stat {
    ppid: u32,
    zombie: bool,
    start: u64,
}

#[cfg(target_os = "linux")]
fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ... starttime ...": comm may contain anything,
    // so split after its last ')'; starttime is field 22 overall.
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        zombie: matches!(*fields.first()?, "Z" | "X"),
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every process below `root` (not `root` itself).
#[cfg(target_os = "linux")]
fn descendants(root: u32) -> Vec<Proc> {
    let all: Vec<(u32, Stat)> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| {
                let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                Some((pid, stat(pid)?))
            })
            .collect()
        })
        .unwrap_or_default();
    let mut parents = vec![root];
    let mut found = Vec::new();
    while let Some(parent) = parents.pop() {
        for (pid, st) in &all {
            if st.ppid == parent && !found.iter().any(|p: &Proc| p.pid == *pid) {
                found.push(Proc {
                    pid: *pid,
                    start: st.start,
                });
                parents.push(*pid);
            }
        }
    }
    found
}

/// Whether `p` still runs: exists, same start time, not a zombie (a zombie
/// holds no sockets; orphans are reaped by init on its own schedule).
#[cfg(target_os = "linux")]
fn alive(p: Proc) -> bool {
    stat(p.pid).is_some_and(|s| !s.zombie && s.start == p.start)
}

/// Without /proc, rely on the helpers exiting when the VM's pipes close.
#[cfg(not(target_os = "linux"))]
fn descendants(_root: u32) -> Vec<Proc> {
    Vec::new()
}

#[cfg(not(target_os = "linux"))]
fn alive(_p: Proc) -> bool {
    false
}
