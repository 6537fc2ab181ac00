"""Train a binary image success classifier from labelled episodes, report held-out figures.

    vlarl collect --env panda/pick-cube --obs-mode pixels --image-size 128 --episodes 40 \
        --noise 0.3 env.options.terminate_on_success=false --out data/pick-cube-labels
    vlarl reward-classifier train --data data/pick-cube-labels run_dir=runs/pick-cube-classifier

A frame's label is the env's ``is_success`` for the step that produced it (the first frame of
an episode is a failure). Whole episodes are held out (``holdout`` of them), so the reported
precision and recall are on trajectories the classifier never saw. The encoder is frozen,
so its tokens are computed once and only the head trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vlarl.errors import VlarlError
from vlarl.models.policy import ENCODERS
from vlarl.models.reward_classifier import RewardClassifier
from vlarl.runtime import Run, load_config, save_config, seed_everything
from vlarl.runtime.checkpoint import latest_checkpoint, load_checkpoint
from vlarl.runtime.config import check_ranges, ranged


@dataclass
class RewardClassifierConfig:
    data: list[str] = field(default_factory=list)  # vlarl datasets with images and is_success
    cameras: list[str] | None = None  # None: every camera of the data
    image_size: int | None = ranged(None, ge=1)  # read from the data; recorded so the run loads without it
    encoder: str = ranged("efficientnet-lite0", choices=ENCODERS)
    steps: int = ranged(1500, ge=1)
    batch_size: int = ranged(128, ge=1)
    lr: float = ranged(3e-4, gt=0)
    weight_decay: float = ranged(1e-4, ge=0)
    holdout: float = ranged(0.25, ge=0, lt=1)  # share of episodes held out for precision / recall
    threshold: float = ranged(0.5, ge=0, le=1)
    balance: bool = True  # sample positives and negatives equally (successes are rare frames)
    skip_bad_episodes: bool = False  # leave damaged episodes out (named and counted) instead of stopping
    seed: int = ranged(0, ge=0)
    run_dir: str = "runs/reward-classifier"


def _frames(paths: list[str], cameras: list[str] | None, skip_bad: bool = False
            ) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray], list[str], list[str]]:
    """Per episode: images per camera (T+1, H, W, 3) and labels (T+1,); then the cameras and
    the damaged episodes left out (with ``skip_bad``; else a damaged episode is an error)."""
    from vlarl.data import EpisodeDataset

    if not paths:
        raise VlarlError("reward_classifier.data: give at least one dataset (--data DIR)")
    images, labels, skipped = [], [], []
    shapes: dict[str, list[int]] = {}  # camera -> image shape, from the first dataset
    for path in paths:
        data = EpisodeDataset(path)
        have = data.cameras
        if not have:
            raise VlarlError(f"{path}: the dataset has no images; collect with --obs-mode pixels")
        cameras = cameras or list(have)
        missing = [c for c in cameras if c not in have]
        if missing:
            raise VlarlError(f"{path}: reward_classifier.cameras {missing} not in the dataset (it has {have})")
        for c in cameras:
            shape = data.info["features"][f"observation.images.{c}"]["shape"]
            if shapes.setdefault(c, shape) != shape:  # one classifier sees them all: the same images
                raise VlarlError(f"{path}: camera {c!r} images are {shape}; the first dataset's are {shapes[c]}")
        for _, ep in data.readable(skip_bad, keys=[f"observation.images.{c}" for c in cameras] + ["is_success"]):
            images.append({c: ep[f"observation.images.{c}"] for c in cameras})
            labels.append(np.concatenate([[False], ep["is_success"]]))
        skipped += data.skipped
    return images, labels, list(cameras or []), skipped


def train_reward_classifier(cfg: RewardClassifierConfig | None = None, resume: Run | None = None,
                            progress: bool = True) -> dict[str, Any]:
    check_ranges(cfg, "reward_classifier")  # before a run directory is made
    run, cfg = Run.start(cfg, resume, exist_ok=True)
    seed_everything(cfg.seed)
    images, labels, cameras, skipped = _frames(cfg.data, cfg.cameras, cfg.skip_bad_episodes)
    size = next(iter(images[0].values())).shape[1]
    cfg.cameras, cfg.image_size = cameras, size
    save_config(cfg, run.path / "config.yaml")  # what loading the classifier needs
    n_eps = len(images)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(n_eps)
    n_test = max(1, round(cfg.holdout * n_eps)) if n_eps > 1 else 0
    test_eps, train_eps = sorted(order[:n_test]), sorted(order[n_test:])
    model = RewardClassifier(cameras, size, cfg.encoder)

    def encode(eps) -> tuple[torch.Tensor, torch.Tensor]:
        toks, ys = [], []
        for e in eps:
            for start in range(0, len(labels[e]), 64):
                pix = {c: torch.as_tensor(images[e][c][start:start + 64]) for c in cameras}
                toks.append(model.tokens(pix))
            ys.append(torch.as_tensor(labels[e], dtype=torch.float32))
        return torch.cat(toks), torch.cat(ys)

    x_train, y_train = encode(train_eps)
    if y_train.sum() == 0 or y_train.sum() == len(y_train):
        raise VlarlError(f"reward_classifier.data: training frames need both successes and failures; "
                         f"got {int(y_train.sum())} successes of {len(y_train)} frames")
    pos, neg = torch.nonzero(y_train).squeeze(1), torch.nonzero(y_train == 0).squeeze(1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for step in tqdm(range(1, cfg.steps + 1), desc="reward classifier", disable=not progress):
        if cfg.balance:
            half = cfg.batch_size // 2
            idx = torch.cat([pos[torch.randint(len(pos), (half,), generator=gen)],
                             neg[torch.randint(len(neg), (cfg.batch_size - half,), generator=gen)]])
        else:
            idx = torch.randint(len(y_train), (cfg.batch_size,), generator=gen)
        loss = F.binary_cross_entropy_with_logits(model.logits_from_tokens(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            run.log(step, classifier_loss=loss.item())
    model.eval()
    results: dict[str, Any] = {"cameras": cameras, "train_episodes": len(train_eps), "test_episodes": len(test_eps),
                               "train_frames": len(y_train), "train_positives": int(y_train.sum()),
                               "threshold": cfg.threshold}
    if cfg.skip_bad_episodes:
        results["skipped_episodes"] = {"count": len(skipped), "episodes": skipped}
    results["train"] = _scores(model, x_train, y_train, cfg.threshold)
    if test_eps:
        x_test, y_test = encode(test_eps)
        results["test"] = _scores(model, x_test, y_test, cfg.threshold)
    run.save(cfg.steps, {"classifier": model})
    run.write_results(results)
    run.close()
    return results


@torch.no_grad()
def _scores(model: RewardClassifier, x: torch.Tensor, y: torch.Tensor, threshold: float) -> dict[str, float]:
    pred = torch.sigmoid(torch.cat([model.logits_from_tokens(x[i:i + 512]) for i in range(0, len(x), 512)])) >= threshold
    truth = y.bool()
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    return {"frames": len(y), "positives": int(truth.sum()), "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1), "accuracy": float((pred == truth).float().mean())}


def load_reward_classifier(run_dir: str | Path) -> RewardClassifier:
    """The trained classifier of a ``vlarl reward-classifier train`` run, in eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise VlarlError(f"{run_dir}: not a reward-classifier run (no config.yaml)")
    cfg = load_config(RewardClassifierConfig, run_dir / "config.yaml")
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None or not cfg.cameras or not cfg.image_size:
        raise VlarlError(f"{run_dir}: the reward classifier has no trained weights yet")
    model = RewardClassifier(cfg.cameras, cfg.image_size, cfg.encoder)
    load_checkpoint(ckpt, {"classifier": model})
    return model.eval()


def check_fits(classifier: RewardClassifier, env: Any, where: str) -> None:
    """Refuse a classifier trained on cameras or an image size the env does not give."""
    pixels = getattr(env.observation_space, "spaces", {}).get("pixels")
    have = {c: tuple(s.shape) for c, s in pixels.spaces.items()} if pixels is not None else {}
    want = (classifier.image_size, classifier.image_size, 3)
    if any(have.get(c) != want for c in classifier.cameras):
        raise VlarlError(f"{where}: the reward classifier was trained on cameras {classifier.cameras} at "
                         f"{classifier.image_size} px; this env gives {have or 'no images'} (set env.cameras and "
                         "env.image_size to match, or train a classifier on this env's images)")
