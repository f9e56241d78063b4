"""The cases of scripts/probe. Each is a small async function taking the
run context and returning an Outcome (pass/fail and what was measured);
REGISTRY lists them with their surface, attack and bound, in run order."""

import asyncio
import os
import socket
import ssl
import statistics
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

import harness
import wire

KIB = 1024


@dataclass
class Outcome:
    ok: bool
    measured: str
    attack: str | None = None  # overrides the registry text (counts)
    bound: str | None = None


@dataclass
class Case:
    num: int
    id: str
    surface: str
    name: str
    attack: str
    bound: str
    fn: object
    budget: float = 120.0  # seconds; past it the case fails


@dataclass
class Ctx:
    stack: object
    sampler: object
    bystander: object
    quick: bool
    cache: dict = field(default_factory=dict)

    def n(self, full, quick):
        return quick if self.quick else full

    def snap(self):
        s = harness.proc_sample(self.stack.proxy_pid())
        if s is None:
            raise RuntimeError("the proxy process is gone")
        return s

    def tls(self, client_cert=False):
        p = self.stack.path
        if client_cert:
            return wire.client_context(p("ca.pem"), p("client.pem"), p("client.key"))
        return wire.client_context(p("ca.pem"))

    async def wait_fds(self, baseline, slack=8, deadline=10.0):
        """Until the proxy's open fds are back within `slack` of
        `baseline`: (ok, fds, seconds waited)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        fds = None
        while True:
            s = harness.proc_sample(self.stack.proxy_pid())
            fds = s[1] if s else None
            if fds is not None and fds <= baseline + slack:
                return True, fds, loop.time() - t0
            if loop.time() - t0 >= deadline:
                return False, fds, loop.time() - t0
            await asyncio.sleep(0.1)

    def rss_growth(self, base):
        """Peak RSS growth (KiB) since the case began."""
        return max(0, self.sampler.peaks()[0] - base[0])

    async def legit_session(self, port=None, timeout=5.0):
        """TLS + CONNECT + CONNACK accepted through the TLS listener."""
        port = port or self.stack.port("mqtts")
        try:
            r, w = await wire.open_tls(port, self.tls(), timeout=timeout)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            return False
        try:
            w.write(wire.connect_packet(f"probe-legit-{os.urandom(4).hex()}"))
            ack = await wire.read_exactly(r, 4, timeout)
            w.write(wire.DISCONNECT)
            return wire.connack_code(ack) == 0
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
            return False
        finally:
            wire.close_writer(w)


async def gather_limited(coros, limit):
    sem = asyncio.Semaphore(limit)

    async def run(c):
        async with sem:
            return await c

    return await asyncio.gather(*(run(c) for c in coros), return_exceptions=True)


async def stall_and_watch(port, n, src, first, timeout):
    """`n` TCP connections to `port` from `src(i)`, each writing `first(i)`
    (bytes, possibly empty) and then nothing. Returns (opened, closes):
    the (reader, writer, start) of each opened connection and the seconds
    until the proxy closed it (None: not within `timeout` + 3 s), timed
    from before the connect (the proxy's clock starts at its accept, which
    a busy probe may see long after it happened). The caller aborts them."""
    loop = asyncio.get_running_loop()

    async def one(i):
        t = loop.time()
        r, w = await wire.open_tcp("127.0.0.1", port, src(i), 5)
        data = first(i)
        if data:
            w.write(data)
        return r, w, t

    conns = await gather_limited([one(i) for i in range(n)], 250)
    opened = [c for c in conns if isinstance(c, tuple)]

    async def watch(c):
        r, _, t = c
        _, how = await wire.read_until_close(r, t + timeout + 3, limit=0)
        return None if how == "timeout" else loop.time() - t

    return opened, await asyncio.gather(*(watch(c) for c in opened))


def stats(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "n/a"
    return f"min {xs[0]:.2f} / med {xs[len(xs) // 2]:.2f} / max {xs[-1]:.2f} s"


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def abort_all(pairs):
    for p in pairs:
        if isinstance(p, tuple):
            wire.close_writer(p[1])


# ====================================================================== TLS


async def tls_stall(ctx: Ctx) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    n = ctx.n(1000, 200)
    half = n // 5
    timeout = st.tls_handshake_timeout
    base = ctx.snap()
    m0 = await st.rejected("mqtts", "tls_handshake_timeout")
    hello = wire.client_hello()
    port = st.port("mqtts")

    opened, closes = await stall_and_watch(
        port, n, wire.src_addr, lambda i: hello[: len(hello) // 2] if i < half else b"", timeout
    )
    growth = ctx.rss_growth(base)
    abort_all(opened)
    fds_ok, fds, waited = await ctx.wait_fds(base[1])
    counted = await st.rejected_settled("mqtts", "tls_handshake_timeout", m0 + n) - m0
    hung = sum(1 for c in closes if c is None)
    late = sum(1 for c in closes if c is not None and c > timeout + 2)
    per_conn = growth / max(1, len(opened))
    ok = (
        len(opened) == n
        and hung == 0
        and late == 0
        and counted >= n
        and per_conn < 40
        and fds_ok
    )
    return Outcome(
        ok,
        f"{len(opened)}/{n} opened ({half} with half a ClientHello); closed after {stats(closes)}, "
        f"{hung} never closed; counted tls_handshake_timeout +{counted:.0f}; "
        f"peak RSS +{mib(growth)} ({per_conn:.1f} KiB/conn); fds back to {fds} (baseline {base[1]}) in {waited:.1f} s",
        attack=f"{n} TCP connections to the TLS listener sending nothing, {half} of them half a ClientHello",
    )


async def tls_big_hello(ctx: Ctx) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    n = ctx.n(100, 20)
    timeout = st.tls_handshake_timeout
    base = ctx.snap()
    port = st.port("mqtts")
    sizes = [16 * KIB + (44 * KIB * i) // max(1, n - 1) for i in range(n)]

    async def one(i):
        # Every 4th declares 128 KiB more than it sends: a message that
        # can never complete (beyond any handshake-size cap).
        declared_extra = 128 * KIB if i % 4 == 3 else 0
        hello = wire.client_hello(padding=sizes[i], declared_extra=declared_extra)
        r, w = await wire.open_tcp("127.0.0.1", port, wire.src_addr(5000 + i), 5)
        t = loop.time()
        try:
            w.write(hello)
            data, how = await wire.read_until_close(r, t + timeout + 3, limit=64)
        finally:
            wire.close_writer(w)
        return wire.tls_reply_kind(data), (None if how == "timeout" else loop.time() - t), declared_extra > 0

    res = await gather_limited([one(i) for i in range(n)], 100)
    growth = ctx.rss_growth(base)
    errors = [r for r in res if not isinstance(r, tuple)]
    res = [r for r in res if isinstance(r, tuple)]
    fds_ok, fds, _ = await ctx.wait_fds(base[1])
    kinds = {}
    for kind, _, over in res:
        key = f"{kind}{' (declared +128 KiB)' if over else ''}"
        kinds[key] = kinds.get(key, 0) + 1
    hung = sum(1 for r in res if r[1] is None)
    over_closes = [r[1] for r in res if r[2]]
    limit_kib = n * (64 + 64)
    ok = not errors and hung == 0 and all(r[1] <= timeout + 2 for r in res if r[1]) and growth < limit_kib and fds_ok
    return Outcome(
        ok,
        f"replies: {', '.join(f'{v}× {k}' for k, v in sorted(kinds.items()))}; closed after {stats([r[1] for r in res])}"
        f" (over-declared ones: {stats(over_closes)}); {hung} hung, {len(errors)} errors; "
        f"peak RSS +{mib(growth)} (bound {mib(limit_kib)}); fds back to {fds} (baseline {base[1]})",
        attack=f"{n} ClientHellos with 16–60 KiB of padding extension ({n // 4} declaring 128 KiB more than sent)",
        bound=f"no handshake left hanging: each closed ≤ tls_handshake_timeout + 2 s ({timeout + 2:g} s) "
        f"by alert or deadline; peak RSS growth < {n} × 128 KiB; fds back to baseline",
    )


async def connect_huge(ctx: Ctx) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    n = ctx.n(50, 10)
    base = ctx.snap()
    m0 = await st.rejected("mqtts", "connect_too_large")
    tls = ctx.tls()
    junk = os.urandom(16 * KIB)

    async def one(i):
        r, w = await wire.open_tls(st.port("mqtts"), tls, wire.src_addr(7000 + i))
        try:
            t = loop.time()
            w.write(wire.HUGE_CONNECT_HEADER + junk)
            data, how = await wire.read_until_close(r, t + st.connect_timeout + 3, limit=64)
            return (None if how == "timeout" else loop.time() - t), data
        finally:
            wire.close_writer(w)

    res = await gather_limited([one(i) for i in range(n)], 50)
    growth = ctx.rss_growth(base)
    errors = [r for r in res if not isinstance(r, tuple)]
    res = [r for r in res if isinstance(r, tuple)]
    counted = await st.rejected_settled("mqtts", "connect_too_large", m0 + n) - m0
    closes = [r[0] for r in res]
    answered = sum(1 for r in res if r[1])
    ok = (
        not errors
        and all(c is not None and c < 1.0 for c in closes)
        and counted >= n
        and growth < 2 * 1024
    )
    return Outcome(
        ok,
        f"closed after {stats(closes)} ({answered} sent bytes back first); counted connect_too_large +{counted:.0f}; "
        f"peak RSS +{mib(growth)}; {len(errors)} errors{': ' + repr(errors[0]) if errors else ''}",
        attack=f"{n} TLS clients send a CONNECT fixed header declaring 268,435,455 bytes, then 16 KiB",
        bound=f"each closed < 1 s (connect_timeout is {st.connect_timeout:g} s), counted connect_too_large, "
        "peak RSS growth < 2 MiB",
    )


async def connect_slow(ctx: Ctx) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    n = ctx.n(500, 100)
    ct = st.connect_timeout
    base = ctx.snap()
    m0 = await st.rejected("mqtts", "connect_timeout")
    tls = ctx.tls()

    async def one(i):
        r, w = await wire.open_tls(st.port("mqtts"), tls, wire.src_addr(9000 + i))
        t = loop.time()
        w.write(wire.connect_packet(f"slow-{i}")[:8])
        return r, w, t

    conns = await gather_limited([one(i) for i in range(n)], 100)
    opened = [c for c in conns if isinstance(c, tuple)]
    errors = [c for c in conns if not isinstance(c, tuple)]

    async def watch(c):
        r, _, t = c
        _, how = await wire.read_until_close(r, t + ct + 3, limit=0)
        return None if how == "timeout" else loop.time() - t

    closes = await asyncio.gather(*(watch(c) for c in opened))
    growth = ctx.rss_growth(base)
    abort_all(opened)
    fds_ok, fds, _ = await ctx.wait_fds(base[1])
    counted = await st.rejected_settled("mqtts", "connect_timeout", m0 + n) - m0
    in_window = sum(1 for c in closes if c is not None and ct - 0.3 <= c <= ct + 2)
    per_conn = growth / max(1, len(opened))
    ok = len(opened) == n and in_window == n and counted >= n and per_conn < 40 and fds_ok
    return Outcome(
        ok,
        f"{len(opened)}/{n} handshakes ({len(errors)} failed{': ' + repr(errors[0]) if errors else ''}); "
        f"closed after {stats(closes)}, {in_window} in [{ct - 0.3:g}, {ct + 2:g}] s; counted connect_timeout +{counted:.0f}; "
        f"peak RSS +{mib(growth)} ({per_conn:.1f} KiB/conn); fds back to {fds} (baseline {base[1]})",
        attack=f"{n} TLS clients send the first 8 bytes of a CONNECT, then nothing",
        bound=f"each closed at connect_timeout ({ct:g} s, window −0.3/+2 s), all counted "
        "reason=\"connect_timeout\", RSS growth < 40 KiB/conn, fds back to baseline",
    )


def make_loop_chain(workdir: str) -> tuple[str, str]:
    """50 EC P-256 keys; cert i (subject = issuer = CN=loop) carries key i
    and is signed by key (i+1) mod 50. Returns (chain PEM: leaf first,
    then the 49 intermediates; leaf key)."""
    d = os.path.join(workdir, "loop-chain")
    os.makedirs(d, exist_ok=True)
    chain = os.path.join(d, "chain.pem")
    if os.path.exists(chain):
        return chain, os.path.join(d, "key0.pem")
    N = 50

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)

    leaf_ext = os.path.join(d, "leaf.ext")
    ca_ext = os.path.join(d, "ca.ext")
    with open(leaf_ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
    with open(ca_ext, "w") as f:
        f.write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n")
    key = lambda i: os.path.join(d, f"key{i}.pem")  # noqa: E731
    for i in range(N):
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key(i))
        # A self-signed CN=loop certificate of key i: only used as the
        # "CA" whose subject becomes the issuer name when key i signs.
        run("req", "-new", "-x509", "-key", key(i), "-subj", "/CN=loop", "-days", "3650",
            "-out", os.path.join(d, f"self{i}.pem"))
    certs = []
    for i in range(N):
        j = (i + 1) % N
        csr = os.path.join(d, f"c{i}.csr")
        out = os.path.join(d, f"c{i}.pem")
        run("req", "-new", "-key", key(i), "-subj", "/CN=loop", "-out", csr)
        run("x509", "-req", "-in", csr, "-CA", os.path.join(d, f"self{j}.pem"), "-CAkey", key(j),
            "-set_serial", str(1000 + i), "-days", "3650", "-extfile", leaf_ext if i == 0 else ca_ext,
            "-out", out)
        with open(out) as f:
            certs.append(f.read())
    with open(chain, "w") as f:
        f.write("".join(certs))
    return chain, key(0)


def blocking_handshake(port, ctx, src, read_verdict, timeout=10.0):
    """One TLS handshake with blocking sockets: seconds it took; with
    `read_verdict`, also wait for the server's alert/close."""
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(src, 0))
    try:
        try:
            ss = ctx.wrap_socket(s, server_hostname="localhost")
        except (ssl.SSLError, OSError):
            return time.monotonic() - t0
        took = time.monotonic() - t0
        if read_verdict:
            try:
                while ss.recv(4096):
                    pass
            except (ssl.SSLError, OSError):
                pass
        else:
            ss.close()
        return took
    finally:
        s.close()


async def tls_chain_loop(ctx: Ctx) -> Outcome:
    st = ctx.stack
    port = st.port("mqtts")
    n = ctx.n(20, 8)
    samples = ctx.n(40, 15)
    chain, key0 = await asyncio.to_thread(make_loop_chain, st.dir)
    hostile = wire.client_context(st.path("ca.pem"), chain, key0)
    legit = ctx.tls(client_cert=True)
    f0 = await st.metric("mqttlb_tls_handshakes_total", listener="mqtts", result="failed")

    def measure_cpu():
        # Background CPU of the proxy (bystander traffic) over 1 s.
        a = harness.proc_sample(st.proxy_pid())[2]
        time.sleep(1.0)
        idle = harness.proc_sample(st.proxy_pid())[2] - a
        c0, t0 = harness.proc_sample(st.proxy_pid())[2], time.monotonic()
        for i in range(n):
            blocking_handshake(port, hostile, wire.src_addr(11000 + i), True)
        c1, t1 = harness.proc_sample(st.proxy_pid())[2], time.monotonic()
        return max(0.0, (c1 - c0) - idle * (t1 - t0)) / n, idle

    per_hs, idle = await asyncio.to_thread(measure_cpu)
    failed = await st.metric("mqttlb_tls_handshakes_total", listener="mqtts", result="failed") - f0

    def latencies(k, base):
        out = []
        for i in range(k):
            out.append(blocking_handshake(port, legit, wire.src_addr(base + i), False))
            time.sleep(0.02)
        return out

    unloaded = await asyncio.to_thread(latencies, samples, 12000)
    stop = threading.Event()
    attacks = [0]

    def attacker(a):
        i = 0
        while not stop.is_set() and i < 2000:
            blocking_handshake(port, hostile, wire.src_addr(13000 + a * 2000 + i), True)
            attacks[0] += 1
            i += 1

    threads = [threading.Thread(target=attacker, args=(a,), daemon=True) for a in range(4)]
    for t in threads:
        t.start()
    try:
        await asyncio.sleep(0.3)
        loaded = await asyncio.to_thread(latencies, samples, 22000)
    finally:
        stop.set()
        for t in threads:
            await asyncio.to_thread(t.join, 15)
    u_med, l_med = statistics.median(unloaded), statistics.median(loaded)
    limit = max(10 * u_med, 0.020)
    ok = per_hs < 0.005 and l_med < limit
    return Outcome(
        ok,
        f"proxy CPU {per_hs * 1000:.1f} ms per hostile handshake (background {idle * 1000:.0f} ms/s subtracted; "
        f"{failed:.0f} counted failed); legit handshake median {u_med * 1000:.1f} ms unloaded, "
        f"{l_med * 1000:.1f} ms under 4 attacker loops ({attacks[0]} hostile handshakes meanwhile), "
        f"limit {limit * 1000:.1f} ms",
        attack=f"{n} handshakes presenting a leaf + 49 intermediates, all CN=loop, each signed by the next's key "
        "(client_auth = optional); then 4 such loops while a legitimate client (dev client cert) handshakes",
        bound="proxy CPU < 5 ms per hostile handshake; legitimate median under attack < max(10 × unloaded median, "
        "20 ms) (the more generous of the two)",
    )


async def same_client_id(ctx: Ctx) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    n = ctx.n(1000, 200)
    base = ctx.snap()
    mark = ctx.bystander.mark()
    tls = ctx.tls()
    pkt = wire.connect_packet("probe-same-id", clean=True)
    t_start = loop.time()

    async def one(i):
        r, w = await wire.open_tls(st.port("mqtts"), tls, wire.src_addr(30000 + i))
        w.write(pkt)
        try:
            ack = await wire.read_exactly(r, 4, 30)
            return r, w, ("accepted" if wire.connack_code(ack) == 0 else f"refused {wire.connack_code(ack)}")
        except asyncio.IncompleteReadError:
            return r, w, "closed before CONNACK"
        except (ConnectionError, ssl.SSLError, OSError):
            return r, w, "reset before CONNACK"

    res = await gather_limited([one(i) for i in range(n)], 200)
    answered_in = loop.time() - t_start
    growth = ctx.rss_growth(base)
    conns = [r for r in res if isinstance(r, tuple)]
    errors = [r for r in res if not isinstance(r, tuple)]
    kinds = {}
    for _, _, k in conns:
        kinds[k] = kinds.get(k, 0) + 1
    abort_all(conns)
    fds_ok, fds, _ = await ctx.wait_fds(base[1], deadline=15)
    missing = await asyncio.to_thread(ctx.bystander.wait_caught_up, None, 10.0)
    by = ctx.bystander.since(mark)
    per_conn = growth / max(1, n)
    ok = (
        not errors
        and len(conns) == n
        and answered_in < 30
        and fds_ok
        and per_conn < 40
        and by["disconnects"] == 0
        and not missing
    )
    return Outcome(
        ok,
        f"{', '.join(f'{v}× {k}' for k, v in sorted(kinds.items()))}; {len(errors)} errors"
        f"{' (' + repr(errors[0]) + ')' if errors else ''}; all answered in {answered_in:.1f} s; "
        f"peak RSS +{mib(growth)} ({per_conn:.1f} KiB/conn); fds back to {fds} (baseline {base[1]}); "
        f"bystander: {by['disconnects']} disconnects, {len(missing)} missing, max latency {by['max_latency']:.2f} s",
        attack=f"{n} TLS clients CONNECT with the same client id at once (200 in flight)",
        bound="every client answered (CONNACK, or closed by the session takeover) within 30 s; RSS growth "
        "< 40 KiB/conn; fds back to baseline; bystander: no disconnect, nothing lost",
    )


async def not_mqtt(ctx: Ctx) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    k = 10
    http = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: probe\r\n\r\n"
    variants = [
        ("HTTP on the plain port", "mqtt", "http", None, http),
        ("TLS ClientHello on the plain port", "mqtt", "tls_in_mqtt", None, wire.client_hello()),
        ("HTTP inside TLS", "mqtts", "http", ctx.tls(), http),
        ("a PUBLISH first on the plain port", "mqtt", "not_connect", None, b"\x30\x05\x00\x01tx\x00"),
    ]
    parts, ok = [], True
    for label, listener, reason, tls, payload in variants:
        m0 = await st.rejected(listener, reason)

        async def one(i):
            if tls:
                r, w = await wire.open_tls(st.port(listener), tls, wire.src_addr(40000 + i))
            else:
                r, w = await wire.open_tcp("127.0.0.1", st.port(listener), wire.src_addr(40000 + i))
            try:
                t = loop.time()
                w.write(payload)
                _, how = await wire.read_until_close(r, t + 3, limit=0)
                return None if how == "timeout" else loop.time() - t
            finally:
                wire.close_writer(w)

        res = await asyncio.gather(*(one(i) for i in range(k)), return_exceptions=True)
        closes = [r for r in res if isinstance(r, float)]
        counted = await st.rejected_settled(listener, reason, m0 + k) - m0
        good = len(closes) == k and all(c < 1.0 for c in closes) and counted >= k
        ok &= good
        parts.append(f"{label}: {len(closes)}/{k} closed (max {max(closes, default=0):.2f} s), "
                     f"{reason} +{counted:.0f} {'✓' if good else '✗'}")
    return Outcome(ok, "; ".join(parts))


# ================================================================ WebSocket


async def ws_half_open(ctx: Ctx) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    n = ctx.n(2000, 400)
    n_tls = n // 10
    ut = st.upgrade_timeout
    base = ctx.snap()
    m0 = await st.rejected("ws", "websocket_timeout") + await st.rejected("wss", "websocket_timeout")
    head = wire.upgrade_request()[:40]
    tls = ctx.tls()

    async def one(i):
        # The clock starts before the connect: the proxy's starts at its
        # accept, which a busy probe may see long after it happened.
        t = loop.time()
        if i < n_tls:
            r, w = await wire.open_tls(st.port("wss"), tls, wire.src_addr(50000 + i))
        else:
            r, w = await wire.open_tcp("127.0.0.1", st.port("ws"), wire.src_addr(50000 + i), 5)
        w.write(head)
        return r, w, t

    conns = await gather_limited([one(i) for i in range(n)], 250)
    opened = [c for c in conns if isinstance(c, tuple)]
    errors = [c for c in conns if not isinstance(c, tuple)]

    async def watch(c):
        r, _, t = c
        _, how = await wire.read_until_close(r, t + ut + 3, limit=0)
        return None if how == "timeout" else loop.time() - t

    closes = await asyncio.gather(*(watch(c) for c in opened))
    growth = ctx.rss_growth(base)
    abort_all(opened)
    fds_ok, fds, _ = await ctx.wait_fds(base[1])
    async def both():
        return await st.rejected("ws", "websocket_timeout") + await st.rejected("wss", "websocket_timeout")

    counted = await st.settle(both, m0 + n) - m0
    in_window = sum(1 for c in closes if c is not None and ut - 0.3 <= c <= ut + 2)
    per_conn = growth / max(1, len(opened))
    ok = len(opened) == n and in_window == n and counted >= n and per_conn < 40 and fds_ok
    return Outcome(
        ok,
        f"{len(opened)}/{n} opened ({len(errors)} failed); closed after {stats(closes)}, {in_window} in window; "
        f"counted websocket_timeout +{counted:.0f}; peak RSS +{mib(growth)} ({per_conn:.1f} KiB/conn); "
        f"fds back to {fds} (baseline {base[1]})",
        attack=f"{n} upgrade requests cut after 40 bytes, then nothing ({n - n_tls} ws://, {n_tls} wss://)",
        bound=f"each closed at upgrade_timeout ({ut:g} s, window −0.3/+2 s), counted websocket_timeout, "
        "RSS growth < 40 KiB/conn, fds back to baseline",
    )


CONNECT_1MB = b"\x10" + wire.varint(1_000_000)  # a CONNECT declaring 1,000,000 bytes
HOLD_BYTES = 975_000
CHUNK = 16 * KIB


async def _ws_hold(ctx: Ctx, single_frame: bool) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    n = ctx.n(100, 20)
    base = ctx.snap()
    m0 = await st.rejected("ws", "connect_too_large")
    key = os.urandom(4)
    if single_frame:
        payload = CONNECT_1MB + b"\x00" * (HOLD_BYTES - len(CONNECT_1MB))
        head = wire.ws_header(wire.OP_BINARY, 1_000_000, True, key)
        masked = wire.mask_bytes(payload, key)
        pieces = [head + masked[:CHUNK]] + [masked[i : i + CHUNK] for i in range(CHUNK, len(masked), CHUNK)]
    else:
        first = CONNECT_1MB + b"\x00" * (CHUNK - len(CONNECT_1MB))
        cont = wire.ws_header(wire.OP_CONT, CHUNK, False, key) + wire.mask_bytes(b"\x00" * CHUNK, key)
        pieces = [wire.ws_header(wire.OP_BINARY, CHUNK, False, key) + wire.mask_bytes(first, key)]
        pieces += [cont] * ((HOLD_BYTES - CHUNK) // CHUNK)
    total = sum(len(p) for p in pieces)
    hold_until = st.connect_timeout + 2

    async def one(i):
        r, w = await wire.ws_upgrade(st.port("ws"), wire.src_addr(60000 + i))
        t = loop.time()
        sent = 0

        async def writer():
            nonlocal sent
            try:
                for p in pieces:
                    w.write(p)
                    await asyncio.wait_for(w.drain(), 5)
                    sent += len(p)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                pass

        wt = asyncio.ensure_future(writer())
        _, how = await wire.read_until_close(r, t + hold_until, limit=0)
        closed = None if how == "timeout" else loop.time() - t
        wt.cancel()
        try:
            await wt
        except (asyncio.CancelledError, Exception):
            pass
        return r, w, closed, sent

    res = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    growth = ctx.rss_growth(base)
    conns = [r for r in res if isinstance(r, tuple)]
    errors = [r for r in res if not isinstance(r, tuple)]
    abort_all(conns)
    fds_ok, fds, _ = await ctx.wait_fds(base[1])
    counted = await st.rejected_settled("ws", "connect_too_large", m0 + n, 1.0) - m0
    closes = [c[2] for c in conns]
    fast = sum(1 for c in closes if c is not None and c < 1.0)
    sent = [c[3] for c in conns]
    limit = n * (64 + 16)
    ok = not errors and growth < limit and fast == n
    shape = "one 1,000,000-byte binary frame" if single_frame else "a FIN=0 binary frame + FIN=0 continuations"
    return Outcome(
        ok,
        f"peak RSS +{mib(growth)} (bound {mib(limit)}); closed after {stats(closes)}, {fast}/{n} within 1 s, "
        f"{sum(1 for c in closes if c is None)} still open at {hold_until:g} s; sent {mib(min(sent, default=0) / 1024)}–"
        f"{mib(max(sent, default=0) / 1024)} each (of {mib(total / 1024)}); counted connect_too_large +{counted:.0f}; "
        f"{len(errors)} errors{' (' + repr(errors[0]) + ')' if errors else ''}; fds back to {fds}",
        attack=f"{n} ws:// clients upgrade, then send {shape} whose payload starts with a CONNECT declaring "
        f"1,000,000 bytes, ~975 KB of it, never finished",
        bound=f"peak RSS growth < {n} × (64 KiB max_connect_size + 16 KiB) = {mib(limit)}; each refused "
        "(closed) within 1 s of its first frame",
    )


async def ws_fragments(ctx):
    return await _ws_hold(ctx, single_frame=False)


async def ws_big_frame(ctx):
    return await _ws_hold(ctx, single_frame=True)


async def read_to_close_answering(r, w, deadline):
    """Read a WebSocket until the TCP close (or `deadline`), answering the
    server's Close frame with one of ours as a well-behaved client does
    (a server may wait for it before closing TCP). Returns (close codes
    received, 'eof' | 'reset' | 'timeout')."""
    loop = asyncio.get_running_loop()
    buf, codes, replied = b"", [], False
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return codes, "timeout"
        try:
            chunk = await asyncio.wait_for(r.read(65536), left)
        except asyncio.TimeoutError:
            return codes, "timeout"
        except (ConnectionError, OSError, ssl.SSLError):
            return codes, "reset"
        if not chunk:
            return codes, "eof"
        buf += chunk
        frames, rest = wire.parse_ws_frames(buf)
        buf = buf[len(buf) - rest :] if rest else b""
        for op, payload in frames:
            if op == wire.OP_CLOSE:
                codes.append(wire.close_code(payload))
                if not replied:
                    replied = True
                    try:
                        w.write(wire.ws_frame(wire.OP_CLOSE, payload[:2]))
                    except (ConnectionError, OSError):
                        pass


async def ws_violations(ctx: Ctx) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    port = st.port("ws")
    key = os.urandom(4)
    checks = [
        ("text frame", wire.ws_frame(wire.OP_TEXT, b"hello"), 1003, None),
        ("unmasked frame", wire.ws_frame(wire.OP_BINARY, wire.PINGREQ, masked=False), 1002, None),
        ("oversized frame header (2 MiB > max_frame_size 1 MiB)",
         wire.ws_header(wire.OP_BINARY, 2 * 1024 * 1024, True, key) + wire.mask_bytes(b"\x00" * 1024, key), 1009, None),
        ("text frame over wss://", wire.ws_frame(wire.OP_TEXT, b"hello"), 1003, ctx.tls()),
    ]
    parts, ok = [], True
    for i, (label, data, want, tls) in enumerate(checks):
        try:
            r, w = await wire.ws_mqtt_connect(st.port("wss") if tls else port, f"probe-ws-violation-{i}",
                                              wire.src_addr(70000 + i), tls)
        except Exception as e:  # noqa: BLE001
            parts.append(f"{label}: no session ({e}) ✗")
            ok = False
            continue
        try:
            w.write(data)
            codes, how = await read_to_close_answering(r, w, loop.time() + 5)
        finally:
            wire.close_writer(w)
        closed = how != "timeout"
        good = closed and codes[:1] == [want]
        ok &= good
        what = f"Close {codes[0]}" if codes else "no Close frame"
        parts.append(f"{label}: {what}, then {'TCP ' + how if closed else 'still open after 5 s'} "
                     f"(want Close {want}) {'✓' if good else '✗'}")

    # Ping flood from a client that never reads.
    pings = ctx.n(10_000, 2_000)
    base = ctx.snap()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((wire.src_addr(70100), 0))
    sock.setblocking(False)
    await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
    r, w = await asyncio.open_connection(sock=sock, limit=1 << 16)
    sent, connected = 0, False
    try:
        w.write(wire.upgrade_request())
        await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        w.write(wire.ws_frame(wire.OP_BINARY, wire.connect_packet("probe-ping-flood")))
        op, payload = await wire.ws_read_frame(r, 5)
        connected = wire.connack_code(payload) == 0
        w.transport.pause_reading()
        ping = wire.ws_frame(wire.OP_PING, b"p" * 125)
        end = loop.time() + 15
        for _ in range(pings):
            w.write(ping)
            if w.transport.get_write_buffer_size() > 256 * KIB:
                await asyncio.wait_for(w.drain(), max(0.1, end - loop.time()))
            sent += 1
        await asyncio.wait_for(w.drain(), max(0.1, end - loop.time()))
        await asyncio.sleep(0.5)  # pacing only: let the proxy work through the tail
    except (asyncio.TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
        pass  # the flood was cut short: `sent` says how far it got
    finally:
        growth = ctx.rss_growth(base)
        wire.close_writer(w)
    alive = await ctx.legit_session()
    flood_ok = connected and growth < 4 * 1024 and alive
    ok &= flood_ok
    parts.append(f"ping flood: {sent}/{pings} pings written (client never reads), peak RSS +{mib(growth)}, "
                 f"proxy serving afterwards: {alive} {'✓' if flood_ok else '✗'}")
    return Outcome(
        ok,
        "; ".join(parts),
        attack="after a valid CONNECT over ws://: a text frame; an unmasked frame; a frame header declaring 2 MiB; "
        f"a text frame over wss://; and {pings} pings (125 B) from a client that never reads",
        bound="a Close frame with 1003 / 1002 / 1009 / 1003 respectively before the TCP close (within 5 s; the "
        "probe answers a Close with its own); ping flood: "
        "RSS growth < 4 MiB and the proxy still serves",
    )


# ==================================================================== admin


async def admin_flood(ctx: Ctx) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    port = st.port("admin")
    duration = ctx.n(15.0, 6.0)
    stop = asyncio.Event()
    counts = {"idle_connects": 0, "idle_closed": 0, "slow_connects": 0, "slow_closed": 0}

    async def holder(i):
        src = f"127.0.0.{2 + i % 13}"
        while not stop.is_set():
            try:
                r, w = await wire.open_tcp("127.0.0.1", port, src, 1)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.2)
                continue
            counts["idle_connects"] += 1
            try:
                while not stop.is_set():
                    try:
                        if not await asyncio.wait_for(r.read(1024), 0.5):
                            break
                    except asyncio.TimeoutError:
                        continue
            except (ConnectionError, OSError):
                pass
            finally:
                wire.close_writer(w)
            if not stop.is_set():
                counts["idle_closed"] += 1
                await asyncio.sleep(0.2)

    async def slowloris(i):
        src = f"127.0.0.{2 + i % 13}"
        while not stop.is_set():
            try:
                r, w = await wire.open_tcp("127.0.0.1", port, src, 1)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.2)
                continue
            counts["slow_connects"] += 1
            try:
                w.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                k = 0
                while not stop.is_set():
                    try:
                        if not await asyncio.wait_for(r.read(1024), 1.0):
                            break
                    except asyncio.TimeoutError:
                        w.write(f"X-Slow-{k}: {k}\r\n".encode())
                        k += 1
            except (ConnectionError, OSError):
                pass
            finally:
                wire.close_writer(w)
            if not stop.is_set():
                counts["slow_closed"] += 1
                await asyncio.sleep(0.2)

    tasks = [asyncio.ensure_future(holder(i)) for i in range(100)]
    tasks += [asyncio.ensure_future(slowloris(i)) for i in range(20)]
    await asyncio.sleep(0.5)  # pacing: let the attackers take their seats
    results = []
    t_end = loop.time() + duration
    nxt = loop.time()
    try:
        while loop.time() < t_end:
            try:
                status, _, took = await wire.http_request(port, wire.http_get("/healthz"), 1.0, "127.0.0.1")
            except (OSError, asyncio.TimeoutError) as e:
                status, took = 0, 1.0
                _ = e
            results.append((status, took))
            nxt += 0.2
            await asyncio.sleep(max(0.0, nxt - loop.time()))
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    good = sum(1 for s, t in results if s == 200 and t <= 1.0)
    no_answer = sum(1 for s, _ in results if s == 0)
    recovered = await _wait_healthz(port, 20)
    ok = good == len(results) and recovered
    return Outcome(
        ok,
        f"/healthz: {good}/{len(results)} answered 200 within 1 s ({no_answer} closed or timed out without an "
        f"answer, worst {max((t for _, t in results), default=0):.2f} s); attackers: {counts['idle_connects']} idle "
        f"connects ({counts['idle_closed']} closed by the server), {counts['slow_connects']} slowloris connects "
        f"({counts['slow_closed']} closed); healthy again after: {recovered}",
        attack=f"100 idle connections from 127.0.0.2–14 (re-opened when closed) + 20 slowloris heads, for {duration:g} s",
        bound="every GET /healthz from 127.0.0.1 (every 200 ms) answers 200 within 1 s",
    )


async def _wait_healthz(port, deadline):
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while loop.time() < end:
        try:
            status, _, _ = await wire.http_request(port, wire.http_get("/healthz"), 1.0)
            if status == 200:
                return True
        except (OSError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.2)
    return False


async def admin_big_body(ctx: Ctx) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    port = st.port("admin")
    size = ctx.n(100, 20) * 1024 * 1024
    base = ctx.snap()
    chunk = b"\x00" * (64 * KIB)
    parts, ok = [], True
    for mode in ("content-length", "chunked"):
        if mode == "content-length":
            head = (f"POST /api/v1/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {harness.ADMIN_TOKEN}"
                    f"\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n").encode()
            piece = chunk
        else:
            head = (f"POST /api/v1/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {harness.ADMIN_TOKEN}"
                    f"\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
            piece = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        r, w = await wire.open_tcp("127.0.0.1", port, None, 3)
        sent = 0
        t0 = loop.time()

        async def writer():
            nonlocal sent
            try:
                w.write(head)
                while sent < size:
                    w.write(piece)
                    await asyncio.wait_for(w.drain(), 5)
                    sent += len(chunk)
                if mode == "chunked":
                    w.write(b"0\r\n\r\n")
                    await asyncio.wait_for(w.drain(), 5)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                pass

        wt = asyncio.ensure_future(writer())
        try:
            data, how = await wire.read_until_close(r, t0 + 30, limit=4096)
        finally:
            wt.cancel()
            await asyncio.gather(wt, return_exceptions=True)
            wire.close_writer(w)
        took = loop.time() - t0
        text = data.decode("latin-1")
        status = text.split(" ", 2)[1] if text.startswith("HTTP/") else "none"
        ended = how != "timeout"
        ok &= ended
        parts.append(f"{mode}: answered {status}, connection {how} after {took:.1f} s, "
                     f"{sent / 1024 / 1024:.0f} of {size // 1024 // 1024} MiB sent")
    growth = ctx.rss_growth(base)
    healthy = await _wait_healthz(port, 10)
    ok = ok and growth < 16 * 1024 and healthy
    return Outcome(
        ok,
        "; ".join(parts) + f"; peak RSS +{mib(growth)}; /healthz afterwards: {healthy}",
        attack=f"POST /api/v1/reload (with the token) carrying a {size // 1024 // 1024} MiB body, "
        "with Content-Length and chunked",
        bound="answered or closed within 30 s; peak RSS growth < 16 MiB; admin still answers",
    )


async def admin_auth(ctx: Ctx) -> Outcome:
    port = ctx.stack.port("admin")
    tok = harness.ADMIN_TOKEN

    async def status(path, auth):
        s, _, _ = await wire.http_request(port, wire.http_get(path, auth), 3)
        return s

    lower = await status("/api/v1/backends", f"Authorization: bearer {tok}\r\n")
    upper = await status("/api/v1/backends", f"Authorization: Bearer {tok}\r\n")
    none = await status("/api/v1/backends", "")
    nope = await status("/api/v1/nope", f"Authorization: Bearer {tok}\r\n")
    ok = lower == 200 and nope == 404 and upper == 200 and none == 401
    return Outcome(
        ok,
        f"`bearer` (lowercase) → {lower} (want 200); `/api/v1/nope` → {nope} (want 404); "
        f"sanity: `Bearer` → {upper}, no header → {none}",
    )


# ================================================================== upgrade


async def upgrade_socket(ctx: Ctx) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    path = st.upgrade_sock
    ut = st.upgrade_socket_timeout
    old = st.proxy
    base = ctx.snap()
    mark = ctx.bystander.mark()
    parts, ok = [], True

    def unix_peer(send: bytes | None, deadline: float):
        """Connect, optionally send, read (discarding what arrives and any
        descriptors) until the old process closes: seconds, or None."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(0.5)
        t0 = time.monotonic()
        try:
            s.connect(path)
            if send:
                try:
                    s.sendall(send)
                except OSError:
                    pass
            while time.monotonic() - t0 < deadline:
                try:
                    _, anc, _, _ = s.recvmsg(65536, socket.CMSG_SPACE(4 * 64))
                    for level, kind, data in anc:
                        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                            for fd in struct.unpack(f"{len(data) // 4}i", data[: len(data) // 4 * 4]):
                                os.close(fd)
                    if not _:
                        return time.monotonic() - t0
                except socket.timeout:
                    continue
                except OSError:
                    return time.monotonic() - t0
            return None
        finally:
            s.close()

    peers = [
        ("garbage (4 KiB random)", os.urandom(4096)),
        ("header declaring 4 GiB and 2^32 descriptors", b"MQU1" + b"\xff" * 8),
        ("stalled (connects, never writes)", None),
    ]
    for label, payload in peers:
        closed = await asyncio.to_thread(unix_peer, payload, ut + 3)
        serving = await ctx.legit_session()
        good = closed is not None and closed <= ut + 2 and serving and old.poll() is None
        ok &= good
        parts.append(f"{label}: dropped after {'never' if closed is None else f'{closed:.2f} s'}, proxy serving: "
                     f"{serving} {'✓' if good else '✗'}")
    fds_ok, fds, _ = await ctx.wait_fds(base[1], slack=8, deadline=5)
    ok &= fds_ok
    parts.append(f"fds after the failed hand-overs {fds} (baseline {base[1]})")
    by = ctx.bystander.since(mark)
    ok &= by["disconnects"] == 0
    parts.append(f"bystander disconnects meanwhile: {by['disconnects']}")

    # A real hand-over.
    before_connects = sum(ctx.bystander.connects.values())
    old_gen = st.generation
    new = st.start_proxy(takeover=True)
    t0 = loop.time()
    exit_deadline = t0 + ut + st.drain_timeout + 15
    while old.poll() is None and new.poll() is None and loop.time() < exit_deadline:
        await asyncio.sleep(0.05)
    old_code = old.poll()
    if old_code is None and new.poll() is None:
        parts.append("the old process did not exit ✗")
        ok = False
    if new.poll() is not None:
        parts.append(f"the new process exited {new.returncode}: {st.read_log()[-300:]!r} ✗")
        return Outcome(False, "; ".join(parts))
    st.proxy = new  # the sampler follows the new PID from here on
    took = loop.time() - t0
    serving = await ctx.legit_session()
    # The bystander was closed at the old process's drain timeout and comes back.
    end = loop.time() + 20
    while sum(ctx.bystander.connects.values()) < before_connects + 2 and loop.time() < end:
        await asyncio.sleep(0.1)
    reconnected = sum(ctx.bystander.connects.values()) - before_connects
    missing = await asyncio.to_thread(ctx.bystander.wait_caught_up, None, 15.0)
    log_ok = "the new process serves" in st.read_log(old_gen)
    good = old_code == 0 and serving and not missing and log_ok
    ok &= good
    parts.append(
        f"takeover: old pid {old.pid} exited {old_code} {took:.1f} s after the new one started (drain_timeout "
        f"{st.drain_timeout:g} s), new pid {new.pid} serving: {serving}; bystander reconnected {reconnected}×, "
        f"{len(missing)} missing {'✓' if good else '✗'}"
    )
    return Outcome(
        ok,
        "; ".join(parts),
        attack="on [upgrade] socket: 4 KiB of garbage; a hostile MQU1 header; a peer that never answers; then a real "
        "`mqttlb proxy --takeover`",
        bound=f"each bad peer dropped ≤ upgrade.timeout + 2 s ({ut + 2:g} s), the proxy serves throughout, no fd "
        "leak, bystander undisturbed; the hand-over completes (old exits 0, new serves) and the bystander loses nothing",
    )


# ================================================================== reloads


async def sighup_reloads(ctx: Ctx) -> Outcome:
    st, loop = ctx.stack, asyncio.get_running_loop()
    reloads = ctx.n(300, 50)
    churners = ctx.n(50, 20)
    base = ctx.snap()
    mark = ctx.bystander.mark()
    name = "mqttlb_config_reloads_total"
    ok0 = await st.metric(name, result="ok")
    err0 = await st.metric(name, result="error")
    tls = ctx.tls()
    stop = asyncio.Event()
    churn = {"ok": 0, "failed": 0, "reasons": {}}

    async def churner(k):
        j = 0
        while not stop.is_set():
            j += 1
            try:
                r, w = await wire.open_tls(st.port("mqtts"), tls, wire.src_addr(80000 + k * 100 + j % 100))
                try:
                    w.write(wire.connect_packet(f"probe-churn-{k}"))
                    ack = await wire.read_exactly(r, 4, 5)
                    if wire.connack_code(ack) != 0:
                        raise RuntimeError(f"CONNACK {ack!r}")
                    w.write(wire.DISCONNECT)
                    await asyncio.wait_for(w.drain(), 2)
                finally:
                    wire.close_writer(w)
                churn["ok"] += 1
            except Exception as e:  # noqa: BLE001
                churn["failed"] += 1
                key = type(e).__name__ + (f": {e}" if str(e) else "")
                churn["reasons"][key[:60]] = churn["reasons"].get(key[:60], 0) + 1
            await asyncio.sleep(0.1)  # pacing

    tasks = [asyncio.ensure_future(churner(k)) for k in range(churners)]
    counted_each, missed = 0, 0
    t0 = loop.time()
    try:
        for i in range(reloads):
            nxt = loop.time() + 0.025  # pacing: at most 40 reloads/s, so the churn overlaps them all
            os.kill(st.proxy_pid(), 1)  # SIGHUP
            end = loop.time() + 5
            while True:
                got = await st.metric(name, result="ok") + await st.metric(name, result="error")
                if got >= ok0 + err0 + i + 1:
                    counted_each += 1
                    break
                if loop.time() >= end:
                    missed += 1
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(max(0.0, nxt - loop.time()))
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    took = loop.time() - t0
    ok_n = await st.metric(name, result="ok") - ok0
    err_n = await st.metric(name, result="error") - err0
    fds_ok, fds, _ = await ctx.wait_fds(base[1], deadline=15)
    after = ctx.snap()
    growth_after = after[0] - base[0]
    missing = await asyncio.to_thread(ctx.bystander.wait_caught_up, None, 10.0)
    by = ctx.bystander.since(mark)
    ok = (
        ok_n == reloads
        and err_n == 0
        and fds_ok
        and growth_after < 8 * 1024
        and churn["failed"] == 0
        and not missing
        and by["disconnects"] == 0
    )
    reasons = ", ".join(f"{v}× {k}" for k, v in sorted(churn["reasons"].items(), key=lambda x: -x[1])[:3])
    return Outcome(
        ok,
        f"{reloads} SIGHUPs in {took:.1f} s: reloads ok +{ok_n:.0f}, error +{err_n:.0f} ({missed} not counted "
        f"within 5 s); churn: {churn['ok']} sessions ok, {churn['failed']} failed{' (' + reasons + ')' if reasons else ''}; "
        f"RSS {mib(base[0])} → peak {mib(ctx.sampler.peaks()[0])} → {mib(after[0])} after; fds back to {fds} "
        f"(baseline {base[1]}); bystander: {by['disconnects']} disconnects, {len(missing)} missing",
        attack=f"{reloads} `kill -HUP` reloads, each awaited, while {churners} TLS clients connect/CONNECT/DISCONNECT "
        "in a loop",
        bound="every reload counted result=\"ok\"; no churn session fails; fds back to baseline; RSS after − before "
        "< 8 MiB; bystander: no disconnect, nothing lost",
    )


async def proxy_header(ctx: Ctx) -> Outcome:
    """The "pp" listener (TLS, proxy_protocol = "required", only 127.0.0.1
    may send a header): stalled and half headers, malformed ones, none at
    all, headers from an untrusted peer, and valid ones stuffed with TLVs
    that must still lead to a session."""
    st, loop = ctx.stack, asyncio.get_running_loop()
    port, name, pt = st.port("pp"), "pp", st.proxy_header_timeout
    bal = st.balancer
    n_stall, n_bad, n_untrusted, n_valid = ctx.n(500, 100), ctx.n(40, 10), ctx.n(100, 20), ctx.n(50, 10)
    reasons = ("proxy_header_timeout", "proxy_header_invalid", "proxy_header_missing", "proxy_untrusted")
    m0 = {r: await st.rejected(name, r) for r in reasons}
    base = ctx.snap()
    mark = ctx.bystander.mark()

    # 1. From the balancer's address: nothing, or 10 bytes of a v2 header.
    half = wire.proxy_v2("203.0.113.9", 40000)[:10]

    opened, closes = await stall_and_watch(
        port, n_stall, lambda _: bal, lambda i: half if i % 5 == 0 else b"", pt
    )
    stall_growth = ctx.rss_growth(base)
    abort_all(opened)
    in_window = sum(1 for c in closes if c is not None and pt - 0.3 <= c <= pt + 2)

    # 2. Malformed headers from the balancer, 4 kinds; 3. a ClientHello
    # with no header; each must be closed at once.
    bad = {
        "v2 declaring 65535 bytes": wire.proxy_v2("203.0.113.9", 1, declared=65535) + os.urandom(2048),
        "v2 version 3": wire.proxy_v2("203.0.113.9", 1, version_command=0x31),
        "v1 without CRLF, 200 bytes": b"PROXY TCP4 " + b"1" * 189,
        "v1 garbage addresses": b"PROXY TCP4 999.1.1.1 nope 1 2\r\n",
    }

    async def refused(payload, src):
        r, w = await wire.open_tcp("127.0.0.1", port, src, 5)
        t = loop.time()
        try:
            w.write(payload)
            _, how = await wire.read_until_close(r, t + pt + 3, limit=0)
            return None if how == "timeout" else loop.time() - t
        finally:
            wire.close_writer(w)

    bad_res = {}
    for label, payload in bad.items():
        bad_res[label] = await gather_limited([refused(payload, bal) for _ in range(n_bad)], 50)
    missing = await gather_limited([refused(wire.client_hello(), bal) for _ in range(n_bad)], 50)

    # 4. Valid headers from addresses the listener does not trust.
    good_header = wire.proxy_v2("203.0.113.10", 40001)
    untrusted = await gather_limited(
        [refused(good_header, wire.src_addr(90000 + i)) for i in range(n_untrusted)], 50
    )

    # 5. Valid headers from the balancer, stuffed with ~4 KiB of TLVs (the
    # listener's bound is 4096 bytes), then TLS and a CONNECT: served.
    stuffing = b"".join(wire.tlv(0xEA, os.urandom(9)) for _ in range(330))
    tls = ctx.tls()

    async def valid(i):
        hdr = wire.proxy_v2(f"198.51.100.{1 + i % 250}", 30000 + i, tlvs=stuffing)
        r, w = await wire.open_tls_after(port, tls, hdr, bal)
        try:
            w.write(wire.connect_packet(f"probe-pp-{i}"))
            ack = await wire.read_exactly(r, 4, 5)
            return wire.connack_code(ack) == 0, len(hdr)
        finally:
            wire.close_writer(w)

    valid_res = await gather_limited([valid(i) for i in range(n_valid)], 25)
    growth = ctx.rss_growth(base)
    fds_ok, fds, _ = await ctx.wait_fds(base[1])
    counted = {}
    want = {
        "proxy_header_timeout": n_stall,
        "proxy_header_invalid": n_bad * len(bad),
        "proxy_header_missing": n_bad,
        "proxy_untrusted": n_untrusted,
    }
    for r in reasons:
        counted[r] = await st.rejected_settled(name, r, m0[r] + want[r]) - m0[r]
    missing_msgs = await asyncio.to_thread(ctx.bystander.wait_caught_up, None, 10.0)
    by = ctx.bystander.since(mark)

    def quick(res):
        ok = [x for x in res if isinstance(x, float)]
        return len(ok) == len(res) and all(x < 1.0 for x in ok), ok

    parts, ok = [], True
    stall_ok = len(opened) == n_stall and in_window == n_stall and stall_growth / max(1, n_stall) < 40
    ok &= stall_ok
    parts.append(
        f"stalled/half headers: {len(opened)}/{n_stall} opened, closed after {stats(closes)}, {in_window} in "
        f"[{pt - 0.3:g}, {pt + 2:g}] s, peak RSS +{mib(stall_growth)} ({stall_growth / max(1, n_stall):.1f} KiB/conn) "
        f"{'✓' if stall_ok else '✗'}"
    )
    for label, res in list(bad_res.items()) + [("a ClientHello with no header", missing),
                                               ("a valid header from an untrusted peer", untrusted)]:
        fine, xs = quick(res)
        ok &= fine
        parts.append(f"{label}: {len(xs)}/{len(res)} closed, max {max(xs, default=0):.2f} s {'✓' if fine else '✗'}")
    served = sum(1 for x in valid_res if isinstance(x, tuple) and x[0])
    hdr_len = next((x[1] for x in valid_res if isinstance(x, tuple)), 0)
    ok &= served == n_valid
    parts.append(f"valid {hdr_len}-byte headers (330 TLVs) then TLS + CONNECT: {served}/{n_valid} served "
                 f"{'✓' if served == n_valid else '✗'}")
    counts_ok = all(counted[r] >= want[r] for r in reasons)
    ok &= counts_ok and fds_ok and not missing_msgs and by["disconnects"] == 0
    parts.append(
        "counted " + ", ".join(f"{r} +{counted[r]:.0f} (want {want[r]})" for r in reasons)
        + f"; peak RSS +{mib(growth)}; fds back to {fds} (baseline {base[1]}); bystander: {by['disconnects']} "
        f"disconnects, {len(missing_msgs)} missing"
    )
    return Outcome(
        ok,
        "; ".join(parts),
        attack=f"on a TLS listener with proxy_protocol = required from {bal}/32: {n_stall} connections from the "
        f"balancer sending nothing ({n_stall // 5} of them 10 bytes of a v2 header); {n_bad} each of 4 malformed "
        f"headers (v2 declaring 65535 bytes, v2 version 3, a 200-byte v1 line, v1 with garbage addresses) and of a "
        f"ClientHello with no header; {n_untrusted} valid v2 headers from 127.0.x.y; {n_valid} valid v2 headers "
        "carrying 330 TLVs (~4 KiB) followed by TLS and a CONNECT",
        bound=f"stalls closed at proxy_protocol_timeout ({pt:g} s, window −0.3/+2 s), RSS growth < 40 KiB/conn; "
        "every malformed, missing or untrusted header closed < 1 s; each counted under its reason "
        "(proxy_header_timeout / _invalid / _missing, proxy_untrusted); every valid one served; fds back to "
        "baseline; bystander: nothing lost",
    )


# ================================================================ registry

REGISTRY = [
    Case(1, "tls-stall", "TCP/TLS listener", "stalled TLS handshakes", "", "each closed by tls_handshake_timeout "
         "(2 s) + at most 2 s, all counted tls_handshake_timeout, RSS growth < 40 KiB/conn, fds back to baseline",
         tls_stall),
    Case(2, "tls-big-hello", "TCP/TLS listener", "oversized ClientHellos", "", "", tls_big_hello),
    Case(3, "connect-huge", "TCP/TLS listener", "CONNECT declaring 268 MB", "", "", connect_huge),
    Case(4, "connect-slow", "TCP/TLS listener", "slow CONNECT", "", "", connect_slow),
    Case(5, "tls-chain-loop", "TCP/TLS listener", "hostile client-certificate chain", "", "", tls_chain_loop, 180),
    Case(6, "same-client-id", "TCP/TLS listener", "simultaneous CONNECTs, one client id", "", "", same_client_id),
    Case(7, "not-mqtt", "TCP/TLS listener", "not MQTT", "HTTP on the plain port, a ClientHello on the plain port, "
         "HTTP inside TLS, a PUBLISH before CONNECT (10 each)", "each closed < 1 s and counted under its reason "
         "(http, tls_in_mqtt, http, not_connect)", not_mqtt),
    Case(8, "ws-half-open", "WebSocket listener", "half-open upgrade requests", "", "", ws_half_open),
    Case(9, "ws-fragments", "WebSocket listener", "fragmented CONNECT hold", "", "", ws_fragments),
    Case(10, "ws-big-frame", "WebSocket listener", "one partial 1 MB frame", "", "", ws_big_frame),
    Case(11, "ws-violations", "WebSocket listener", "protocol violations, ping flood", "", "", ws_violations),
    Case(12, "admin-flood", "admin API", "idle + slowloris connections", "", "", admin_flood),
    Case(13, "admin-big-body", "admin API", "100 MB request body", "", "", admin_big_body),
    Case(14, "admin-auth", "admin API", "auth scheme case, unknown path", "GET /api/v1/backends with "
         "`Authorization: bearer TOKEN`; GET /api/v1/nope with the token", "lowercase scheme accepted (200, RFC 9110 "
         "§11.1: case-insensitive); unknown path 404", admin_auth),
    Case(15, "upgrade-socket", "upgrade socket", "hostile peers, then a real takeover", "", "", upgrade_socket, 120),
    Case(16, "sighup-reloads", "reloads", "SIGHUP reloads under churn", "", "", sighup_reloads, 240),
    Case(17, "proxy-header", "inbound PROXY header", "hostile and stalled PROXY headers", "", "", proxy_header),
]
