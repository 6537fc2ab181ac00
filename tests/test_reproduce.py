"""vlarl reproduce: every plan's scripts exist and name flags their scripts accept; the runner
runs in order, stops on a spent budget and names a failing command."""

import re
import sys
from pathlib import Path

import pytest

from vlarl.errors import VlarlError

ROOT = Path(__file__).resolve().parent.parent


def test_every_plan_points_at_real_scripts_and_flags():
    from vlarl.reproduce import PLANS, reproduce

    assert set(PLANS) == {"sft", "rlpd", "hil-serl", "conrft", "ire-vla", "grape", "rldg", "asap"}
    for method, plan in PLANS.items():
        for cmd in plan.commands:
            tokens = cmd.split()
            if tokens[0].endswith(".py"):
                source = (ROOT / tokens[0]).read_text()
                for flag in (t for t in tokens if t.startswith("--")):
                    assert re.search(rf'"{flag}"', source), f"{method}: {tokens[0]} has no {flag}"
        lines = []
        out = reproduce(method, root=ROOT, dry_run=True, log=lines.append)
        assert out["ran"] == [] and len(lines) == 1 + len(plan.commands) and f"about {plan.minutes} min" in lines[0]
    with pytest.raises(VlarlError, match="unknown method 'ppo'"):
        reproduce("ppo", root=ROOT, dry_run=True)


def test_the_runner_runs_in_order_stops_on_budget_and_names_a_failure(tmp_path, monkeypatch):
    from vlarl import reproduce as mod

    (tmp_path / "benchmarks").mkdir()
    for name, code in (("a.py", "open('ran.txt', 'a').write('a')"), ("b.py", "open('ran.txt', 'a').write('b')"),
                       ("bad.py", "raise SystemExit(3)")):
        (tmp_path / "benchmarks" / name).write_text(code)
    monkeypatch.setitem(mod.PLANS, "toy", mod.Plan(1, ("benchmarks/a.py", "benchmarks/b.py"), "toy.md"))
    out = mod.reproduce("toy", root=tmp_path, python=sys.executable, log=lambda _: None)
    assert out["ran"] == ["benchmarks/a.py", "benchmarks/b.py"] and (tmp_path / "ran.txt").read_text() == "ab"
    out = mod.reproduce("toy", root=tmp_path, budget_minutes=0, python=sys.executable, log=lambda _: None)
    assert out["ran"] == ["benchmarks/a.py"] and out["skipped"] == ["benchmarks/b.py"]  # the budget ran out after one
    monkeypatch.setitem(mod.PLANS, "broken", mod.Plan(1, ("benchmarks/bad.py",), "x.md"))
    with pytest.raises(VlarlError, match="benchmarks/bad.py` exited with 3"):
        mod.reproduce("broken", root=tmp_path, python=sys.executable, log=lambda _: None)
    with pytest.raises(VlarlError, match="source checkout"):
        mod.reproduce("toy", root=tmp_path / "nowhere", log=lambda _: None)
