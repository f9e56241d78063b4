"""Processes and measurements for scripts/probe: the mqttlb stack on
loopback (two broker nodes, one proxy), its configuration, child-process
cleanup, /metrics scraping and a /proc sampler for the proxy."""

import asyncio
import atexit
import ctypes
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time

import wire

CLK_TCK = os.sysconf("SC_CLK_TCK")
ADMIN_TOKEN = "probe-admin-token-0123456789abcdef"

# ---------------------------------------------------------------- children

_CHILDREN: list[subprocess.Popen] = []
_TEMPDIRS: list[str] = []
_KEEP = {"dirs": False}
_LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    # Runs in the child between fork and exec: SIGKILL when the probe
    # (the thread that spawned it: always the main thread) dies.
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(args, log_path, env=None) -> subprocess.Popen:
    """Start a child with stdout/stderr to `log_path`; killed at exit."""
    assert threading.current_thread() is threading.main_thread(), "spawn from the main thread"
    log = open(log_path, "ab")
    try:
        p = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            env=env,
        )
    finally:
        log.close()
    _CHILDREN.append(p)
    return p


def kill_children():
    for p in _CHILDREN:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except OSError:
                pass
    end = time.monotonic() + 3
    for p in _CHILDREN:
        try:
            p.wait(max(0.05, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                p.kill()
                p.wait(2)
            except Exception:
                pass
        except Exception:
            pass


def cleanup():
    kill_children()
    if not _KEEP["dirs"]:
        for d in _TEMPDIRS:
            shutil.rmtree(d, ignore_errors=True)


atexit.register(cleanup)


def install_signal_handlers():
    """Ctrl-C / SIGTERM / SIGHUP to the probe: unwind through finally
    blocks, then atexit kills the children."""

    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- /proc


def proc_sample(pid: int):
    """(rss KiB, open fds, cpu seconds) of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        return rss, fds, cpu
    except (OSError, StopIteration, ValueError, IndexError):
        return None


class Sampler(threading.Thread):
    """Samples the proxy (whatever `pid_fn` names now) every 100 ms and
    keeps the peak RSS and fds since the last `reset`."""

    def __init__(self, pid_fn, interval=0.1):
        super().__init__(daemon=True, name="sampler")
        self.pid_fn = pid_fn
        self.interval = interval
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.peak_rss = 0
        self.peak_fds = 0
        self.last = None

    def reset(self, seed=None):
        with self.lock:
            self.peak_rss = seed[0] if seed else 0
            self.peak_fds = seed[1] if seed else 0

    def fold(self, sample):
        """Count an explicit sample towards the peaks."""
        if sample:
            with self.lock:
                self.peak_rss = max(self.peak_rss, sample[0])
                self.peak_fds = max(self.peak_fds, sample[1])

    def peaks(self):
        with self.lock:
            return self.peak_rss, self.peak_fds

    def run(self):
        while not self.stop_event.wait(self.interval):
            s = proc_sample(self.pid_fn())
            if s is None:
                continue
            with self.lock:
                self.last = s
                self.peak_rss = max(self.peak_rss, s[0])
                self.peak_fds = max(self.peak_fds, s[1])

    def stop(self):
        self.stop_event.set()


# ---------------------------------------------------------------- metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str):
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(4))))
        except ValueError:
            pass
    return out


def metric_value(samples, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        v
        for n, l, v in samples
        if n == name and all(l.get(k) == val for k, val in labels.items())
    )


# ---------------------------------------------------------------- the stack

LISTENERS = ("mqtts", "mqtt", "ws", "wss", "pp")


class Stack:
    """Two `mqttlb broker` nodes (a mesh) and one `mqttlb proxy` in front
    of them on loopback, with the probe's configuration."""

    def __init__(self, binary: str, keep: bool = False):
        self.bin = os.path.abspath(binary)
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="mqttlb-probe-")
        _TEMPDIRS.append(self.dir)
        _KEEP["dirs"] = keep
        self.certs = os.path.join(self.dir, "certs")
        self.ports = {name: free_port() for name in LISTENERS + ("admin", "node1", "node2")}
        self.config = os.path.join(self.dir, "mqttlb.toml")
        self.upgrade_sock = os.path.join(self.dir, "upgrade.sock")
        self.token_file = os.path.join(self.dir, "admin.token")
        self.nodes: list[subprocess.Popen] = []
        self.proxy: subprocess.Popen | None = None
        self.generation = 0
        # Timings the cases rely on (seconds), mirrored in the config.
        self.tls_handshake_timeout = 2.0
        self.connect_timeout = 3.0
        self.upgrade_timeout = 2.0
        self.drain_timeout = 2.0
        self.upgrade_socket_timeout = 3.0
        # The "pp" listener: TLS behind a balancer at 127.0.0.1 only,
        # a PROXY header required.
        self.proxy_header_timeout = 2.0
        self.balancer = "127.0.0.1"

    # ------------------------------------------------------------ setup

    def port(self, name):
        return self.ports[name]

    def path(self, name):
        return os.path.join(self.certs, name)

    def run_cli(self, *args, timeout=30):
        return subprocess.run(
            [self.bin, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )

    def make_certs(self):
        r = self.run_cli("certs", "--out", self.certs)
        if r.returncode != 0:
            raise RuntimeError(f"mqttlb certs failed: {r.stderr.strip()}")
        for f in ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"):
            if not os.path.exists(self.path(f)):
                raise RuntimeError(f"mqttlb certs did not write {f}")

    def write_config(self):
        with open(self.token_file, "w") as f:
            f.write(ADMIN_TOKEN + "\n")
        os.chmod(self.token_file, 0o600)
        p = self.ports
        tls = f"""cert = "{self.path('server.pem')}"
key = "{self.path('server.key')}"
client_auth = "optional"
client_ca = "{self.path('ca.pem')}"
"""
        mqtt = f'connect_timeout = "{self.connect_timeout:g}s"\nmax_connect_size = "64KiB"\n'
        ws = f'to = "tcp"\nupgrade_timeout = "{self.upgrade_timeout:g}s"\n'
        text = f"""# written by scripts/probe
[admin]
listen = "127.0.0.1:{p['admin']}"
token_file = "{self.token_file}"

[[listener]]
name = "mqtts"
listen = "127.0.0.1:{p['mqtts']}"
pool = "brokers"
[listener.tls]
{tls}[listener.mqtt]
{mqtt}
[[listener]]
name = "mqtt"
listen = "127.0.0.1:{p['mqtt']}"
pool = "brokers"
[listener.mqtt]
{mqtt}
[[listener]]
name = "ws"
listen = "127.0.0.1:{p['ws']}"
pool = "brokers"
[listener.mqtt]
{mqtt}[listener.websocket]
{ws}
[[listener]]
name = "wss"
listen = "127.0.0.1:{p['wss']}"
pool = "brokers"
[listener.tls]
{tls}[listener.mqtt]
{mqtt}[listener.websocket]
{ws}
[[listener]]
name = "pp"
listen = "127.0.0.1:{p['pp']}"
pool = "brokers"
proxy_protocol = "required"
proxy_protocol_from = ["{self.balancer}/32"]
proxy_protocol_timeout = "{self.proxy_header_timeout:g}s"
[listener.tls]
{tls}[listener.mqtt]
{mqtt}
[pool.brokers]
strategy = "client-id"
connect_timeout = "2s"
connack_timeout = "3s"
health = {{ check = "mqtt", interval = "1s", timeout = "1s", rise = 1, fall = 3 }}
servers = [
  {{ name = "node1", addr = "127.0.0.1:{p['node1']}" }},
  {{ name = "node2", addr = "127.0.0.1:{p['node2']}" }},
]

[limits]
tls_handshake_timeout = "{self.tls_handshake_timeout:g}s"
drain_timeout = "{self.drain_timeout:g}s"

[upgrade]
socket = "{self.upgrade_sock}"
timeout = "{self.upgrade_socket_timeout:g}s"
"""
        with open(self.config, "w") as f:
            f.write(text)

    def check_config(self):
        r = self.run_cli("check", "--config", self.config)
        if r.returncode != 0:
            raise RuntimeError(f"mqttlb check --config exited {r.returncode}: {r.stdout}{r.stderr}")

    def start_nodes(self):
        n1, n2 = self.ports["node1"], self.ports["node2"]
        for name, port, peer in (("node1", n1, n2), ("node2", n2, n1)):
            self.nodes.append(
                spawn(
                    [self.bin, "broker", "--listen", f"127.0.0.1:{port}", "--peer", f"127.0.0.1:{peer}"],
                    os.path.join(self.dir, f"{name}.log"),
                    env=self._env(),
                )
            )

    def _env(self):
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env["NO_COLOR"] = "1"
        return env

    def proxy_log(self, generation=None):
        g = self.generation if generation is None else generation
        return os.path.join(self.dir, f"proxy-{g}.log")

    def start_proxy(self, takeover=False):
        args = [self.bin, "proxy", "--config", self.config]
        if takeover:
            args += ["--takeover", self.upgrade_sock]
        self.generation += 1
        return spawn(args, self.proxy_log(), env=self._env())

    def proxy_pid(self):
        return self.proxy.pid if self.proxy else 0

    def read_log(self, generation=None):
        try:
            with open(self.proxy_log(generation), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    async def wait_port(self, port, deadline):
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while loop.time() < end:
            try:
                r, w = await wire.open_tcp("127.0.0.1", port, timeout=1)
                wire.close_writer(w)
                return True
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)
        return False

    async def start(self):
        self.make_certs()
        self.write_config()
        self.check_config()
        self.start_nodes()
        for n in ("node1", "node2"):
            if not await self.wait_port(self.ports[n], 15):
                raise RuntimeError(f"broker {n} did not listen")
        self.proxy = self.start_proxy()
        await self.wait_ready(20)

    async def wait_ready(self, deadline):
        """Until /readyz answers 200 and both nodes are up."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while loop.time() < end:
            if self.proxy.poll() is not None:
                raise RuntimeError(f"proxy exited {self.proxy.returncode}: {self.read_log()[-2000:]}")
            try:
                status, _, _ = await wire.http_request(self.ports["admin"], wire.http_get("/readyz"), 1)
                if status == 200:
                    status, text, _ = await wire.http_request(
                        self.ports["admin"],
                        wire.http_get("/api/v1/backends", f"Authorization: Bearer {ADMIN_TOKEN}\r\n"),
                        1,
                    )
                    if status == 200 and text.count('"up"') >= 2:
                        return
            except (OSError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("proxy not ready (readyz / backends up) in time")

    async def metrics(self, timeout=3.0):
        status, text, _ = await wire.http_request(self.ports["admin"], wire.http_get("/metrics"), timeout)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_metrics(text.split("\r\n\r\n", 1)[-1])

    async def metric(self, name, **labels):
        return metric_value(await self.metrics(), name, **labels)

    async def rejected(self, listener, reason):
        return await self.metric("mqttlb_connections_rejected_total", listener=listener, reason=reason)

    async def settle(self, fn, target, deadline=3.0):
        """Poll the async `fn` until it reaches `target` or `deadline`
        passes (counters are bumped just after a socket closes); its last
        value."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while True:
            v = await fn()
            if v >= target or loop.time() >= end:
                return v
            await asyncio.sleep(0.05)

    async def rejected_settled(self, listener, reason, target, deadline=3.0):
        return await self.settle(lambda: self.rejected(listener, reason), target, deadline)

    def alive(self):
        return self.proxy is not None and self.proxy.poll() is None

    async def restart_proxy(self):
        """After a crash: a fresh proxy on the same ports."""
        if self.proxy and self.proxy.poll() is None:
            self.proxy.kill()
            self.proxy.wait(5)
        self.proxy = self.start_proxy()
        await self.wait_ready(20)
