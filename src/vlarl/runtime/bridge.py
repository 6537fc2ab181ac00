"""A network bridge to a robot: the env runs on the robot's computer, the actor and learner
anywhere that can reach it.

    robot side     ``RobotServer(make_env, host, port, secret).serve_forever()``  (or ``vlarl robot serve``)
    learner side   ``env = RemoteEnv(host, port, secret_file=...)``: a gymnasium env whose
                   reset/step are calls to the server; ``env.latency()`` gives the round-trip
                   times per step

The link speaks vlarl's wire format (``vlarl.runtime.wire``): a mutual HMAC handshake on the
robot's secret (``vlarl robot serve`` keeps it in a 0600 file to copy to the learner's
machine), then data-only messages, optional TLS. Requests: ``spec``, ``reset`` {seed,
options}, ``step`` {action}, ``call`` {method, args} (``proprio``, ``ee_pose``,
``privileged_state``, ``render``), ``close``; answers ``ok`` {result}, ``error`` {message}
(the env raised; the session goes on) or ``refused`` {message} (the request broke the
protocol; the connection is closed).

One client drives the robot at a time; another that authenticates meanwhile is told ``busy``
and retries until its ``connect_timeout_s``. The server never exits because of a client:
handshakes run on their own threads with a deadline, at most ``max_pending`` unauthenticated
connections are held (the oldest goes for a new one), sizes are checked before anything is
allocated, and a client idle for ``idle_timeout_s`` is dropped to free the robot.

When the robot side dies or stops answering within ``timeout_s``, the call in flight raises
``RobotDisconnected`` naming the address and what was lost (that episode); the next
``reset`` reconnects, waiting up to ``connect_timeout_s`` for the server to come back.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlarl.errors import VlarlError
from vlarl.runtime import wire
from vlarl.runtime.secret import robot_client_secret
from vlarl.runtime.wire import TLSConfig, WireError

SERVED_METHODS = ("proprio", "ee_pose", "privileged_state", "render")
REQUEST_LIMITS = {"spec": 0, "reset": 0, "call": 0, "close": 0, "step": 1 << 16}  # array bytes per request kind


class RobotDisconnected(VlarlError):
    """The robot side closed the connection or stopped answering."""


class RobotRefused(VlarlError):
    """The robot server refused this client: a wrong secret, or a request it does not accept."""


# --- spaces as data -------------------------------------------------------------------------
def space_to_data(space: gym.Space) -> dict[str, Any]:
    if isinstance(space, spaces.Box):
        return {"type": "box", "low": np.asarray(space.low), "high": np.asarray(space.high), "dtype": space.dtype.name}
    if isinstance(space, spaces.Dict):
        return {"type": "dict", "spaces": {k: space_to_data(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "start": int(space.start)}
    raise VlarlError(f"robot: cannot serve a {type(space).__name__} space (Box, Dict and Discrete only)")


def space_from_data(d: Any, where: str = "space") -> gym.Space:
    if not isinstance(d, dict) or d.get("type") not in ("box", "dict", "discrete"):
        raise WireError(f"{where} is not a Box, Dict or Discrete description")
    if d["type"] == "box":
        low, high = d.get("low"), d.get("high")
        if (not isinstance(low, np.ndarray) or not isinstance(high, np.ndarray) or low.shape != high.shape
                or d.get("dtype") not in wire.DTYPES):
            raise WireError(f"{where}: Box needs low and high arrays of one shape and a dtype")
        return spaces.Box(low, high, low.shape, dtype=np.dtype(d["dtype"]))
    if d["type"] == "dict":
        if not isinstance(d.get("spaces"), dict):
            raise WireError(f"{where}: Dict needs spaces")
        return spaces.Dict({k: space_from_data(v, f"{where}.{k}") for k, v in d["spaces"].items()})
    if not all(isinstance(d.get(k), int) for k in ("n", "start")):
        raise WireError(f"{where}: Discrete needs integers n and start")
    return spaces.Discrete(d["n"], start=d["start"])


def space_bytes(space: gym.Space) -> int:
    if isinstance(space, spaces.Dict):
        return sum(space_bytes(s) for s in space.spaces.values())
    return math.prod(space.shape or ()) * np.dtype(space.dtype or np.float32).itemsize


def check_obs(obs: Any, space: gym.Space, where: str = "observation") -> None:
    """Shapes and dtypes of an observation against its space (WireError naming the key)."""
    if isinstance(space, spaces.Dict):
        if not isinstance(obs, dict) or set(obs) != set(space.spaces):
            raise WireError(f"{where} keys {sorted(obs) if isinstance(obs, dict) else type(obs).__name__}, "
                            f"expected {sorted(space.spaces)}")
        for key, sub in space.spaces.items():
            check_obs(obs[key], sub, f"{where}.{key}")
    elif isinstance(space, spaces.Box) and (not isinstance(obs, np.ndarray) or obs.shape != space.shape
                                            or obs.dtype != space.dtype):
        got = f"{obs.dtype}{list(obs.shape)}" if isinstance(obs, np.ndarray) else type(obs).__name__
        raise WireError(f"{where} is {got}, expected {space.dtype}{list(space.shape)}")


# --- robot side -----------------------------------------------------------------------------
class RobotServer:
    """Serves one env (built by ``make_env``, on the robot's computer) to authenticated clients."""

    def __init__(self, make_env: Callable[[], Any], host: str = "127.0.0.1", port: int = 7000,
                 secret: bytes | None = None, log: Callable[[str], None] = print, tls: TLSConfig | None = None,
                 handshake_timeout_s: float = 5.0, request_timeout_s: float = 10.0, idle_timeout_s: float = 300.0,
                 max_pending: int = 16) -> None:
        if not secret:
            raise VlarlError("robot: a RobotServer needs a secret (see vlarl.runtime.secret.robot_server_secret)")
        for name, value in (("handshake_timeout_s", handshake_timeout_s), ("request_timeout_s", request_timeout_s),
                            ("idle_timeout_s", idle_timeout_s), ("max_pending", max_pending)):
            if not value > 0:
                raise VlarlError(f"robot: {name} must be > 0, got {value}")
        self.secret, self.log = secret, log
        self.handshake_timeout_s, self.request_timeout_s = handshake_timeout_s, request_timeout_s
        self.idle_timeout_s, self.max_pending = idle_timeout_s, max_pending
        self._tls = wire.server_tls(tls)
        self.env = make_env()
        self._spec = {"observation_space": space_to_data(self.env.observation_space),
                      "action_space": space_to_data(self.env.action_space),
                      "cameras": list(getattr(self.env.unwrapped, "cameras", ())),
                      "name": str(getattr(self.env.unwrapped, "spec_name", ""))}
        self._action_shape = tuple(self.env.action_space.shape or ())
        try:
            self.listener = socket.create_server((host, port), backlog=64)
        except OSError as err:
            self.env.close()
            raise VlarlError(f"robot: cannot listen on {host}:{port}: {err}") from err
        self.address = self.listener.getsockname()[:2]
        self._robot = threading.Lock()  # held by the one client driving the robot
        self.holder: str | None = None
        self._holder_sock: socket.socket | None = None
        self._acceptor = wire.Acceptor(self.listener, self._session, max_pending, self._evicted, "vlarl-robot-client")
        self._closing = self._acceptor.closing  # set by close()
        self.refusals = wire.ThrottledLog(lambda msg: log(f"robot: {msg}"))
        self.sessions = 0  # clients that drove the robot and left

    @property
    def refused(self) -> int:
        """Connections and requests refused so far."""
        return self.refusals.count

    def serve_forever(self, max_clients: int | None = None) -> None:
        """Accept until ``close()`` (or ``max_clients`` sessions have ended); handshakes and
        sessions run on their own threads."""
        try:
            self._acceptor.run(lambda: max_clients is None or self.sessions < max_clients)
        finally:
            self.close()

    def _evicted(self) -> None:
        self.refusals("too many connections still handshaking: dropped the oldest")

    def _session(self, raw: socket.socket, peer: str) -> None:
        try:
            sock = wire.accept_peer(raw, self.secret, self.handshake_timeout_s, self._tls)
        except Exception as err:  # noqa: BLE001 - whatever a client does, the server keeps serving
            self.refusals(f"refused {peer}: {type(err).__name__}: {err}")
            wire.close_quietly(raw)
            return
        finally:
            self._acceptor.admitted(raw)
        if not self._robot.acquire(blocking=False):
            try:
                wire.send(sock, "busy", {"holder": self.holder})
            except (OSError, WireError):
                pass
            wire.close_quietly(sock)
            return
        try:
            self.holder, self._holder_sock = peer, sock
            self.log(f"robot: client connected from {peer}")
            wire.send(sock, "ready")
            self._serve(sock, peer)
        except Exception as err:  # noqa: BLE001 - the robot keeps serving the next client
            self.log(f"robot: client {peer} dropped: {type(err).__name__}: {err}")
        finally:
            self.holder = self._holder_sock = None
            self.sessions += 1
            self._robot.release()
            wire.close_quietly(sock)

    def _serve(self, sock: socket.socket, peer: str) -> None:
        while not self._closing.is_set():
            try:
                msg = wire.recv(sock, REQUEST_LIMITS, self.request_timeout_s, wait_s=self.idle_timeout_s)
                request = self._checked(msg)
            except wire.Silent:
                self.log(f"robot: client {peer} idle for {self.idle_timeout_s:.0f} s; dropped to free the robot")
                return
            except wire.PeerClosed:
                self.log(f"robot: client {peer} gone")
                return
            except WireError as err:
                self.refusals(f"refused a request from {peer} ({err}); connection closed")
                self._reply(sock, "refused", {"message": str(err)})
                return
            if msg.kind == "close":
                self._reply(sock, "ok", {"result": None})
                return
            try:
                result = self._handle(msg.kind, request)
            except Exception as err:  # noqa: BLE001 -- the robot keeps serving; the client gets the message
                self._reply(sock, "error", {"message": f"{type(err).__name__}: {err}"})
                continue
            if not self._reply(sock, "ok", {"result": result}):
                return

    def _reply(self, sock: socket.socket, kind: str, body: Any) -> bool:
        try:
            wire.send(sock, kind, body)
        except WireError as err:  # the env returned something that is not data
            return self._reply(sock, "error", {"message": f"the robot's answer cannot be sent: {err}"})
        except OSError:
            return False
        return True

    def _checked(self, msg: wire.Message) -> Any:
        """The request's body if it is what its kind must carry, else WireError."""
        body = msg.body
        if msg.kind in ("spec", "close"):
            if body is not None:
                raise WireError(f"{msg.kind} takes no body")
        elif msg.kind == "reset":
            if (not isinstance(body, dict) or set(body) != {"seed", "options"}
                    or not (body["seed"] is None or (isinstance(body["seed"], int) and not isinstance(body["seed"], bool)))
                    or not (body["options"] is None or isinstance(body["options"], dict))):
                raise WireError("reset takes {seed: int or null, options: mapping or null}")
        elif msg.kind == "step":
            action = body.get("action") if isinstance(body, dict) and set(body) == {"action"} else None
            if not isinstance(action, np.ndarray) or action.dtype != np.float32 or action.shape != self._action_shape:
                raise WireError(f"step takes {{action: float32{list(self._action_shape)}}}")
            if not np.isfinite(action).all():
                raise WireError("step action holds non-finite values")
        elif msg.kind == "call" and (not isinstance(body, dict) or set(body) != {"method", "args"}
                                     or body["method"] not in SERVED_METHODS or body["args"] != []):
            raise WireError(f"call takes {{method: one of {list(SERVED_METHODS)}, args: []}}")
        return body

    def _handle(self, kind: str, body: Any) -> Any:
        env = self.env
        if kind == "spec":
            return self._spec
        if kind == "reset":
            obs, info = env.reset(seed=body["seed"], options=body["options"])
            return {"obs": obs, "info": info}
        if kind == "step":
            obs, reward, terminated, truncated, info = env.step(body["action"])
            return {"obs": obs, "reward": float(reward), "terminated": bool(terminated), "truncated": bool(truncated),
                    "info": info}
        return getattr(env.unwrapped, body["method"])()

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._acceptor.close()
        wire.close_quietly(self._holder_sock)
        with self._robot:  # the session in progress ends before the env closes
            self.env.close()


# --- learner side ---------------------------------------------------------------------------
class RemoteEnv(gym.Env):
    """A gymnasium env whose every call runs on a ``RobotServer``.

    The secret: ``secret`` or ``secret_file``, else ``VLARL_ROBOT_SECRET`` /
    ``VLARL_ROBOT_SECRET_FILE``, else the server's default file when the robot runs here.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 7000, secret: bytes | str | None = None,
                 secret_file: str | Path | None = None, timeout_s: float = 10.0, connect_timeout_s: float = 30.0,
                 tls: TLSConfig | None = None) -> None:
        self.address = (host, port)
        self.timeout_s, self.connect_timeout_s, self.tls = timeout_s, connect_timeout_s, tls
        self._secret = robot_client_secret(secret, secret_file, port)
        self._sock: socket.socket | None = None
        self._times: list[float] = []
        self._limits = {"ok": 16 << 20, "error": 0, "refused": 0}  # until the spec says how big observations are
        self._connect()
        spec = self._call("spec", None, "connecting")
        if not isinstance(spec, dict) or not {"observation_space", "action_space", "cameras", "name"} <= set(spec):
            raise RobotRefused(f"robot at {self._where()}: its spec is not a vlarl robot spec")
        self.observation_space = space_from_data(spec["observation_space"], "observation_space")
        self.action_space = space_from_data(spec["action_space"], "action_space")
        self.cameras, self.robot_name = tuple(spec["cameras"]), str(spec["name"])
        # an answer is one observation plus its info; render() frames may be larger still
        self._limits["ok"] = max(2 * space_bytes(self.observation_space) + (1 << 20), 64 << 20)

    def _connect(self) -> None:
        deadline = time.monotonic() + self.connect_timeout_s
        why = ""
        while True:
            sock = None
            try:
                sock = wire.connect(self.address, self._secret, self.timeout_s, self.tls)
                msg = wire.recv(sock, {"ready": 0, "busy": 0}, self.timeout_s)
                if msg.kind == "ready":
                    self._sock = sock
                    return
                why = f"in use by {msg.body.get('holder') if isinstance(msg.body, dict) else 'another client'}"
                wire.close_quietly(sock)
            except wire.AuthError as err:
                wire.close_quietly(sock)
                raise RobotRefused(f"robot at {self._where()}: {err}") from None
            except (OSError, WireError) as err:
                wire.close_quietly(sock)
                why = str(err) or type(err).__name__
            if time.monotonic() > deadline:
                raise RobotDisconnected(f"robot at {self._where()}: cannot connect within "
                                        f"{self.connect_timeout_s:.0f} s ({why})") from None
            time.sleep(0.1)

    def _where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def _call(self, kind: str, body: Any, doing: str) -> Any:
        if self._sock is None:
            raise RobotDisconnected(f"robot at {self._where()}: not connected; reset() reconnects")
        try:
            wire.send(self._sock, kind, body)
            msg = wire.recv(self._sock, self._limits, self.timeout_s)
        except (OSError, WireError) as err:
            self._drop()
            reason = f"no answer within {self.timeout_s:.1f} s" if isinstance(err, wire.Silent) else str(err) or type(err).__name__
            raise RobotDisconnected(f"robot at {self._where()} stopped answering during {doing} ({reason}); "
                                    f"the episode in progress is lost, reset() reconnects") from None
        reply = msg.body if isinstance(msg.body, dict) else {}
        if msg.kind == "refused":
            self._drop()
            raise RobotRefused(f"robot at {self._where()} refused {doing}: {reply.get('message')}")
        if msg.kind == "error":
            raise VlarlError(f"robot at {self._where()}: {reply.get('message')}")
        return reply.get("result")

    def _drop(self) -> None:
        wire.close_quietly(self._sock)
        self._sock = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self._sock is None:
            self._connect()
        out = self._call("reset", {"seed": seed, "options": options}, "reset")
        self._check(out, ("obs", "info"), "reset")
        return out["obs"], out["info"]

    def step(self, action):
        t0 = time.perf_counter()
        action = np.asarray(action, np.float32).reshape(self.action_space.shape)
        out = self._call("step", {"action": action}, "step")
        self._times.append(time.perf_counter() - t0)
        self._check(out, ("obs", "reward", "terminated", "truncated", "info"), "step")
        return out["obs"], float(out["reward"]), bool(out["terminated"]), bool(out["truncated"]), out["info"]

    def _check(self, out: Any, keys: tuple[str, ...], doing: str) -> None:
        try:
            if not isinstance(out, dict) or set(out) != set(keys):
                raise WireError(f"{doing} answer is not {{{', '.join(keys)}}}")
            check_obs(out["obs"], self.observation_space)
        except WireError as err:
            self._drop()
            raise RobotRefused(f"robot at {self._where()}: {err}; disconnected") from None

    def call(self, method: str, *args: Any) -> Any:
        """A served method of the robot env (``proprio``, ``ee_pose``, ``privileged_state``, ``render``)."""
        if method not in SERVED_METHODS or args:
            raise VlarlError(f"robot: method {method!r} is not served (served, without arguments: "
                             f"{', '.join(SERVED_METHODS)})")
        result = self._call("call", {"method": method, "args": []}, method)
        return tuple(result) if isinstance(result, list) else result  # ee_pose's (xyz, rotation)

    def latency(self) -> dict[str, float]:
        """Round-trip seconds per step so far: median, p99, count."""
        if not self._times:
            return {"median": float("nan"), "p99": float("nan"), "steps": 0}
        t = np.asarray(self._times)
        return {"median": float(np.median(t)), "p99": float(np.percentile(t, 99)), "steps": len(t)}

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._call("close", None, "close")
            except VlarlError:
                pass
            self._drop()
