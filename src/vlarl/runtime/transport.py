"""Actor <-> learner messaging over local sockets (``multiprocessing.connection``).

The learner listens; each actor connects, says hello, then sends finished episodes and
receives weights. Both sides send a heartbeat every ``heartbeat_s`` and treat a peer silent
for ``timeout_s`` as gone (a stalled process holds its socket open, so a closed socket is
not the only sign of death). Nothing on the actor's control loop ever waits on the network:
a background thread does all sending and receiving, and the loop only touches bounded,
non-blocking queues whose drops are counted.

Messages are pickled tuples ``(kind, payload)``:

    actor -> learner   ("hello", {"actor": id, "pid": pid})
                       ("episode", {"actor": id, "arrays": {...}, "intervened": bool[T], ...})
                       ("stats", {...})          also serves as the actor's heartbeat
    learner -> actor   ("weights", (version, state_dict))
                       ("heartbeat", None)
                       ("stop", None)
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from vlarl.errors import VlarlError
from vlarl.fileio import atomic_write_text

AUTHKEY = b"vlarl"


def send(conn: Connection, message: tuple[str, Any]) -> None:
    """Plain pickle, not multiprocessing's: torch would otherwise pass tensors as shared-memory
    handles, which a process on another machine (or after a restart) cannot open."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def recv(conn: Connection) -> tuple[str, Any]:
    return pickle.loads(conn.recv_bytes())


@dataclass
class TransportConfig:
    host: str = "127.0.0.1"  # "0.0.0.0" to accept actors from other machines (Ray)
    port: int = 0  # 0: a free port, kept across learner restarts (see learner.json)
    heartbeat_s: float = 1.0
    timeout_s: float = 5.0  # a peer silent this long is reported and dropped
    queue_episodes: int = 64  # bounded queues (episodes) on both sides; overflow is dropped and counted


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
    except (OSError, ValueError):
        return None
    return d["host"], int(d["port"])


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


# --- learner side ---------------------------------------------------------------------------
class LearnerServer:
    """Accepts actors, collects their episodes into one bounded inbox, pushes weights.

    ``inbox`` holds ``(actor_id, payload)`` episodes; ``events`` is a list of human-readable
    lines (joins, losses, timeouts) the learner logs. Weights are kept as "latest only" per
    actor: a slow actor skips versions instead of queueing them.
    """

    def __init__(self, cfg: TransportConfig, run_dir: str | Path, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.log = log
        self.inbox = BoundedQueue(cfg.queue_episodes)
        self.actor_stats: dict[int, dict[str, Any]] = {}
        self._weights: tuple[int, Any] | None = None
        self._weights_cv = threading.Condition()
        self._closing = threading.Event()
        self._conns: dict[int, Connection] = {}
        self._stopping = False
        port = cfg.port
        if port == 0 and (prev := read_address(run_dir)) is not None:
            port = prev[1]  # actors of the previous learner are retrying this address
        try:
            self._listener = Listener((cfg.host, port), authkey=AUTHKEY, backlog=64)
        except OSError as err:
            if cfg.port == 0 and port != 0:  # the old port is taken by something else
                self._listener = Listener((cfg.host, 0), authkey=AUTHKEY, backlog=64)
            else:
                raise VlarlError(f"runtime.transport: cannot listen on {cfg.host}:{port}: {err}") from err
        self.host, self.port = cfg.host, self._listener.address[1]
        atomic_write_text(address_file(run_dir), json.dumps({"host": self.host, "port": self.port,
                                                             "pid": os.getpid()}))
        threading.Thread(target=self._accept_loop, name="vlarl-accept", daemon=True).start()

    @property
    def connected(self) -> list[int]:
        return sorted(self._conns)

    def publish(self, version: int, state_dict: Any) -> None:
        """Make new weights the latest; every connected actor gets them soon after."""
        with self._weights_cv:
            self._weights = (version, state_dict)
            self._weights_cv.notify_all()

    def stop_actors(self) -> None:
        """Ask every connected actor to finish (used at the end of a run)."""
        self._stopping = True
        with self._weights_cv:
            self._weights_cv.notify_all()

    def close(self) -> None:
        self._closing.set()
        with self._weights_cv:
            self._weights_cv.notify_all()
        try:
            self._listener.close()
        except OSError:
            pass
        for conn in list(self._conns.values()):
            try:
                conn.close()
            except OSError:
                pass

    # --- threads --------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                conn = self._listener.accept()
            except (OSError, EOFError):
                if self._closing.is_set():
                    return
                continue  # a client that failed the handshake
            except Exception:  # noqa: BLE001, S112 - an authentication failure must not end accepting
                continue
            threading.Thread(target=self._serve, args=(conn,), name="vlarl-actor-conn", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        if not conn.poll(self.cfg.timeout_s):
            conn.close()
            return
        kind, hello = recv(conn)
        if kind != "hello":
            conn.close()
            return
        actor = int(hello["actor"])
        old = self._conns.pop(actor, None)
        if old is not None:
            old.close()  # a restarted actor replaces its stale connection
        self._conns[actor] = conn
        self.log(f"actor {actor} joined (pid {hello.get('pid')})")
        writer = threading.Thread(target=self._write_loop, args=(actor, conn), daemon=True)
        writer.start()
        last_heard = time.monotonic()
        reason = "closed"
        try:
            while not self._closing.is_set():
                if conn.poll(self.cfg.heartbeat_s):
                    kind, payload = recv(conn)
                    last_heard = time.monotonic()
                    if kind == "episode":
                        self.inbox.put((actor, payload))
                    elif kind == "stats":
                        self.actor_stats[actor] = {**payload, "received": time.time()}
                elif time.monotonic() - last_heard > self.cfg.timeout_s:
                    reason = f"silent for {time.monotonic() - last_heard:.1f} s (stalled or dead)"
                    break
        except Exception as err:  # noqa: BLE001 - a broken or garbled link drops this actor only
            reason = f"connection lost: {type(err).__name__}"
        finally:
            if self._conns.get(actor) is conn:
                del self._conns[actor]
            try:
                conn.close()
            except OSError:
                pass
        if not (self._closing.is_set() or self._stopping):
            self.log(f"actor {actor} disconnected: {reason}")

    def _write_loop(self, actor: int, conn: Connection) -> None:
        """The only sender on ``conn``: newest weights, heartbeats, and at the end "stop"."""
        sent_version = -1
        while not self._closing.is_set() and self._conns.get(actor) is conn:
            with self._weights_cv:
                self._weights_cv.wait(self.cfg.heartbeat_s)
                weights = self._weights
            try:
                if self._stopping:
                    send(conn, ("stop", None))
                    return
                if weights is not None and weights[0] != sent_version:
                    send(conn, ("weights", weights))
                    sent_version = weights[0]
                else:
                    send(conn, ("heartbeat", None))
            except (OSError, ValueError):
                return


# --- actor side -----------------------------------------------------------------------------
class ActorClient:
    """The actor's link to the learner: ``send_episode`` and ``latest_weights`` never block.

    A background thread connects (and reconnects, forever, with the address re-read from the
    run directory so a restarted learner is found), sends queued episodes and stats, and keeps
    the newest weights. While the learner is away, episodes wait in a bounded outbox.
    """

    def __init__(self, actor_id: int, run_dir: str | Path, cfg: TransportConfig,
                 address: tuple[str, int] | None = None, log: Callable[[str], None] = print) -> None:
        self.actor_id, self.run_dir, self.cfg, self.log = actor_id, Path(run_dir), cfg, log
        self._address = address
        self.outbox = BoundedQueue(cfg.queue_episodes)
        self._weights: tuple[int, Any] | None = None
        self._stats: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.stop_requested = threading.Event()
        self._closing = threading.Event()
        self.connected = False
        self.last_contact = time.monotonic()
        self.disconnects = 0
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
        self._thread.join(timeout=self.cfg.timeout_s)

    # --- thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closing.is_set() and not self.stop_requested.is_set():
            conn = self._connect()
            if conn is None:
                self._closing.wait(min(1.0, self.cfg.heartbeat_s))
                continue
            self.connected = True
            self.last_contact = time.monotonic()
            reason = self._talk(conn)
            self.connected = False
            try:
                conn.close()
            except OSError:
                pass
            if not self._closing.is_set() and not self.stop_requested.is_set():
                self.disconnects += 1
                self.log(f"actor {self.actor_id}: learner unreachable ({reason}); still acting, "
                         f"buffering up to {self.cfg.queue_episodes} episodes, reconnecting")

    def _connect(self) -> Connection | None:
        address = self._address or read_address(self.run_dir)
        if address is None:
            return None
        host, port = address
        try:
            sock_timeout = socket.getdefaulttimeout()
            socket.setdefaulttimeout(self.cfg.timeout_s)  # the handshake must not hang on a stalled learner
            try:
                conn = Client((_connect_host(host), port), authkey=AUTHKEY)
            finally:
                socket.setdefaulttimeout(sock_timeout)
            send(conn, ("hello", {"actor": self.actor_id, "pid": os.getpid()}))
            return conn
        except (OSError, EOFError, ValueError):
            return None
        except Exception:  # noqa: BLE001 - e.g. AuthenticationError from something else on the port
            return None

    def _talk(self, conn: Connection) -> str:
        next_stats = 0.0
        try:
            while not self._closing.is_set():
                item = self.outbox.get()
                if item is not None:
                    try:
                        send(conn, ("episode", item))
                    except (OSError, ValueError):
                        self.outbox.putleft(item)  # not lost: it goes again after reconnecting
                        raise
                now = time.monotonic()
                if now >= next_stats:
                    with self._lock:
                        stats = dict(self._stats)
                    send(conn, ("stats", stats))  # also the heartbeat, so sent even when empty
                    next_stats = now + self.cfg.heartbeat_s
                wait = 0.0 if len(self.outbox) else 0.05
                while conn.poll(wait):
                    kind, payload = recv(conn)
                    self.last_contact = time.monotonic()
                    if kind == "weights":
                        with self._lock:
                            self._weights = payload
                    elif kind == "stop":
                        self.stop_requested.set()
                        return "learner asked to stop"
                    wait = 0.0
                silent = time.monotonic() - self.last_contact
                if silent > self.cfg.timeout_s:
                    return f"silent for {silent:.1f} s (stalled or dead)"
        except Exception as err:  # noqa: BLE001 - whatever breaks the link, the actor keeps acting
            return f"connection lost: {type(err).__name__}: {err}"
        return "closed"

