import math

import pytest
import torch

from vlarl.models import PolicyConfig, VLAPolicy, group_params, set_trainable
from vlarl.models.encoders import ConvEncoder, EfficientNetLite0Encoder
from vlarl.models.heads import CriticHead, DeterministicHead, TanhGaussianHead, TokenHead, ValueHead
from vlarl.models.lora import merge_lora, unmerge_lora
from vlarl.models.trunk import TokenLearner


def images(b=3, size=64):
    return torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_encoder_shapes_and_frozen_pretrained():
    eff = EfficientNetLite0Encoder()
    out = eff(images(2, 84))
    assert out.shape == (2, 25, 112)  # a 5x5 grid at stride 16
    assert not any(p.requires_grad for p in eff.parameters())
    assert not any(m.training for m in eff.modules())  # frozen: batch norm in eval mode from the start
    eff.train()
    assert not any(m.training for m in eff.modules())
    assert ConvEncoder()(images(2, 84)).shape == (2, 36, 64)
    # The pretrained weights are really loaded: they differ from a fresh random init.
    from efficientnet_lite_pytorch import EfficientNet

    fresh = EfficientNet.from_name("efficientnet-lite0")
    assert not torch.allclose(fresh._conv_stem.weight, eff.stem[0].weight)


def test_instruction_embeddings_cached_and_distinct():
    from vlarl.models.language import InstructionEncoder

    enc = InstructionEncoder()
    a = enc(["open the drawer", "close the drawer"])
    assert a.shape == (2, 384) and len(enc.cache) == 2
    assert torch.allclose(a.norm(dim=1), torch.ones(2), atol=1e-4)
    assert (a[0] @ a[1]).item() < 0.999
    b = enc(["close the drawer"])
    assert torch.equal(b[0], a[1])


@pytest.mark.parametrize("chunk", [1, 4])
def test_head_shapes(chunk):
    feats = torch.randn(5, 32)
    for head in (DeterministicHead(32, 3, chunk), TanhGaussianHead(32, 3, chunk), TokenHead(32, 3, chunk, bins=16)):
        a = head(feats)
        assert a.shape == (5, chunk, 3) and a.abs().max() <= 1
        assert head.bc_loss(feats, a.detach()).ndim == 0
    assert ValueHead(32)(feats).shape == (5,)
    assert CriticHead(32, 3, ensemble=4)(feats, torch.rand(5, 3)).shape == (4, 5)


def test_token_head_log_prob_matches_hand_computation():
    torch.manual_seed(0)
    head = TokenHead(4, 2, chunk=1, bins=5)  # tokens at -1, -0.5, 0, 0.5, 1
    feats = torch.randn(1, 4)
    actions = torch.tensor([[[0.49, -1.0]]])  # -> tokens 3 and 0
    logits = head.logits(feats)[0, 0]
    expected = math.log(torch.softmax(logits[0], -1)[3].item()) + math.log(torch.softmax(logits[1], -1)[0].item())
    assert head.log_prob(feats, actions).item() == pytest.approx(expected, abs=1e-5)
    assert torch.equal(head.tokenize(actions), torch.tensor([[[3, 0]]]))
    assert torch.allclose(head.detokenize(torch.tensor([3, 0])), torch.tensor([0.5, -1.0]))


def test_tanh_gaussian_log_prob_matches_hand_computation():
    torch.manual_seed(0)
    head = TanhGaussianHead(4, 1)
    feats = torch.randn(1, 4)
    mu, log_std = head.distribution(feats)
    a = torch.tensor([[[0.3]]])
    u = math.atanh(0.3)
    sigma = math.exp(log_std.item())
    gauss = -0.5 * ((u - mu.item()) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    expected = gauss - math.log(1 - 0.3**2)
    assert head.log_prob(feats, a).item() == pytest.approx(expected, abs=1e-4)


def test_critic_ensemble_members_are_independent():
    critic = CriticHead(8, 2, ensemble=3)
    q = critic(torch.randn(4, 8), torch.randn(4, 2))
    assert not torch.allclose(q[0], q[1])  # different initialisations
    members = torch.tensor([2, 0])
    torch.testing.assert_close(critic(torch.randn(4, 8).zero_(), torch.zeros(4, 2), members),
                               critic(torch.zeros(4, 8), torch.zeros(4, 2))[members])
    q[0].sum().backward()
    assert critic.weights[0].grad[1].abs().sum() == 0 and critic.weights[0].grad[0].abs().sum() > 0


def test_token_learner_pools_to_fixed_number_of_tokens():
    assert TokenLearner(16, 4)(torch.randn(2, 25, 16)).shape == (2, 4, 16)


def small_policy(**kw):
    cfg = PolicyConfig(encoder="conv", dim=32, layers=1, heads=2, learned_tokens=4, **kw)
    return VLAPolicy(cfg, ["a", "b"], 32, state_dim=3, action_dim=2)


def batch(b=4):
    return {"a": images(b, 32), "b": images(b, 32)}, torch.randn(b, 3), torch.randn(b, 384)


def test_policy_groups_cover_every_parameter_and_freezing_stops_gradients():
    policy = small_policy()
    names = {n for n, _ in policy.named_parameters()}
    grouped = {id(p) for g in ("backbone", "adapter", "head") for p in group_params(policy, g)}
    assert len(grouped) == len(names)
    set_trainable(policy, "head")
    pixels, state, lang = batch()
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.1)
    policy(pixels, state, lang).pow(2).sum().backward()
    opt.step()
    for n, p in policy.named_parameters():
        if policy.param_group(n) == "head":
            assert p.grad is not None, n
        else:
            assert p.grad is None and torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in policy.named_parameters())


def test_lora_groups_and_merge_unmerge_keep_outputs():
    policy = small_policy(lora_rank=4)
    lora = [n for n, _ in policy.named_parameters() if "lora_" in n]
    assert lora and all(policy.param_group(n) == "adapter" for n in lora)
    assert policy.param_group("trunk.blocks.0.qkv.base_layer.weight") == "backbone"
    with torch.no_grad():  # make the adapters non-zero so merging changes the weights
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    policy.eval()
    pixels, state, lang = batch()
    with torch.no_grad():
        out = policy(pixels, state, lang)
        base_before = policy.trunk.blocks[0].qkv.base_layer.weight.clone()
        merge_lora(policy.trunk)
        assert not torch.equal(policy.trunk.blocks[0].qkv.base_layer.weight, base_before)
        merged = policy(pixels, state, lang)
        unmerge_lora(policy.trunk)
        unmerged = policy(pixels, state, lang)
    torch.testing.assert_close(merged, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unmerged, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(policy.trunk.blocks[0].qkv.base_layer.weight, base_before)


def test_policy_rejects_wrong_inputs():
    from vlarl.errors import VlarlError

    policy = small_policy()
    pixels, state, lang = batch()
    with pytest.raises(VlarlError, match="missing \\['b'\\]"):
        policy({"a": pixels["a"]}, state, lang)
    with pytest.raises(VlarlError, match="unknown head 'mse'"):
        VLAPolicy(PolicyConfig(encoder="conv", head="mse"), ["a"], 32, 3, 2)


def test_cached_tokens_equal_live_tokens_at_inference():
    """Tokens cached right after construction must be what the policy sees when acting."""
    from vlarl.recipes.sft import SFTData, cache_tokens  # noqa: F401

    policy = VLAPolicy(PolicyConfig(dim=32, layers=1), ["a"], 48, state_dim=3, action_dim=2)
    px = {"a": images(4, 48)}
    with torch.no_grad():
        cached = policy.encode_images(px)  # as cache_tokens computes them, before training starts
        policy.train()
        during_training = policy.encode_images(px)
        policy.eval()
        acting = policy.encode_images(px)
    torch.testing.assert_close(cached, acting)
    torch.testing.assert_close(during_training, acting)
