"""Shared secrets for vlarl's sockets: per learner, per robot server, never in the source.

A learner draws a fresh random secret each time it starts and writes it to ``RUN/secret``
(mode 0600, like an SSH key); its local actors read it from there on every (re)connect, Ray
actors get it as a task argument. A user who wants to choose it sets ``VLARL_SECRET`` (the
secret itself) or ``VLARL_SECRET_FILE`` (a file holding it). A robot server keeps its secret
in a file (``vlarl robot serve --secret-file``, made on first start) that the user copies to
the learner's machine. Secrets are never printed or logged: messages name the file.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from vlarl.errors import VlarlError

SECRET_ENV = "VLARL_SECRET"
SECRET_FILE_ENV = "VLARL_SECRET_FILE"
ROBOT_SECRET_ENV = "VLARL_ROBOT_SECRET"
ROBOT_SECRET_FILE_ENV = "VLARL_ROBOT_SECRET_FILE"
MIN_SECRET_BYTES = 16


def run_secret_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / "secret"


def default_robot_secret_file(port: int) -> Path:
    return Path.home() / ".vlarl" / f"robot-{port}.secret"


def _check(secret: bytes, where: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise VlarlError(f"{where}: a secret must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}")
    return secret


def read_secret_file(path: str | Path) -> bytes:
    """The secret in ``path`` (``~`` expanded); refused when other users can read the file."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
        data = path.read_bytes().strip()
    except OSError as err:
        raise VlarlError(f"{path}: cannot read the secret ({err.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VlarlError(f"{path}: the secret file is readable by other users (mode {stat.S_IMODE(mode):04o}); "
                         f"chmod 600 {path}")
    return _check(data, str(path))


def write_secret_file(path: str | Path, secret: bytes | None = None) -> bytes:
    """Write ``secret`` (a fresh random one by default) to ``path``, mode 0600, atomically."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secret if secret is not None else secrets.token_hex(32).encode()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file left by a crash
        os.write(fd, secret + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return _check(secret, str(path))


def _from_env(value_var: str, file_var: str) -> bytes | None:
    if os.environ.get(value_var):
        return _check(os.environ[value_var].encode(), f"${value_var}")
    if os.environ.get(file_var):
        return read_secret_file(os.environ[file_var])
    return None


def start_run_secret(run_dir: str | Path) -> bytes:
    """A learner's secret: the user's (``VLARL_SECRET`` / ``VLARL_SECRET_FILE``), else a fresh
    random one written to ``RUN/secret`` for its actors."""
    given = _from_env(SECRET_ENV, SECRET_FILE_ENV)
    if given is not None:
        return given
    return write_secret_file(run_secret_file(run_dir))


def actor_secret(run_dir: str | Path) -> bytes:
    """What an actor authenticates with: the user's secret, else the learner's ``RUN/secret``."""
    given = _from_env(SECRET_ENV, SECRET_FILE_ENV)
    if given is not None:
        return given
    return read_secret_file(run_secret_file(run_dir))


def robot_server_secret(path: str | Path, rotate: bool = False) -> bytes:
    """A robot server's secret: ``VLARL_ROBOT_SECRET`` if set, else the file at ``path``
    (created with a random secret when missing, or when ``rotate``)."""
    if os.environ.get(ROBOT_SECRET_ENV):
        return _check(os.environ[ROBOT_SECRET_ENV].encode(), f"${ROBOT_SECRET_ENV}")
    path = Path(path).expanduser()
    if rotate or not path.exists():
        return write_secret_file(path)
    return read_secret_file(path)


def robot_client_secret(secret: bytes | str | None, secret_file: str | Path | None, port: int) -> bytes:
    """A robot client's secret: given, else from a file, else ``VLARL_ROBOT_SECRET(_FILE)``, else
    the server's default file when the robot runs on this machine."""
    if secret is not None:
        return _check(secret.encode() if isinstance(secret, str) else secret, "secret")
    if secret_file is not None:
        return read_secret_file(secret_file)
    given = _from_env(ROBOT_SECRET_ENV, ROBOT_SECRET_FILE_ENV)
    if given is not None:
        return given
    local = default_robot_secret_file(port)
    if local.exists():
        return read_secret_file(local)
    raise VlarlError(f"robot bridge: no secret. `vlarl robot serve` writes it on the robot's computer "
                     f"(default {local}); copy that file here and pass secret_file=PATH or set "
                     f"{ROBOT_SECRET_FILE_ENV}=PATH")
