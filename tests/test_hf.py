"""A real transformers VLM as the trunk: a tiny random Idefics3 (SmolVLM's architecture)
built and saved in the test itself; nothing is downloaded."""

import pytest
import torch

from vlarl.models.groups import group_sizes
from vlarl.models.lora import merge_lora, unmerge_lora


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Idefics3Config, Idefics3Model, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_vlm")
    words = ["[PAD]", "[UNK]", "open", "close", "the", "drawer", "door", "press", "button"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    cfg = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=len(words) + 2),
        scale_factor=2, image_token_id=len(words) + 1)
    torch.manual_seed(0)
    Idefics3Model(cfg).save_pretrained(path)
    return path


def test_hf_trunk_trains_with_lora_and_groups(tiny_vlm):
    from vlarl.models.hf import HFPolicy, HFVLMTrunk

    torch.manual_seed(0)
    policy = HFPolicy(HFVLMTrunk(tiny_vlm, state_dim=3, lora_rank=4), ["cam"], action_dim=2)
    sizes = group_sizes(policy)
    assert sizes["backbone"]["trainable"] == 0 and sizes["backbone"]["total"] > 0
    assert sizes["adapter"]["trainable"] > 0 and sizes["head"]["trainable"] > 0
    pixels = {"cam": torch.randint(0, 256, (4, 48, 48, 3), dtype=torch.uint8)}
    state = torch.randn(4, 3)
    instructions = ["open the drawer", "close the door", "press the button", "open the door"]
    target = torch.rand(4, 1, 2) * 1.6 - 0.8
    backbone = {n: p.detach().clone() for n, p in policy.named_parameters() if policy.param_group(n) == "backbone"}
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = policy.bc_loss(pixels, state, instructions, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for n, p in policy.named_parameters():
        if n in backbone:
            assert torch.equal(p, backbone[n]), n
    policy.eval()
    with torch.no_grad():
        out = policy(pixels, state, instructions)
        merge_lora(policy.trunk)
        merged = policy(pixels, state, instructions)
        unmerge_lora(policy.trunk)
    torch.testing.assert_close(merged, out, atol=1e-5, rtol=1e-5)


def test_missing_model_directory_is_a_clear_error(tmp_path):
    from vlarl.errors import CheckpointError
    from vlarl.models.hf import HFVLMTrunk

    with pytest.raises(CheckpointError, match="no config.json"):
        HFVLMTrunk(tmp_path, state_dim=3)
