"""Actor <-> learner messaging over TCP, in vlarl's wire format (``vlarl.runtime.wire``).

The learner listens; each actor connects, proves it holds the run's secret (``RUN/secret``,
drawn at each learner start, see ``vlarl.runtime.secret``), says hello, then sends finished
episodes and receives weights. Both sides send a heartbeat every ``heartbeat_s`` and treat a
peer silent for ``timeout_s`` as gone (a stalled process holds its socket open, so a closed
socket is not the only sign of death). Nothing on the actor's control loop ever waits on the
network: a background thread does all sending and receiving, and the loop only touches
bounded, non-blocking queues whose drops are counted.

Messages (kind: body), data only:

    actor -> learner   hello:   {"actor": id, "pid": pid}
                       episode: {"arrays": {key: array}, "intervened": bool[T], "success", "true_success",
                                 "weights_version"}
                       stats:   {name: number}        also serves as the actor's heartbeat
    learner -> actor   weights: {"version": int, "payload": {"state_dict": {name: array}, ...}}
                       heartbeat, stop, refused: {"reason": str}

The learner runs each handshake on its own thread with a deadline (the accept loop only
accepts), keeps at most ``max_pending`` unauthenticated connections (the oldest is dropped
for a new one), binds an actor id to its connection (a second hello for a live id is refused,
not obeyed), and checks every episode against the env's spec (keys, dtypes, shapes, lengths,
finite values) before it reaches the inbox. A peer that breaks any of this is logged with its
address and disconnected; the others are served on.
"""

from __future__ import annotations

import collections
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlarl.errors import VlarlError
from vlarl.fileio import atomic_write_text
from vlarl.ranges import ranged
from vlarl.runtime import wire
from vlarl.runtime.secret import actor_secret
from vlarl.runtime.wire import TLSConfig, WireError


@dataclass
class TransportConfig:
    host: str = "127.0.0.1"  # "0.0.0.0" to accept actors from other machines (Ray)
    port: int = ranged(0, ge=0, le=65535)  # 0: a free port, kept across learner restarts (see learner.json)
    heartbeat_s: float = ranged(1.0, gt=0)
    timeout_s: float = ranged(5.0, gt=0)  # a peer silent this long is reported and dropped
    # a connection that has not authenticated and said hello by then is dropped
    handshake_timeout_s: float = ranged(5.0, gt=0)
    queue_episodes: int = ranged(64, ge=1)  # bounded queues (episodes) on both sides; overflow is dropped and counted
    max_pending: int = ranged(32, ge=1)  # unauthenticated connections held at once; the oldest goes for a new one
    max_message_mb: float = ranged(0.0, ge=0)  # ceiling on one message's arrays; 0: derived from the env's spec
    tls: TLSConfig = field(default_factory=TLSConfig)  # cert + key (learner), ca (actors): TLS on the link


class BoundedQueue:
    """A non-blocking FIFO: ``put`` never waits; when full the oldest item is dropped and counted."""

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self.maxsize = maxsize
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._lock:
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)

    def get(self) -> Any | None:
        with self._lock:
            return self._items.popleft() if self._items else None

    def drain(self) -> list[Any]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items

    def putleft(self, item: Any) -> None:
        """Give an item back to the front (a send that failed), dropping the newest if full."""
        with self._lock:
            if len(self._items) >= self.maxsize:
                self._items.pop()
                self.dropped += 1
            self._items.appendleft(item)

    def __len__(self) -> int:
        return len(self._items)


def address_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / "learner.json"


def read_address(run_dir: str | Path) -> tuple[str, int] | None:
    """The learner's address as it wrote it, or None before it has started."""
    path = address_file(run_dir)
    try:
        d = json.loads(path.read_text())
        return str(d["host"]), int(d["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host




# --- what an episode must look like -----------------------------------------------------------
STEP_FLAGS = ("terminated", "truncated", "is_success")
EPISODE_KEYS = frozenset({"arrays", "intervened", "success", "true_success", "weights_version"})


@dataclass(frozen=True)
class EpisodeSpec:
    """The episodes a learner accepts: its env's state and action sizes, camera images (uint8),
    a frozen encoder's tokens of them (float16, ``features``: camera -> (cells, channels)), and
    the longest episode the env can produce."""

    state_dim: int
    action_dim: int
    cameras: Mapping[str, tuple[int, ...]] | None
    max_length: int
    features: Mapping[str, tuple[int, ...]] | None = None

    def frame_bytes(self) -> int:
        return (4 * self.state_dim + sum(math.prod(s) for s in (self.cameras or {}).values())
                + sum(2 * math.prod(s) for s in (self.features or {}).values()))

    def max_bytes(self) -> int:
        """The largest legitimate episode message's arrays (with room for the step columns)."""
        steps = self.max_length * (4 * self.action_dim + 4 + len(STEP_FLAGS) + 1)
        return (self.max_length + 1) * self.frame_bytes() + steps + 4096


def validate_episode(body: Any, spec: EpisodeSpec) -> dict[str, Any]:
    """The episode payload as the learner uses it, or WireError saying what is wrong."""
    if not isinstance(body, dict) or set(body) != EPISODE_KEYS:
        raise WireError(f"episode fields {sorted(body) if isinstance(body, dict) else type(body).__name__}, "
                        f"expected {sorted(EPISODE_KEYS)}")
    arrays = body["arrays"]
    if not isinstance(arrays, dict):
        raise WireError("episode 'arrays' is not a mapping of arrays")
    images = {f"observation.images.{c}": shape for c, shape in (spec.cameras or {}).items()}
    tokens = {f"observation.features.{c}": shape for c, shape in (spec.features or {}).items()}
    expected = {"observation.state", "action", "reward", *STEP_FLAGS, *images, *tokens}
    if set(arrays) != expected:
        raise WireError(f"episode arrays {sorted(arrays)}, expected {sorted(expected)}")
    action = arrays["action"]
    if not isinstance(action, np.ndarray) or action.ndim != 2:
        raise WireError("episode 'action' is not a [T, action_dim] array")
    t = action.shape[0]
    if not 1 <= t <= spec.max_length:
        raise WireError(f"episode of {t} steps; the env's episodes have 1 to {spec.max_length}")
    shapes = {"observation.state": ("float32", (t + 1, spec.state_dim)), "action": ("float32", (t, spec.action_dim)),
              "reward": ("float32", (t,)), **{k: ("bool", (t,)) for k in STEP_FLAGS},
              **{k: ("uint8", (t + 1, *shape)) for k, shape in images.items()},
              **{k: ("float16", (t + 1, *shape)) for k, shape in tokens.items()}}
    for key, (dtype, shape) in {**shapes, "intervened": ("bool", (t,))}.items():
        arr = body["intervened"] if key == "intervened" else arrays[key]
        if not isinstance(arr, np.ndarray) or arr.dtype.name != dtype or arr.shape != shape:
            got = f"{arr.dtype.name}{list(arr.shape)}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise WireError(f"episode {key!r} is {got}, expected {dtype}{list(shape)}")
        if dtype.startswith("float") and not np.isfinite(arr).all():
            raise WireError(f"episode {key!r} holds non-finite values")
    for key in ("success", "true_success"):
        if not isinstance(body[key], bool):
            raise WireError(f"episode {key!r} is not true/false")
    if not isinstance(body["weights_version"], int) or isinstance(body["weights_version"], bool):
        raise WireError("episode 'weights_version' is not an integer")
    return {"arrays": arrays, "intervened": body["intervened"], "success": body["success"],
            "true_success": body["true_success"], "weights_version": body["weights_version"]}


def validate_stats(body: Any) -> dict[str, Any]:
    if (not isinstance(body, dict) or len(body) > 64
            or not all(isinstance(v, (int, float, bool)) or v is None for v in body.values())):
        raise WireError("stats must be a mapping of at most 64 names to numbers")
    return body


def weights_spec(state_dict: Mapping[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) of a weights payload as it travels (bfloat16 goes as float32)."""
    return {k: (_wire_dtype(v), tuple(v.shape)) for k, v in state_dict.items()}


def _wire_dtype(tensor: Any) -> str:
    name = str(tensor.dtype).removeprefix("torch.")
    return "float32" if name == "bfloat16" else name


def _to_wire(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Weights payload -> sendable data: tensors that numpy cannot hold go as float32."""
    out = dict(payload)
    if out.get("state_dict") is not None:
        out["state_dict"] = {k: v.float() if str(v.dtype) == "torch.bfloat16" else v
                             for k, v in out["state_dict"].items()}
    return out


def _from_wire(payload: Any, spec: Mapping[str, tuple[str, tuple[int, ...]]] | None) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise WireError("weights payload is not a mapping")
    state = payload.get("state_dict")
    if state is not None:
        if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
            raise WireError("weights 'state_dict' is not a mapping of arrays")
        if spec is not None:
            if set(state) != set(spec):
                raise WireError(f"weights for {len(state)} tensors, expected this policy's {len(spec)} "
                                f"(first difference: {sorted(set(state) ^ set(spec))[:3]})")
            for k, (dtype, shape) in spec.items():
                if state[k].dtype.name != dtype or state[k].shape != shape:
                    raise WireError(f"weights {k!r} are {state[k].dtype.name}{list(state[k].shape)}, "
                                    f"expected {dtype}{list(shape)}")
        import torch

        payload = {**payload, "state_dict": {k: torch.from_numpy(v) for k, v in state.items()}}
    return payload


# --- learner side ---------------------------------------------------------------------------
class LearnerServer:
    """Accepts actors, collects their episodes into one bounded inbox, pushes weights.

    ``inbox`` holds ``(actor_id, payload)`` episodes; ``log`` gets human-readable lines
    (joins, losses, timeouts, refused peers with their address). Weights are kept as "latest
    only" per actor: a slow actor skips versions instead of queueing them. Every episode is
    checked against ``episode_spec`` before it reaches the inbox.
    """

    def __init__(self, cfg: TransportConfig, run_dir: str | Path, secret: bytes, episode_spec: EpisodeSpec,
                 max_actors: int | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.cfg, self.log, self.secret = cfg, log, secret
        self.episode_spec, self.max_actors = episode_spec, max_actors
        self.refusals = wire.ThrottledLog(log)  # unauthenticated peers may flood; an authenticated one is logged in full
        self.refused = 0  # connections and messages refused, for tests and reports
        self.inbox = BoundedQueue(cfg.queue_episodes)
        self.actor_stats: dict[int, dict[str, Any]] = {}
        self._weights: tuple[int, Any] | None = None
        self._weights_cv = threading.Condition()
        self._conns: dict[int, socket.socket] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._tls = wire.server_tls(cfg.tls)
        episode_limit = int(cfg.max_message_mb * 2**20) if cfg.max_message_mb > 0 else episode_spec.max_bytes()
        self.limits = {"episode": episode_limit, "stats": 0}
        port = cfg.port
        if port == 0 and (prev := read_address(run_dir)) is not None:
            port = prev[1]  # actors of the previous learner are retrying this address
        try:
            self._listener = socket.create_server((cfg.host, port), backlog=128)
        except OSError as err:
            if cfg.port == 0 and port != 0:  # the old port is taken by something else
                self._listener = socket.create_server((cfg.host, 0), backlog=128)
            else:
                raise VlarlError(f"runtime.transport: cannot listen on {cfg.host}:{port}: {err}") from err
        self.host, self.port = cfg.host, self._listener.getsockname()[1]
        atomic_write_text(address_file(run_dir), json.dumps({"host": self.host, "port": self.port,
                                                             "pid": os.getpid()}))
        self._acceptor = wire.Acceptor(self._listener, self._serve, cfg.max_pending, self._evicted, "vlarl-actor-conn")
        self._closing = self._acceptor.closing  # set by close(): every thread of this server ends
        threading.Thread(target=self._acceptor.run, name="vlarl-accept", daemon=True).start()

    @property
    def connected(self) -> list[int]:
        return sorted(self._conns)


    def publish(self, version: int, payload: Mapping[str, Any]) -> None:
        """Make new weights the latest; every connected actor gets them soon after.
        ``payload``: ``{"state_dict": {name: tensor}, ...JSON values}``."""
        with self._weights_cv:
            self._weights = (version, _to_wire(payload))
            self._weights_cv.notify_all()

    def stop_actors(self) -> None:
        """Ask every connected actor to finish (used at the end of a run)."""
        self._stopping = True
        with self._weights_cv:
            self._weights_cv.notify_all()

    def close(self) -> None:
        self._acceptor.close()
        with self._weights_cv:
            self._weights_cv.notify_all()
        with self._lock:
            socks = list(self._conns.values())
        for sock in socks:
            wire.close_quietly(sock)

    # --- threads --------------------------------------------------------------------------
    def _evicted(self) -> None:
        self.refused += 1
        self.refusals(f"too many connections still handshaking (max_pending {self.cfg.max_pending}): dropped the oldest")

    def _refuse(self, sock: socket.socket, peer: str, why: str, tell: bool = False) -> None:
        self.refused += 1
        self.refusals(f"refused {peer}: {why}")
        if tell:
            try:
                wire.send(sock, "refused", {"reason": why})
            except (OSError, WireError):
                pass
        wire.close_quietly(sock)

    def _admit(self, sock: socket.socket, peer: str) -> tuple[socket.socket, int] | None:
        """Handshake and hello within the deadline; the authenticated socket and actor id."""
        try:
            sock = wire.accept_peer(sock, self.secret, self.cfg.handshake_timeout_s, self._tls)
            hello = wire.recv(sock, {"hello": 0}, self.cfg.handshake_timeout_s).body
            if not (isinstance(hello, dict) and isinstance(hello.get("actor"), int)
                    and not isinstance(hello["actor"], bool) and isinstance(hello.get("pid"), int)):
                raise WireError(f"hello is not {{actor: int, pid: int}}: {str(hello)[:80]}")
        except (WireError, OSError, ValueError) as err:
            self._refuse(sock, peer, f"{type(err).__name__}: {err}")
            return None
        actor = hello["actor"]
        if self.max_actors is not None and not 0 <= actor < self.max_actors:
            self._refuse(sock, peer, f"actor id {actor} is not one of this run's 0..{self.max_actors - 1}", tell=True)
            return None
        with self._lock:
            live = actor in self._conns
            if not live:
                self._conns[actor] = sock
        if live:  # identity is bound to the first connection until it ends or goes silent
            self._refuse(sock, peer, f"actor {actor} is already connected; a second hello is not obeyed", tell=True)
            return None
        self.log(f"actor {actor} joined (pid {hello['pid']}, {peer})")
        return sock, actor

    def _serve(self, raw: socket.socket, peer: str) -> None:
        try:
            admitted = self._admit(raw, peer)
        finally:
            self._acceptor.admitted(raw)
        if admitted is None:
            return
        sock, actor = admitted
        sock.settimeout(self.cfg.timeout_s)
        writer = threading.Thread(target=self._write_loop, args=(actor, sock), daemon=True)
        writer.start()
        last_heard = time.monotonic()
        reason = "closed"
        try:
            while not self._closing.is_set():
                if wire.readable(sock, self.cfg.heartbeat_s):
                    msg = wire.recv(sock, self.limits, self.cfg.timeout_s)
                    last_heard = time.monotonic()
                    if msg.kind == "episode":
                        episode = validate_episode(msg.body, self.episode_spec)
                        self.inbox.put((actor, {"actor": actor, **episode}))
                    else:
                        self.actor_stats[actor] = {**validate_stats(msg.body), "received": time.time()}
                elif time.monotonic() - last_heard > self.cfg.timeout_s:
                    reason = f"silent for {time.monotonic() - last_heard:.1f} s (stalled or dead)"
                    break
        except wire.PeerClosed:
            reason = "connection closed"
        except WireError as err:  # a message that breaks the protocol: refuse it, drop this actor only
            self.refused += 1
            reason = f"refused its message ({err}); connection closed"
            self.log(f"actor {actor} ({peer}) {reason}")
        except Exception as err:  # noqa: BLE001 - a broken link drops this actor only
            reason = f"connection lost: {type(err).__name__}"
        finally:
            with self._lock:
                if self._conns.get(actor) is sock:
                    del self._conns[actor]
            wire.close_quietly(sock)
        if not (self._closing.is_set() or self._stopping) and not reason.startswith("refused"):
            self.log(f"actor {actor} disconnected: {reason}")

    def _write_loop(self, actor: int, sock: socket.socket) -> None:
        """The only sender on ``sock``: newest weights, heartbeats, and at the end "stop"."""
        sent_version = -1
        while not self._closing.is_set() and self._conns.get(actor) is sock:
            with self._weights_cv:
                self._weights_cv.wait(self.cfg.heartbeat_s)
                weights = self._weights
            try:
                if self._stopping:
                    wire.send(sock, "stop")
                    return
                if weights is not None and weights[0] != sent_version:
                    wire.send(sock, "weights", {"version": weights[0], "payload": weights[1]})
                    sent_version = weights[0]
                else:
                    wire.send(sock, "heartbeat")
            except (OSError, WireError):
                wire.close_quietly(sock)  # the reader sees it and reports
                return


# --- actor side -----------------------------------------------------------------------------
class ActorClient:
    """The actor's link to the learner: ``send_episode`` and ``latest_weights`` never block.

    A background thread connects (and reconnects, forever, with the address and secret re-read
    from the run directory so a restarted learner is found), sends queued episodes and stats,
    and keeps the newest weights, checked against ``weights_spec`` (this policy's tensor names,
    dtypes and shapes) when given. While the learner is away, episodes wait in a bounded outbox.
    """

    def __init__(self, actor_id: int, run_dir: str | Path, cfg: TransportConfig,
                 address: tuple[str, int] | None = None, log: Callable[[str], None] = print,
                 secret: bytes | None = None,
                 weights_spec: Mapping[str, tuple[str, tuple[int, ...]]] | None = None) -> None:
        self.actor_id, self.run_dir, self.cfg, self.log = actor_id, Path(run_dir), cfg, log
        self._address, self._secret, self.weights_spec = address, secret, weights_spec
        weights_limit = sum(math.prod(shape) * np.dtype(dtype).itemsize
                            for dtype, shape in weights_spec.values()) + (1 << 16) if weights_spec else 1 << 30
        if cfg.max_message_mb > 0:
            weights_limit = int(cfg.max_message_mb * 2**20)
        self.limits = {"weights": weights_limit, "heartbeat": 0, "stop": 0, "refused": 0}
        self.outbox = BoundedQueue(cfg.queue_episodes)
        self._weights: tuple[int, Any] | None = None
        self._stats: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.stop_requested = threading.Event()
        self._closing = threading.Event()
        self.connected = False
        self.last_contact = time.monotonic()
        self.disconnects = 0
        self._last_problem = ""
        self._thread = threading.Thread(target=self._run, name="vlarl-actor-link", daemon=True)
        self._thread.start()

    def send_episode(self, payload: dict[str, Any]) -> None:
        self.outbox.put(payload)

    def set_stats(self, stats: dict[str, Any]) -> None:
        with self._lock:
            self._stats = dict(stats)

    def latest_weights(self) -> tuple[int, Any] | None:
        """The newest weights not yet taken, or None."""
        with self._lock:
            w, self._weights = self._weights, None
        return w

    def close(self, flush_s: float = 2.0) -> None:
        """Stop the link, first giving queued episodes ``flush_s`` to go out."""
        deadline = time.monotonic() + flush_s
        while len(self.outbox) and self.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        self._closing.set()
        self._thread.join(timeout=self.cfg.timeout_s + self.cfg.handshake_timeout_s)

    # --- thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closing.is_set() and not self.stop_requested.is_set():
            sock = self._connect()
            if sock is None:
                self._closing.wait(min(1.0, self.cfg.heartbeat_s))
                continue
            self.connected = True
            self.last_contact = time.monotonic()
            reason = self._talk(sock)
            self.connected = False
            wire.close_quietly(sock)
            if not self._closing.is_set() and not self.stop_requested.is_set():
                self.disconnects += 1
                self.log(f"actor {self.actor_id}: learner unreachable ({reason}); still acting, "
                         f"buffering up to {self.cfg.queue_episodes} episodes, reconnecting")

    def _problem(self, msg: str) -> None:
        """Say what keeps the link down, once per distinct reason (it retries every second)."""
        if msg != self._last_problem:
            self._last_problem = msg
            self.log(f"actor {self.actor_id}: {msg}")

    def _connect(self) -> socket.socket | None:
        address = self._address or read_address(self.run_dir)
        if address is None:
            return None
        host, port = _connect_host(address[0]), address[1]
        try:
            secret = self._secret if self._secret is not None else actor_secret(self.run_dir)
            sock = wire.connect((host, port), secret, self.cfg.handshake_timeout_s, self.cfg.tls)
        except wire.AuthError as err:
            self._problem(f"learner at {host}:{port} refused the handshake: {err}")
            return None
        except VlarlError as err:  # no secret yet (the learner is starting) or a TLS setting
            self._problem(str(err))
            return None
        except OSError:
            return None
        try:
            sock.settimeout(self.cfg.timeout_s)
            wire.send(sock, "hello", {"actor": self.actor_id, "pid": os.getpid()})
        except OSError:
            wire.close_quietly(sock)
            return None
        self._last_problem = ""
        return sock

    def _talk(self, sock: socket.socket) -> str:
        next_stats = 0.0
        try:
            while not self._closing.is_set():
                item = self.outbox.get()
                if item is not None:
                    try:
                        wire.send(sock, "episode", {k: v for k, v in item.items() if k != "actor"})
                    except OSError:
                        self.outbox.putleft(item)  # not lost: it goes again after reconnecting
                        raise
                now = time.monotonic()
                if now >= next_stats:
                    with self._lock:
                        stats = dict(self._stats)
                    wire.send(sock, "stats", stats)  # also the heartbeat, so sent even when empty
                    next_stats = now + self.cfg.heartbeat_s
                wait = 0.0 if len(self.outbox) else 0.05
                while wire.readable(sock, wait):
                    msg = wire.recv(sock, self.limits, self.cfg.timeout_s)
                    self.last_contact = time.monotonic()
                    if msg.kind == "weights":
                        version, payload = _weights_message(msg.body)
                        with self._lock:
                            self._weights = (version, _from_wire(payload, self.weights_spec))
                    elif msg.kind == "stop":
                        self.stop_requested.set()
                        return "learner asked to stop"
                    elif msg.kind == "refused":
                        reason = msg.body.get("reason") if isinstance(msg.body, dict) else None
                        return f"the learner refused this actor: {reason}"
                    wait = 0.0
                silent = time.monotonic() - self.last_contact
                if silent > self.cfg.timeout_s:
                    return f"silent for {silent:.1f} s (stalled or dead)"
        except Exception as err:  # noqa: BLE001 - whatever breaks the link, the actor keeps acting
            return f"connection lost: {type(err).__name__}: {err}"
        return "closed"


def _weights_message(body: Any) -> tuple[int, Any]:
    if not isinstance(body, dict) or set(body) != {"version", "payload"} or not isinstance(body["version"], int):
        raise WireError("weights message is not {version: int, payload}")
    return body["version"], body["payload"]
