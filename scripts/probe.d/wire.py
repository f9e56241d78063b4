"""Bytes on the wire for scripts/probe: MQTT packets, WebSocket frames,
TLS ClientHellos and HTTP requests, crafted by hand (no library would send
most of them), plus small asyncio connection helpers that always carry a
deadline."""

import asyncio
import base64
import os
import socket
import ssl
import struct
import time

# ---------------------------------------------------------------- MQTT


def varint(n: int) -> bytes:
    """MQTT remaining-length encoding (up to 268,435,455)."""
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def connect_packet(client_id: str, keepalive: int = 60, clean: bool = True) -> bytes:
    """An MQTT 3.1.1 CONNECT."""
    cid = client_id.encode()
    body = (
        b"\x00\x04MQTT\x04"
        + bytes([0x02 if clean else 0x00])
        + struct.pack(">H", keepalive)
        + struct.pack(">H", len(cid))
        + cid
    )
    return b"\x10" + varint(len(body)) + body


DISCONNECT = b"\xe0\x00"
PINGREQ = b"\xc0\x00"
# CONNECT fixed header declaring the largest remaining length MQTT allows.
HUGE_CONNECT_HEADER = b"\x10\xff\xff\xff\x7f"  # 268,435,455 bytes


def connack_code(data: bytes):
    """Return code of a 3.1.1 CONNACK at the start of `data`, else None."""
    if len(data) >= 4 and data[0] == 0x20 and data[1] == 0x02:
        return data[3]
    return None


# ---------------------------------------------------------------- WebSocket


def ws_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def upgrade_request(host: str = "localhost", path: str = "/mqtt") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {ws_key()}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    ).encode()


def mask_bytes(data: bytes, key: bytes) -> bytes:
    """XOR `data` with the 4-byte masking key (RFC 6455 5.3), fast for
    megabytes: one big-integer XOR."""
    n = len(data)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def ws_header(opcode: int, length: int, fin: bool = True, key: bytes | None = None) -> bytes:
    """A frame header; `key` None = unmasked (server-to-client style)."""
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if key is not None else 0
    if length < 126:
        head = bytes([first, mask_bit | length])
    elif length < 65536:
        head = bytes([first, mask_bit | 126]) + struct.pack(">H", length)
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack(">Q", length)
    return head + (key or b"")


def ws_frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    if masked:
        key = os.urandom(4)
        return ws_header(opcode, len(payload), fin, key) + mask_bytes(payload, key)
    return ws_header(opcode, len(payload), fin, None) + payload


OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def parse_ws_frames(buf: bytes):
    """Frames in `buf` (server to client, normally unmasked): a list of
    (opcode, payload) and the number of bytes left over (incomplete)."""
    frames = []
    i = 0
    while True:
        if len(buf) - i < 2:
            break
        b0, b1 = buf[i], buf[i + 1]
        opcode = b0 & 0x0F
        masked = b1 & 0x80
        length = b1 & 0x7F
        j = i + 2
        if length == 126:
            if len(buf) - j < 2:
                break
            length = struct.unpack(">H", buf[j : j + 2])[0]
            j += 2
        elif length == 127:
            if len(buf) - j < 8:
                break
            length = struct.unpack(">Q", buf[j : j + 8])[0]
            j += 8
        key = None
        if masked:
            if len(buf) - j < 4:
                break
            key = buf[j : j + 4]
            j += 4
        if len(buf) - j < length:
            break
        payload = buf[j : j + length]
        if key:
            payload = mask_bytes(payload, key)
        frames.append((opcode, payload))
        i = j + length
    return frames, len(buf) - i


def close_code(payload: bytes):
    return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None


# ---------------------------------------------------------------- TLS


def client_hello(padding: int = 0, sni: str = "localhost", declared_extra: int = 0) -> bytes:
    """A plausible TLS 1.3/1.2 ClientHello handshake message split into
    records, with `padding` bytes of padding extension (type 21).
    `declared_extra` inflates the handshake length field beyond what is
    built (a message that never completes)."""

    def ext(kind: int, data: bytes) -> bytes:
        return struct.pack(">HH", kind, len(data)) + data

    host = sni.encode()
    server_name = struct.pack(">H", len(host) + 3) + b"\x00" + struct.pack(">H", len(host)) + host
    groups = b"\x00\x1d\x00\x17\x00\x18"
    sigalgs = b"\x04\x03\x08\x04\x04\x01\x05\x03\x08\x05\x05\x01\x08\x06\x06\x01"
    key_share = struct.pack(">H", 36) + b"\x00\x1d" + struct.pack(">H", 32) + os.urandom(32)
    exts = (
        ext(0, server_name)
        + ext(10, struct.pack(">H", len(groups)) + groups)
        + ext(11, b"\x01\x00")
        + ext(13, struct.pack(">H", len(sigalgs)) + sigalgs)
        + ext(43, b"\x04\x03\x04\x03\x03")
        + ext(45, b"\x01\x01")
        + ext(51, key_share)
    )
    if padding:
        exts += ext(21, b"\x00" * padding)
    suites = b"\x13\x01\x13\x02\x13\x03\xc0\x2b\xc0\x2f\xc0\x2c\xc0\x30"
    body = (
        b"\x03\x03"
        + os.urandom(32)
        + b"\x20"
        + os.urandom(32)
        + struct.pack(">H", len(suites))
        + suites
        + b"\x01\x00"
        + struct.pack(">H", len(exts))
        + exts
    )
    declared = len(body) + declared_extra
    hs = b"\x01" + declared.to_bytes(3, "big") + body
    out = bytearray()
    for i in range(0, len(hs), 16384):
        chunk = hs[i : i + 16384]
        out += b"\x16\x03\x01" + struct.pack(">H", len(chunk)) + chunk
    return bytes(out)


def tls_reply_kind(data: bytes) -> str:
    """What a server sent back in answer to a ClientHello."""
    if not data:
        return "close"
    if data[0] == 0x15:
        return "alert"
    if data[0] == 0x16 and len(data) > 5 and data[5] == 0x02:
        return "server-hello"
    return "other"


def client_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


# ---------------------------------------------------------------- PROXY headers

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(src: str, sport: int, dst: str = "127.0.0.1", dport: int = 8883, tlvs: bytes = b"",
             version_command: int = 0x21, declared: int | None = None) -> bytes:
    """A PROXY v2 header (PROXY command, TCP over IPv4) naming `src`:`sport`;
    `declared` overrides the length field (to lie about it)."""
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport) + tlvs
    length = len(body) if declared is None else declared
    return PROXY_V2_SIGNATURE + bytes([version_command, 0x11]) + struct.pack(">H", length) + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack(">H", len(value)) + value


async def open_tls_after(port: int, ctx: ssl.SSLContext, first: bytes, src: str | None = None,
                         timeout: float = 10.0):
    """TCP to `port`, `first` in the clear (a PROXY header), then TLS."""
    r, w = await open_tcp("127.0.0.1", port, src, timeout)
    w.write(first)
    await w.drain()
    await asyncio.wait_for(w.start_tls(ctx, server_hostname="localhost"), timeout)
    return r, w


# ---------------------------------------------------------------- sockets


def src_addr(i: int) -> str:
    """Source address number i, spread over 127.0.x.y (x 1..200, y 2..201):
    ephemeral ports are per source address."""
    return f"127.0.{1 + (i // 200) % 200}.{2 + i % 200}"


async def open_tcp(host: str, port: int, src: str | None = None, timeout: float = 5.0, **kw):
    local = (src, 0) if src else None
    return await asyncio.wait_for(
        asyncio.open_connection(host, port, local_addr=local, limit=1 << 20, **kw), timeout
    )


async def open_tls(port: int, ctx: ssl.SSLContext, src: str | None = None, timeout: float = 10.0):
    return await open_tcp(
        "127.0.0.1",
        port,
        src,
        timeout,
        ssl=ctx,
        server_hostname="localhost",
        ssl_handshake_timeout=timeout,
    )


async def read_until_close(reader: asyncio.StreamReader, deadline: float, limit: int = 1 << 20):
    """Read until EOF/reset or `deadline` (loop time). Returns (bytes,
    how: 'eof' | 'reset' | 'timeout')."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return bytes(out), "timeout"
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except asyncio.TimeoutError:
            return bytes(out), "timeout"
        except (ConnectionError, OSError, ssl.SSLError):
            return bytes(out), "reset"
        if not chunk:
            return bytes(out), "eof"
        if len(out) < limit:
            out += chunk


async def wait_closed(reader: asyncio.StreamReader, timeout: float):
    """Seconds until the peer closed (EOF or reset), or None at the timeout."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    _, how = await read_until_close(reader, t0 + timeout, limit=0)
    return None if how == "timeout" else loop.time() - t0


def close_writer(w):
    try:
        w.transport.abort()
    except Exception:
        pass


async def read_exactly(reader, n: int, timeout: float):
    return await asyncio.wait_for(reader.readexactly(n), timeout)


async def ws_upgrade(port: int, src: str | None = None, ctx=None, timeout: float = 5.0):
    """A WebSocket upgrade on `port`: (reader, writer) after the 101."""
    if ctx:
        r, w = await open_tls(port, ctx, src, timeout)
    else:
        r, w = await open_tcp("127.0.0.1", port, src, timeout)
    w.write(upgrade_request())
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
    if not head.startswith(b"HTTP/1.1 101"):
        close_writer(w)
        raise RuntimeError(f"upgrade refused: {head[:40]!r}")
    return r, w


async def ws_read_frame(reader, timeout: float):
    """One server frame (opcode, payload), within `timeout`."""
    b = await read_exactly(reader, 2, timeout)
    length = b[1] & 0x7F
    if length == 126:
        length = struct.unpack(">H", await read_exactly(reader, 2, timeout))[0]
    elif length == 127:
        length = struct.unpack(">Q", await read_exactly(reader, 8, timeout))[0]
    key = await read_exactly(reader, 4, timeout) if b[1] & 0x80 else None
    payload = await read_exactly(reader, length, timeout)
    if key:
        payload = mask_bytes(payload, key)
    return b[0] & 0x0F, payload


async def ws_mqtt_connect(port: int, client_id: str, src=None, ctx=None, timeout: float = 5.0):
    """Upgrade, send CONNECT in a binary frame, read the CONNACK frame."""
    r, w = await ws_upgrade(port, src, ctx, timeout)
    w.write(ws_frame(OP_BINARY, connect_packet(client_id)))
    op, payload = await ws_read_frame(r, timeout)
    if op != OP_BINARY or connack_code(payload) != 0:
        close_writer(w)
        raise RuntimeError(f"no CONNACK over WebSocket: opcode {op} {payload[:8]!r}")
    return r, w


# ---------------------------------------------------------------- HTTP


async def http_request(port: int, raw: bytes, timeout: float = 2.0, src: str | None = None):
    """Send a raw HTTP request, read to close: (status, headers+body text,
    seconds). Status 0 when the connection closed without an answer."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r, w = await open_tcp("127.0.0.1", port, src, timeout)
    try:
        w.write(raw)
        data, _ = await read_until_close(r, t0 + timeout)
    finally:
        close_writer(w)
    text = data.decode("latin-1")
    parts = text.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, text, loop.time() - t0


def http_get(path: str, headers: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()


def now() -> float:
    return time.monotonic()
