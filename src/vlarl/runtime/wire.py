"""vlarl's wire format: authenticated, framed messages that can only carry data.

Every socket vlarl opens (actor <-> learner, learner <-> robot) speaks this and nothing else.
Nothing read from a socket is ever unpickled or executed.

A connection starts with a mutual HMAC-SHA256 challenge on a shared secret; no message is
read before it succeeds::

    server -> client   MAGIC | server nonce (32)
    client -> server   MAGIC | client nonce (32) | HMAC(secret, "client" | server nonce | client nonce)
    server -> client   "OK" | HMAC(secret, "server" | client nonce | server nonce)     or "NO"

Both nonces are fresh, so a recorded handshake cannot be replayed, and the client learns that
the server holds the secret too. Then each message is one frame::

    u32 header bytes | u64 array bytes | header: UTF-8 JSON | arrays, in header order, C order, little-endian

    header = {"v": 1, "kind": "...", "body": <JSON data>, "arrays": [[name, dtype, shape], ...]}

``body`` is the message's data as JSON; where it held an array, the body has
``{"$array": name}`` and the bytes follow the header. The receiver checks both sizes against
its ceilings before allocating anything, then the kind against the kinds it accepts and the
arrays' total against that kind's ceiling; what the body must contain is checked by the receiver's
validators (``vlarl.runtime.transport``, ``vlarl.runtime.bridge``).

Optional TLS (``server_tls``/``client_tls``) wraps the socket before the handshake, for
networks where someone could read or alter traffic; without it the secret is never sent,
but the messages themselves are neither private nor protected from an on-path attacker.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import math
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlarl.errors import VlarlError

WIRE_VERSION = 1
MAGIC = b"VLARL\x00W" + bytes([WIRE_VERSION])
NONCE_BYTES = 32
MAX_HEADER_BYTES = 1 << 20  # a header lists names and shapes, never the data itself
PREFIX = struct.Struct("<IQ")  # header bytes, array bytes: both checked before anything is allocated
DTYPES = frozenset({"bool", "uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32", "float64"})


class WireError(VlarlError):
    """A peer broke the protocol: bad framing, an unexpected kind, a size over the ceiling."""


class AuthError(WireError):
    """The handshake failed: a wrong secret, or not a vlarl peer."""


class PeerClosed(WireError):
    """The peer closed the connection."""


class Silent(WireError):
    """Nothing arrived in time (no byte of a message)."""


@dataclass
class Message:
    kind: str
    body: Any


# --- encoding ---------------------------------------------------------------------------------
_NAME_OF = {np.dtype(n): n for n in DTYPES}  # dtype.name is slow to compute; a step sends several arrays
_ITEMSIZE = {n: np.dtype(n).itemsize for n in DTYPES}
_LITTLE = {n: np.dtype(n).newbyteorder("<") for n in DTYPES}
_SCALARS = (type(None), bool, str, int, float)
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _pack(obj: Any, path: str, arrays: list[tuple[str, str, np.ndarray]]) -> Any:
    """JSON data with every array replaced by a reference; anything else is refused by name."""
    kind = type(obj)
    if kind in _SCALARS:
        return obj
    if kind is dict or isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if type(key) is not str:
                raise WireError(f"cannot send {path or 'the message'}: key {key!r} is not a string")
            if key == "$array":
                raise WireError(f"cannot send {path or 'the message'}: the key '$array' is reserved")
            out[key] = _pack(value, f"{path}/{key}" if path else key, arrays)
        return out
    if kind is np.ndarray or isinstance(obj, np.ndarray) or _is_tensor(obj):
        name = path or "."
        dtype, arr = _as_array(obj, name)
        arrays.append((name, dtype, arr))
        return {"$array": name}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (list, tuple)):
        return [_pack(v, f"{path}/{i}" if path else str(i), arrays) for i, v in enumerate(obj)]
    if isinstance(obj, (bool, int, float, str)):  # subclasses (IntEnum, ...)
        return obj
    raise WireError(f"cannot send {path or 'the message'}: {type(obj).__name__} is not data "
                    "(JSON values and arrays only)")


def _is_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def _as_array(obj: Any, path: str) -> tuple[str, np.ndarray]:
    """(dtype name, little-endian C-ordered array)."""
    if not isinstance(obj, np.ndarray):  # a torch tensor
        obj = obj.detach().cpu()
        if str(obj.dtype) == "torch.bfloat16":
            raise WireError(f"cannot send {path}: bfloat16 tensors must be sent as float32")
        obj = obj.numpy()
    arr = obj if obj.flags.c_contiguous else obj.copy(order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
    name = _NAME_OF.get(arr.dtype)
    if name is None:  # big-endian, or not a dtype the format carries
        name = _NAME_OF.get(arr.dtype.newbyteorder("="))
        if name is None:
            raise WireError(f"cannot send {path}: dtype {arr.dtype} is not one of {sorted(DTYPES)}")
        arr = arr.astype(np.dtype(name).newbyteorder("<"))
    return name, arr


def encode(kind: str, body: Any = None) -> list[bytes | memoryview]:
    """The frame for one message, as buffers to send in order."""
    arrays: list[tuple[str, str, np.ndarray]] = []
    packed = _pack(body, "", arrays)
    header = _ENCODER.encode({"v": WIRE_VERSION, "kind": kind, "body": packed,
                              "arrays": [[n, d, list(a.shape)] for n, d, a in arrays]}).encode()
    if len(header) > MAX_HEADER_BYTES:
        raise WireError(f"message {kind!r}: header of {len(header)} bytes is over {MAX_HEADER_BYTES}")
    data = sum(a.nbytes for _, _, a in arrays)
    return [PREFIX.pack(len(header), data) + header, *(a.reshape(-1).view(np.uint8).data for _, _, a in arrays if a.size)]


def send(sock: socket.socket, kind: str, body: Any = None) -> None:
    """Send one message (the caller keeps one sender per socket at a time)."""
    parts = encode(kind, body)
    total = sum(len(p) for p in parts)
    if total <= 1 << 16:  # one segment: small messages (steps, heartbeats) go out in one packet
        sock.sendall(b"".join(bytes(p) for p in parts))
    else:
        for part in parts:
            sock.sendall(part)


# --- decoding ---------------------------------------------------------------------------------
def recv_exact(sock: socket.socket, n: int, deadline: float) -> bytearray:
    """``n`` bytes, or WireError past ``deadline`` (monotonic), PeerClosed at EOF. The socket's
    own timeout bounds each wait, so a peer trickling bytes cannot stretch the deadline far."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if time.monotonic() > deadline:
            if got == 0:
                raise Silent(f"nothing arrived in time ({n} bytes expected)")
            raise WireError(f"timed out with {got} of {n} bytes read")
        try:
            k = sock.recv_into(view[got:], n - got)
        except TimeoutError:
            continue  # the deadline check decides
        if k == 0:
            raise PeerClosed("connection closed by the peer" + (f" after {got} of {n} bytes" if got else ""))
        got += k
    return buf


def readable(sock: socket.socket, timeout: float) -> bool:
    """Whether a message has started arriving within ``timeout`` seconds."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    ready, _, _ = select.select([sock], [], [], max(0.0, timeout))
    return bool(ready)


def recv(sock: socket.socket, limits: Mapping[str, int], timeout_s: float, wait_s: float | None = None) -> Message:
    """Read one message whose kind is a key of ``limits`` (value: its ceiling on array bytes).
    It must start within ``wait_s`` (default ``timeout_s``; ``Silent`` otherwise) and the whole
    frame arrive within ``timeout_s`` of its start."""
    start = time.monotonic()
    prefix = recv_exact(sock, PREFIX.size, start + (timeout_s if wait_s is None else wait_s))
    deadline = time.monotonic() + timeout_s
    header_size, data_size = PREFIX.unpack(prefix)
    if header_size > MAX_HEADER_BYTES:
        raise WireError(f"header of {header_size} bytes is over the ceiling of {MAX_HEADER_BYTES}")
    if data_size > max(limits.values()):
        raise WireError(f"message of {data_size} array bytes is over every ceiling here (at most {max(limits.values())})")
    frame = recv_exact(sock, header_size + data_size, deadline)  # one read for header and arrays
    try:
        header = json.loads(frame[:header_size].decode())
    except (UnicodeDecodeError, ValueError) as err:
        raise WireError(f"header is not JSON ({err})") from None
    if not isinstance(header, dict) or set(header) != {"v", "kind", "body", "arrays"}:
        raise WireError("header is not a vlarl message header")
    if header["v"] != WIRE_VERSION:
        raise WireError(f"wire version {header['v']!r}; this side speaks {WIRE_VERSION}")
    kind = header["kind"]
    if not isinstance(kind, str) or kind not in limits:
        raise WireError(f"message kind {kind!r} is not accepted here (expected one of {sorted(limits)})")
    specs = _array_specs(header["arrays"])
    total = sum(nbytes for _, _, _, nbytes in specs)
    if total > limits[kind]:
        raise WireError(f"message {kind!r} carries {total} bytes, over its ceiling of {limits[kind]}")
    if total != data_size:
        raise WireError(f"message {kind!r} announced {data_size} array bytes but lists {total}")
    arrays, offset = {}, header_size
    for name, dtype, shape, nbytes in specs:
        arrays[name] = np.frombuffer(frame, dtype=_LITTLE[dtype], count=nbytes // _ITEMSIZE[dtype],
                                     offset=offset).reshape(shape)
        offset += nbytes
    return Message(kind, _unpack(header["body"], arrays))


def _array_specs(raw: Any) -> list[tuple[str, str, tuple[int, ...], int]]:
    if type(raw) is not list:
        raise WireError("header 'arrays' is not a list")
    specs, names = [], set()
    for item in raw:
        if (type(item) is not list or len(item) != 3 or type(item[0]) is not str or item[1] not in DTYPES
                or type(item[2]) is not list or not all(type(d) is int and 0 <= d < 2**31 for d in item[2])):
            raise WireError(f"header array entry {str(item)[:80]!r} is not [name, dtype, shape]")
        if item[0] in names:
            raise WireError(f"header names array {item[0]!r} twice")
        names.add(item[0])
        shape = tuple(item[2])
        specs.append((item[0], item[1], shape, math.prod(shape) * _ITEMSIZE[item[1]]))
    return specs


def _unpack(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    kind = type(obj)
    if kind is dict:
        if "$array" in obj and len(obj) == 1:
            name = obj["$array"]
            if not isinstance(name, str) or name not in arrays:
                raise WireError(f"body refers to array {name!r}, which the header does not list")
            return arrays[name]
        return {k: _unpack(v, arrays) if type(v) in _CONTAINERS else v for k, v in obj.items()}
    if kind is list:
        return [_unpack(v, arrays) if type(v) in _CONTAINERS else v for v in obj]
    return obj


_CONTAINERS = (dict, list)


# --- handshake --------------------------------------------------------------------------------
def _mac(secret: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, role + first + second, hashlib.sha256).digest()


def server_handshake(sock: socket.socket, secret: bytes, timeout_s: float) -> None:
    """Prove the client holds ``secret`` (AuthError otherwise), then prove we do."""
    deadline = time.monotonic() + timeout_s
    server_nonce = os.urandom(NONCE_BYTES)
    sock.sendall(MAGIC + server_nonce)
    reply = recv_exact(sock, len(MAGIC) + NONCE_BYTES + 32, deadline)
    magic, client_nonce, mac = (bytes(reply[:len(MAGIC)]), bytes(reply[len(MAGIC):-32]), bytes(reply[-32:]))
    if magic != MAGIC:
        raise AuthError("not a vlarl client (or another wire version)")
    if not hmac.compare_digest(mac, _mac(secret, b"client", server_nonce, client_nonce)):
        try:
            sock.sendall(b"NO")
        except OSError:
            pass
        raise AuthError("wrong secret")
    sock.sendall(b"OK" + _mac(secret, b"server", client_nonce, server_nonce))


def client_handshake(sock: socket.socket, secret: bytes, timeout_s: float) -> None:
    """Answer the server's challenge with ``secret``; check that the server holds it too."""
    deadline = time.monotonic() + timeout_s
    hello = recv_exact(sock, len(MAGIC) + NONCE_BYTES, deadline)
    if bytes(hello[:len(MAGIC)]) != MAGIC:
        raise AuthError("not a vlarl server (or another wire version)")
    server_nonce, client_nonce = bytes(hello[len(MAGIC):]), os.urandom(NONCE_BYTES)
    sock.sendall(MAGIC + client_nonce + _mac(secret, b"client", server_nonce, client_nonce))
    try:
        status = recv_exact(sock, 2, deadline)
    except PeerClosed:
        raise AuthError("the server closed the connection during the handshake") from None
    if status == b"NO":
        raise AuthError("the server refused this secret")
    proof = recv_exact(sock, 32, deadline)
    if status != b"OK" or not hmac.compare_digest(bytes(proof), _mac(secret, b"server", client_nonce, server_nonce)):
        raise AuthError("the server does not hold this secret")


# --- sockets ----------------------------------------------------------------------------------
@dataclass
class TLSConfig:
    """Certificate paths for TLS; empty: plain TCP. The server needs ``cert`` and ``key``; the
    client verifies the server against ``ca`` (a self-signed server certificate can be its own
    CA) and checks its name when ``server_name`` is given."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    server_name: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.ca)


def server_tls(tls: TLSConfig | None) -> ssl.SSLContext | None:
    if tls is None or not tls.enabled:
        return None
    if not (tls.cert and tls.key):
        raise VlarlError("tls: a server needs both tls.cert and tls.key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as err:
        raise VlarlError(f"tls: cannot load certificate {tls.cert} / key {tls.key}: {err}") from None
    return ctx


def client_tls(tls: TLSConfig | None) -> ssl.SSLContext | None:
    if tls is None or not tls.enabled:
        return None
    if not tls.ca:
        raise VlarlError("tls: a client needs tls.ca, the certificate (or CA) to verify the server with")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = tls.server_name is not None
    try:
        ctx.load_verify_locations(tls.ca)
    except (OSError, ssl.SSLError) as err:
        raise VlarlError(f"tls: cannot load CA {tls.ca}: {err}") from None
    return ctx


def no_delay(sock: socket.socket) -> socket.socket:
    """Send small messages at once: Nagle's algorithm holding a frame's tail for the delayed
    ACK of its head costs ~40 ms a step on loopback."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect(address: tuple[str, int], secret: bytes, timeout_s: float, tls: TLSConfig | None = None) -> socket.socket:
    """A connected, authenticated socket (its timeout set to ``timeout_s``)."""
    sock = socket.create_connection(address, timeout=timeout_s)
    try:
        no_delay(sock)
        ctx = client_tls(tls)
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname=tls.server_name if tls else None)
        client_handshake(sock, secret, timeout_s)
    except BaseException:
        sock.close()
        raise
    return sock


def accept_peer(sock: socket.socket, secret: bytes, timeout_s: float, tls: ssl.SSLContext | None) -> socket.socket:
    """TLS (if configured) and the handshake on a freshly accepted socket, within ``timeout_s``;
    run it off the accept loop. Returns the (possibly wrapped) socket."""
    sock.settimeout(timeout_s)
    no_delay(sock)
    if tls is not None:
        try:
            sock = tls.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as err:
            raise AuthError(f"TLS handshake failed ({err})") from None
    server_handshake(sock, secret, timeout_s)
    return sock


def close_quietly(sock: socket.socket | None) -> None:
    """Shut a socket down (waking a thread blocked on it) and close it."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class ThrottledLog:
    """Logs the first ``burst`` lines, then one in ``every``, each later one with the count: a
    flood of bad peers must not flood the log too. ``count`` is how many were reported."""

    def __init__(self, log: Callable[[str], None], burst: int = 20, every: int = 100) -> None:
        self.log, self.burst, self.every, self.count = log, burst, every, 0
        self._lock = threading.Lock()

    def __call__(self, msg: str) -> None:
        with self._lock:
            self.count += 1
            n = self.count
        if n <= self.burst or n % self.every == 0:
            self.log(msg if n <= self.burst else f"{msg} ({n} refused so far)")


class Acceptor:
    """The accept loop of both servers. It only accepts: each connection goes to
    ``handle(sock, peer)`` on a thread of its own, which calls ``admitted(sock)`` once its
    handshake is over. At most ``max_pending`` connections wait for that at once; the oldest
    is closed for a newcomer (``on_evict`` is told), so idle sockets cannot lock a legitimate
    peer out and a flood cannot exhaust the server."""

    def __init__(self, listener: socket.socket, handle: Callable[[socket.socket, str], None], max_pending: int,
                 on_evict: Callable[[], None], name: str) -> None:
        self.listener, self.handle, self.max_pending, self.on_evict, self.name = (
            listener, handle, max_pending, on_evict, name)
        listener.settimeout(0.5)  # the loop notices close() within this
        self.closing = threading.Event()
        self._pending: collections.OrderedDict[int, socket.socket] = collections.OrderedDict()
        self._lock = threading.Lock()

    def run(self, keep_going: Callable[[], bool] = lambda: True) -> None:
        while not self.closing.is_set() and keep_going():
            try:
                sock, addr = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.closing.is_set():
                    return
                time.sleep(0.01)  # e.g. out of file descriptors: the connected peers are served on
                continue
            with self._lock:
                evicted = len(self._pending) >= self.max_pending
                if evicted:
                    close_quietly(self._pending.popitem(last=False)[1])
                self._pending[id(sock)] = sock
            if evicted:
                self.on_evict()
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)
            threading.Thread(target=self.handle, args=(sock, peer), name=self.name, daemon=True).start()

    def admitted(self, sock: socket.socket) -> None:
        """``sock``'s handshake is over (passed or not): it no longer counts as pending."""
        with self._lock:
            self._pending.pop(id(sock), None)

    def close(self) -> None:
        self.closing.set()
        close_quietly(self.listener)
        with self._lock:
            pending = list(self._pending.values())
        for sock in pending:
            close_quietly(sock)
