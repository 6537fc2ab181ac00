"""GRAPE's learning rule: score whole trajectories, pair the best with the worst, and push the
policy's trajectory log-likelihood towards the winners relative to a frozen reference (TPO).

    R(τ)   = λ1·log π(τ) + λ2·R_ext(τ) + λ3·I_success(τ)         (GCPG; 0.01 / 1 / 5)
    log π(τ) = Σ_t log π(a_t | o_t, q)                           (summed over the action tokens)
    pairs  = (i-th best, i-th worst) for i < m, per task (or per start state)
    L_TPO  = −log σ(β·[(log π − log π_ref)(τ_w) − (log π − log π_ref)(τ_l)])   (β = 0.1)

A trajectory's log-likelihood is computed window by window (``window`` steps at a time) and
the gradient is exact without holding a whole trajectory's graph: the loss depends on the
policy only through the per-trajectory sums, so dL/dθ = Σ_j (dL/d log π(τ_j))·Σ_windows
d log π(window)/dθ. The coefficients come from a pass without a graph; each window is then
recomputed and back-propagated alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vlarl.errors import VlarlError
from vlarl.ranges import ranged

# log π of a trajectory's steps [start, stop): (trajectory index, start, stop) -> (stop - start,)
StepLogProb = Callable[[int, int, int], torch.Tensor]
REFERENCES = ("iteration", "sft")  # what TPO's log-ratios are taken against


@dataclass
class GCPGWeights:
    self_weight: float = ranged(0.01, ge=0)  # λ1: the policy's own log-likelihood
    ext_weight: float = ranged(1.0, ge=0)  # λ2: the stage costs' R_ext
    success_weight: float = ranged(5.0, ge=0)  # λ3: task success


@dataclass
class TPOConfig:
    beta: float = ranged(0.1, gt=0)
    lr: float = ranged(1e-5, gt=0)  # a trajectory's log π sums hundreds of tokens: larger steps move it by hundreds of nats
    epochs: int = ranged(10, ge=1)  # passes over the iteration's pairs
    batch_pairs: int = ranged(8, ge=1)
    window: int = ranged(64, ge=1)  # steps per forward/backward window
    reference: str = ranged("iteration", choices=REFERENCES)  # "iteration": the sampling policy; "sft": the start policy
    # NLL of the winners per step beside TPO (0: the paper's pure loss). Pure TPO lowered the
    # winners' log-likelihood too (by 1.6 nats a step in 10 epochs on Meta-World), the known
    # failure of DPO-style losses; the NLL term keeps the winners' rising.
    sft_weight: float = ranged(1.0, ge=0)
    grad_clip: float = ranged(1.0, gt=0)


def gcpg_score(log_likelihood: float, r_ext: float, success: bool, w: GCPGWeights) -> float:
    """GRAPE's generalised cost-aware preference score of one trajectory."""
    return w.self_weight * log_likelihood + w.ext_weight * r_ext + w.success_weight * float(success)


def preference_pairs(scores: Sequence[float], m: int, groups: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """(winner, loser) index pairs: the i-th best with the i-th worst, i < m (m <= len/2),
    within each group of ``groups`` (e.g. trajectories from one start state) or over all.
    Pairs of equal score carry no preference and are dropped. Ties in rank keep input order."""
    if m < 1:
        raise VlarlError(f"pairs per task must be >= 1, got {m}")
    score = np.asarray(scores, np.float64)
    labels = np.zeros(len(score), int) if groups is None else np.asarray(groups)
    pairs = []
    for g in dict.fromkeys(labels.tolist()):  # groups in order of first appearance
        idx = np.flatnonzero(labels == g)
        k = min(m, len(idx) // 2)
        order = idx[np.argsort(-score[idx], kind="stable")]
        best, worst = order[:k], order[::-1][:k]
        pairs += [(int(w), int(lo)) for w, lo in zip(best, worst) if score[w] > score[lo]]
    return pairs


def tpo_loss(logp_w: torch.Tensor, logp_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean TPO loss over pairs and its diagnostics (the implicit reward margin, and the
    fraction of pairs the policy already ranks right)."""
    margin = (logp_w - ref_w) - (logp_l - ref_l)
    loss = -F.logsigmoid(beta * margin).mean()
    return loss, {"tpo_loss": float(loss.detach()), "reward_margin": float(beta * margin.detach().mean()),
                  "pair_accuracy": float((margin.detach() > 0).float().mean())}


def trajectory_log_probs(step_log_prob: StepLogProb, lengths: Sequence[int], window: int) -> torch.Tensor:
    """Σ_t log π(a_t | o_t) of each trajectory, window by window, without a graph."""
    with torch.no_grad():
        return torch.stack([sum((step_log_prob(j, s, min(s + window, n)).sum() for s in range(0, n, window)),
                                torch.zeros(())) for j, n in enumerate(lengths)])


def tpo_step(step_log_prob: StepLogProb, lengths: Sequence[int], pairs: Sequence[tuple[int, int]],
             ref_logp: torch.Tensor, params: Sequence[torch.nn.Parameter], opt: torch.optim.Optimizer,
             cfg: TPOConfig) -> dict[str, float]:
    """One optimiser step of TPO (+ optional winner NLL) on ``pairs`` of trajectories, with the
    exact gradient accumulated window by window."""
    if not pairs:
        raise VlarlError("tpo_step: no pairs")
    used = sorted({j for p in pairs for j in p})
    logp = torch.zeros(len(lengths))
    logp[used] = trajectory_log_probs(lambda j, s, e: step_log_prob(used[j], s, e), [lengths[j] for j in used], cfg.window)
    logp.requires_grad_(True)
    w, lo = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    loss, stats = tpo_loss(logp[w], logp[lo], ref_logp[w], ref_logp[lo], cfg.beta)
    if cfg.sft_weight > 0:  # per-step NLL of the winners, so long winners do not dominate
        n_w = torch.tensor([float(lengths[j]) for j in w.tolist()])
        nll = -(logp[w] / n_w).mean()
        loss = loss + cfg.sft_weight * nll
        stats["winner_nll_per_step"] = float(nll.detach())
    (coeff,) = torch.autograd.grad(loss, logp)  # dL / d log π(τ_j): zero for unused trajectories
    opt.zero_grad(set_to_none=True)
    for j in used:
        if coeff[j] == 0:
            continue
        for s in range(0, lengths[j], cfg.window):
            (coeff[j] * step_log_prob(j, s, min(s + cfg.window, lengths[j])).sum()).backward()
    stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    opt.step()
    return stats
