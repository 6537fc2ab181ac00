"""``vlarl reproduce METHOD``: a method's benchmark end to end (data, training, evaluation,
figures) with one command, the commands that produced its committed results, in order.

Each plan states its time on the reference machine (2 CPU cores, no GPU), from the runs
that produced benchmarks/results; ``--budget`` (minutes) stops between commands once it is
spent (every benchmark resumes or skips finished parts when run again). Run from a source
checkout (the benchmarks are scripts in ``benchmarks/``, not part of the package).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vlarl.errors import VlarlError, unknown


@dataclass(frozen=True)
class Plan:
    minutes: int  # wall clock on the reference machine, rounded up
    commands: tuple[str, ...]
    results: str  # what it writes, under benchmarks/results/


PLANS: dict[str, Plan] = {
    "sft": Plan(10, ("benchmarks/sft_metaworld.py",), "sft_metaworld.{json,md}"),
    "rlpd": Plan(140, ("benchmarks/rlpd_metaworld.py --seeds 0 1 --utd 3 --ensemble 2 --workers 2",),
                 "rlpd_metaworld.{json,md,png}"),
    "hil-serl": Plan(60, (("benchmarks/hil_serl_pick_cube.py --steps 30000 --obs-mode state --eval-every 2500 "
                          "--pixel-steps 1500 --classifier-episodes 40"),), "hil_serl_pick_cube.{json,md,png}"),
    "conrft": Plan(125, ("benchmarks/conrft_bench.py --env panda/pick-cube", ("benchmarks/conrft_bench.py --env "
                         "metaworld/drawer-open"), "benchmarks/conrft_bench.py --report"), "conrft.{json,md}"),
    "ire-vla": Plan(120, (("benchmarks/ire_vla_metaworld.py --methods ire-vla --iterations 2 --rl-steps 8192 "
                          "--eval-episodes 30"),), "ire_vla.{json,md}"),
    "grape": Plan(35, ("benchmarks/grape_metaworld.py --run task", "benchmarks/grape_metaworld.py --run safety",
                       "benchmarks/grape_metaworld.py --run efficiency", "benchmarks/grape_metaworld.py --report"),
                  "grape.{json,md}"),
    "rldg": Plan(150, ("-m vlarl train rldg --config configs/rldg-metaworld.yaml run_dir=runs/bench_rldg/reproduce",
                       "benchmarks/rldg_metaworld.py --report --work runs/bench_rldg/reproduce"), "rldg.{json,md}"),
    "asap": Plan(45, ("benchmarks/asap_arm.py --seed 0 --quiet", "benchmarks/asap_arm.py --seed 1 --quiet",
                      "benchmarks/asap_arm.py --seed 2 --quiet", "benchmarks/asap_arm.py --gain-check --quiet",
                      "benchmarks/asap_arm.py --sysid-delay --quiet", "benchmarks/asap_arm.py --oracle 0 --quiet",
                      "benchmarks/asap_arm.py --oracle 1 --quiet", "benchmarks/asap_arm.py --oracle 2 --quiet",
                      "benchmarks/asap_arm.py --report"), "asap.{json,md}"),
}


def plan(method: str) -> Plan:
    if method not in PLANS:
        raise VlarlError(unknown("method", method, PLANS))
    return PLANS[method]


def reproduce(method: str, root: str | Path = ".", budget_minutes: float | None = None, dry_run: bool = False,
              python: str = sys.executable, log=print) -> dict:
    """Run ``method``'s plan from the checkout at ``root``; returns what ran and what did not."""
    p, root = plan(method), Path(root)
    scripts = [t for c in p.commands for t in c.split() if t.endswith((".py", ".yaml"))]
    missing = [t for t in scripts if not (root / t).exists()]
    if missing:
        raise VlarlError(f"{root.resolve()}: {missing[0]} not found; run vlarl reproduce from a vlarl source checkout")
    budget = budget_minutes if budget_minutes is not None else 1.5 * p.minutes
    log(f"reproduce {method}: {len(p.commands)} command(s), about {p.minutes} min on 2 CPU cores "
        f"(budget {budget:.0f} min); writes benchmarks/results/{p.results}")
    done: list[str] = []
    t0 = time.monotonic()
    for cmd in p.commands:
        argv = [python, *shlex.split(cmd)]
        if dry_run:
            log("  would run: " + shlex.join(argv))
            continue
        spent = (time.monotonic() - t0) / 60
        if done and spent >= budget:  # the first command always runs
            log(f"reproduce {method}: budget of {budget:.0f} min spent ({spent:.0f} min); stopped before: {cmd} "
                "(run again to continue: finished parts are kept)")
            break
        log(f"  running: {cmd}")
        rc = subprocess.call(argv, cwd=root)
        if rc != 0:
            raise VlarlError(f"reproduce {method}: `{cmd}` exited with {rc}")
        done.append(cmd)
    return {"method": method, "ran": done, "skipped": [c for c in p.commands if c not in done] if not dry_run else [],
            "minutes": round((time.monotonic() - t0) / 60, 2), "planned_minutes": p.minutes}
