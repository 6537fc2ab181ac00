"""LoRA adapters on a module's linear layers, through peft."""

from __future__ import annotations

from torch import nn


def add_lora(module: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             targets: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")) -> nn.Module:
    """Inject LoRA into the named linear layers of ``module`` in place; base weights frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; it divides by r
                         lora_dropout=dropout, target_modules=list(targets))
    module = inject_adapter_in_model(config, module)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return module


def _lora_layers(module: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer)]


def merge_lora(module: nn.Module) -> None:
    """Fold the adapters into the base weights (faster inference; same outputs)."""
    for layer in _lora_layers(module):
        layer.merge()


def unmerge_lora(module: nn.Module) -> None:
    """Undo ``merge_lora``: base weights back, adapters separate again."""
    for layer in _lora_layers(module):
        layer.unmerge()


def is_lora_param(name: str) -> bool:
    return "lora_" in name
