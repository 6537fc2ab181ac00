"""ConRFT: a consistency policy fine-tuned offline with Cal-QL, then online with a human.

    vlarl train conrft --config configs/conrft-pick-cube.yaml
    vlarl train conrft --resume runs/conrft-pick-cube

1. Demos: ``demos`` scripted episodes (about 20) recorded through the training wrappers
   into the demo buffer, every transition with its Monte-Carlo return.
2. Offline stage (Cal-ConRFT): ``offline_steps`` updates on the demos alone: the critic by
   TD + Cal-QL, the consistency actor by -eta_offline Q + beta_offline L_BC. Evaluated after.
3. Online stage (HIL-ConRFT): HIL-SERL's runtime (actor processes, the simulated or a real
   human, demo + RL buffers 50/50, interventions into the demo buffer); the critic by TD, the
   actor by -eta_online Q + beta L_BC on the demo rows, beta decaying on ``beta_schedule``.

The reward is shaped as ConRFT's: +10 on success, -0.05 per step, -0.2 per gripper toggle
(``shaping.*``). Evaluation counts the env's own success and the episode length, policy alone.
``offline_steps`` with ``conrft.eta_offline=0`` and ``steps=0`` is plain behaviour cloning of
the same consistency head: the SFT baseline of the benchmark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from vlarl.algos.conrft import ConRFTAgent, ConRFTConfig, ConRFTLearner
from vlarl.algos.sac import SACConfig
from vlarl.envs.wrappers import RewardShapingConfig
from vlarl.errors import VlarlError
from vlarl.fileio import atomic_write_text
from vlarl.recipes.hil_serl import Agent, HILSERLConfig, OnlineRun, evaluate_policy
from vlarl.recipes.hil_serl import actor_parts as _hil_actor_parts
from vlarl.runtime.actor import ActorParts
from vlarl.runtime.config import ranged


def _default_critic() -> SACConfig:
    # ConRFT's critic: two LayerNorm critics (min over both), batch 256, gamma 0.97 as HIL-SERL;
    # no temperature (the consistency policy has none) and no grasp critic (the head outputs the gripper).
    # Images as HIL-SERL's: spatial embeddings over the pooled 4 x 4 grid of cached tokens.
    return SACConfig(ensemble=2, subset=2, utd=2, batch_size=256, gamma=0.97, encoder="efficientnet-lite0",
                     spatial_kernels=8, feature_pool=2, augment=False)


@dataclass
class ConRFTRecipeConfig(HILSERLConfig):
    sac: SACConfig = field(default_factory=_default_critic)  # the critic ensemble, batch, UTD, gamma, lr, encoder
    conrft: ConRFTConfig = field(default_factory=ConRFTConfig)
    shaping: RewardShapingConfig = field(default_factory=RewardShapingConfig)
    offline_steps: int = ranged(3_000, ge=0)  # updates on the demos before any env step
    steps: int = ranged(10_000, ge=0)  # 0: the offline stage alone
    run_dir: str = "runs/conrft"

    name: ClassVar[str] = "conrft"
    actor_entry: ClassVar[str] = "vlarl.recipes.conrft:actor_parts"

    def check(self) -> None:
        super().check()
        if self.offline_steps and not self.demos:
            raise VlarlError("conrft: the offline stage needs demos (set demos > 0 or offline_steps=0)")
        self.conrft.beta_schedule(0)  # a bad schedule kind fails here, before a run starts

    def make_agent(self, state_dim: int, action_dim: int, cameras: dict | None) -> Agent:
        return ConRFTAgent(self.sac, self.conrft, state_dim, action_dim, cameras)


def offline_stage(cfg: ConRFTRecipeConfig, run: OnlineRun) -> None:
    """Cal-QL + consistency BC on the demo buffer; resumable; evaluated once at the end."""
    loop = run.loop
    if loop.counters["offline_updates"] >= cfg.offline_steps and "offline" in loop.results:
        return
    loop.learner.offline = True
    info = loop.offline_updates(cfg.offline_steps)
    loop.learner.offline = False
    # the final evaluation's episodes (same start states), so offline and online compare directly
    evaluation = evaluate_policy(cfg, run.agent, cfg.final_eval_episodes, 20_000 + cfg.seed)
    loop.results["offline"] = {"updates": loop.counters["offline_updates"], **evaluation, **info}
    if not loop.results["evals"]:  # the online curve starts from the offline policy
        loop.results["evals"].append({"step": loop.counters["env_steps"], "updates": loop.counters["updates"],
                                      **evaluation})
    loop.log(f"offline stage: {loop.counters['offline_updates']} updates, success {evaluation['success']:.2f}, "
             f"episode length {evaluation['mean_length']:.1f}")
    loop.save()


def actor_parts(run_dir: str, actor_id: int) -> ActorParts:
    """Entry point of ConRFT's actor processes."""
    return _hil_actor_parts(run_dir, actor_id, ConRFTRecipeConfig)


def train_conrft(cfg: ConRFTRecipeConfig | None = None, resume=None, progress: bool = True) -> dict[str, Any]:
    """Demos -> offline stage -> online stage; results.json has ``offline`` and the final figures."""
    cfg = cfg or ConRFTRecipeConfig()
    run = OnlineRun(cfg, resume, progress, _conrft_learner, monte_carlo=True, keep_results=("offline",))
    if run.done is not None:  # finished, or a process of a data-parallel group other than rank 0
        return run.done
    assert isinstance(run.cfg, ConRFTRecipeConfig)
    offline_stage(run.cfg, run)
    if run.cfg.conrft.reset_actor_optimizer and run.loop.counters["updates"] == 0:  # online not begun yet
        run.loop.learner.actor_opt.state.clear()
    results = run.train()
    offline = results.get("offline", {})
    results["summary"] = {
        "offline": {"success": offline.get("success"), "episode_length": offline.get("mean_length")},
        "online": {"success": results["final_success"], "episode_length": results["final_mean_length"]},
    }
    atomic_write_text(Path(results["plot"]).parent / "results.json", json.dumps(results, indent=2, default=float))
    return results


def _conrft_learner(agent: Agent, generator: torch.Generator) -> ConRFTLearner:
    assert isinstance(agent, ConRFTAgent)
    return ConRFTLearner(agent, generator)
