"""Cost generators: a task description in, stage costs (``TaskCosts``) out.

``hand-written`` (the default) returns the costs of ``vlarl.envs.stage_costs``. ``openai``
asks an OpenAI-compatible chat endpoint (off unless configured) to write them as Python::

    def reach(k):
        return dist(k["hand"], k["obj"])
    STAGES = [("reach the handle", reach, 0.6), ...]

Generated code never runs as written by a model alone: it is parsed first, and only a small
expression language passes (function definitions, arithmetic, comparisons, conditionals,
subscripts, calls of the helpers below or of its own functions; no imports, no attribute
access, no loops, no names with underscores at either end). It then runs in a namespace
whose builtins are only those helpers, and every stage cost must return a finite number >= 0
on a sample state. Anything else is rejected with the reason.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlarl.envs.stage_costs import Keypoints, Stage, TaskCosts, hand_written_costs
from vlarl.errors import VlarlError, unknown
from vlarl.ranges import ranged

KINDS = ("hand-written", "openai")
MAX_CODE_CHARS = 20_000


@dataclass
class CostGeneratorConfig:
    kind: str = ranged("hand-written", choices=KINDS)
    base_url: str = "http://localhost:8000/v1"  # any OpenAI-compatible server
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"  # read from the environment, never stored in a config
    timeout_s: float = ranged(60.0, gt=0)


# --- the helpers generated code may call --------------------------------------------------
def _vec(x: Any) -> np.ndarray:
    return np.asarray(x, np.float64).reshape(-1)


HELPERS: dict[str, Any] = {
    "dist": lambda a, b: float(np.linalg.norm(_vec(a) - _vec(b))),
    "norm": lambda a: float(np.linalg.norm(_vec(a))),
    "sqrt": math.sqrt,
    "exp": math.exp,
    "clip": lambda x, lo, hi: float(min(max(x, lo), hi)),
    "abs": abs,
    "min": min,
    "max": max,
    "float": float,
    "len": len,
}

_ALLOWED_NODES = (
    ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Assign, ast.If, ast.Expr,
    ast.Name, ast.Load, ast.Store, ast.Constant, ast.Subscript, ast.Slice, ast.Tuple, ast.List,
    ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Call, ast.keyword,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not,
    ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE,
)


def validate_cost_code(code: str) -> ast.Module:
    """Parse ``code`` and check it against the allowed language; raise VlarlError naming the
    first offence."""
    if len(code) > MAX_CODE_CHARS:
        raise VlarlError(f"generated cost code: {len(code)} characters, more than {MAX_CODE_CHARS}")
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        raise VlarlError(f"generated cost code does not parse: {err.msg} (line {err.lineno})") from None
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for statement in tree.body:
        ok = isinstance(statement, ast.FunctionDef) or (
            isinstance(statement, ast.Assign) and [getattr(t, "id", None) for t in statement.targets] == ["STAGES"])
        if not ok:
            raise VlarlError(f"generated cost code, line {statement.lineno}: {type(statement).__name__} at the top level; "
                             "only function definitions and 'STAGES = [...]' are allowed there")
    for node in ast.walk(tree):
        where = f"generated cost code, line {getattr(node, 'lineno', '?')}"
        if not isinstance(node, _ALLOWED_NODES):
            raise VlarlError(f"{where}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.FunctionDef) and (node.decorator_list or node.args.defaults or node.args.vararg
                                                  or node.args.kwarg or node.args.kwonlyargs):
            raise VlarlError(f"{where}: function {node.name!r} may take plain arguments only")
        if isinstance(node, ast.Name | ast.FunctionDef | ast.arg):
            name = str(getattr(node, "id", None) or getattr(node, "name", None) or getattr(node, "arg", ""))
            if name.startswith("_") or name.endswith("_"):
                raise VlarlError(f"{where}: name {name!r} is not allowed")
        if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Name)
                                           or node.func.id not in set(HELPERS) | defined):
                raise VlarlError(f"{where}: only {sorted(HELPERS)} and the code's own functions may be called")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exp = node.right
            if not (isinstance(exp, ast.Constant) and isinstance(exp.value, int | float) and abs(exp.value) <= 4):
                raise VlarlError(f"{where}: powers need a constant exponent of at most 4")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) > 200:
            raise VlarlError(f"{where}: string constant longer than 200 characters")
    return tree


def compile_stage_costs(code: str, sample: Keypoints) -> TaskCosts:
    """Validate ``code``, run it in a restricted namespace and check every stage on ``sample``."""
    tree = validate_cost_code(code)
    namespace: dict[str, Any] = {"__builtins__": dict(HELPERS)}
    try:
        exec(compile(tree, "<generated costs>", "exec"), namespace)  # noqa: S102 -- validated above; no builtins but the helpers
    except Exception as err:  # noqa: BLE001 -- any failure of generated code is a rejection
        raise VlarlError(f"generated cost code failed to run: {type(err).__name__}: {err}") from None
    raw = namespace.get("STAGES")
    if not isinstance(raw, list | tuple) or not raw:
        raise VlarlError("generated cost code: STAGES must be a non-empty list of (name, function, threshold)")
    stages = []
    for i, entry in enumerate(raw):
        if not (isinstance(entry, tuple | list) and len(entry) == 3 and isinstance(entry[0], str)
                and callable(entry[1]) and isinstance(entry[2], int | float) and entry[2] >= 0):
            raise VlarlError(f"generated cost code: STAGES[{i}] must be (name, function, threshold >= 0), got {entry!r}")
        name, fn, threshold = entry
        try:
            value = float(fn(sample))
        except Exception as err:  # noqa: BLE001
            raise VlarlError(f"generated cost code: stage {name!r} failed on a sample state: "
                             f"{type(err).__name__}: {err}") from None
        if not math.isfinite(value) or value < 0:
            raise VlarlError(f"generated cost code: stage {name!r} returned {value} on a sample state; "
                             "costs must be finite and >= 0")
        stages.append(Stage(name, fn, float(threshold)))
    return TaskCosts(tuple(stages))


# --- generators ---------------------------------------------------------------------------
PROMPT = """You write stage cost functions for a robot manipulation task, in Python.
Task ({env}): {description}
The task is a sequence of stages. For each stage write a function of one argument k, a dict of
keypoints of the simulator state: {keys}. Positions are numpy arrays in metres.
A cost must return a float >= 0 that is small when the stage is achieved; the threshold is the
cost under which the stage counts as done. Use only arithmetic, comparisons, conditional
expressions, k["name"][index] and these helpers: {helpers}. No imports, loops or attributes.
End with: STAGES = [("stage name", function, threshold), ...]
Reply with one ```python code block."""


def extract_code(reply: str) -> str:
    """The first fenced code block of a reply, or the whole reply when it has none."""
    m = re.search(r"```(?:python|py)?\s*\n(.*?)```", reply, re.DOTALL)
    return m.group(1) if m else reply


class OpenAICostGenerator:
    """Costs written by a model behind an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(self, cfg: CostGeneratorConfig) -> None:
        self.cfg = cfg

    def request(self, prompt: str) -> str:
        body = json.dumps({"model": self.cfg.model, "temperature": 0,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = self.cfg.base_url.rstrip("/") + "/chat/completions"
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                reply = json.loads(resp.read())
            return reply["choices"][0]["message"]["content"]
        except (urllib.error.URLError, OSError, KeyError, IndexError, json.JSONDecodeError) as err:
            raise VlarlError(f"cost generator: no usable reply from {url}: {err}") from None

    def generate(self, env_name: str, description: str, sample: Keypoints) -> tuple[TaskCosts, str]:
        """Stage costs for the task and the code they came from."""
        prompt = PROMPT.format(env=env_name, description=description, keys=sorted(sample), helpers=sorted(HELPERS))
        code = extract_code(self.request(prompt))
        return compile_stage_costs(code, sample), code


def generate_costs(cfg: CostGeneratorConfig, env_name: str, description: str,
                   sample: Keypoints) -> tuple[TaskCosts, str | None]:
    """Stage costs for ``env_name`` from the configured generator (and the generated code)."""
    if cfg.kind == "hand-written":
        return hand_written_costs(env_name), None
    if cfg.kind == "openai":
        return OpenAICostGenerator(cfg).generate(env_name, description, sample)
    raise VlarlError(unknown("costs.kind", cfg.kind, KINDS))
