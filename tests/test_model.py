"""RWKV model (x060, x052, x070): modes agree, options start neutral, initialisation,
configuration checks."""

import pytest
import torch
from factories import randomize_, tiny_config

from conrwkv.model import RWKV, ModelConfig


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("options", [
    dict(),
    dict(arch="x052"),
    dict(conv_kernel=4),
    dict(conv_kernel=1, state_tuning=True),
    dict(n_layer=1, conv_kernel=3, state_tuning=True),
    dict(arch="x070"),
    dict(arch="x070", n_layer=3, conv_kernel=3, state_tuning=True),
    dict(arch="x070", n_layer=1, n_embd=48, head_size=16, state_tuning=True),
])
def test_parallel_equals_rnn_equals_two_halves(options):
    model = randomize_(RWKV(tiny_config(**options))).eval()
    idx = torch.randint(0, 97, (2, 45))
    with torch.no_grad():
        full, state_full = model(idx)
        step_logits, state = [], None
        for t in range(idx.shape[1]):
            logits, state = model(idx[:, t:t + 1], state)
            step_logits.append(logits)
        first, mid = model(idx[:, :20])
        second, state_halves = model(idx[:, 20:], mid)
    assert rel(torch.cat(step_logits, 1), full) < 1e-5
    assert rel(torch.cat([first, second], 1), full) < 1e-5
    for a, b, c in zip(state_full, state, state_halves):
        assert rel(b.wkv, a.wkv) < 1e-5 and rel(c.wkv, a.wkv) < 1e-5
        torch.testing.assert_close(b.att_shift, a.att_shift)
        torch.testing.assert_close(c.ffn_shift, a.ffn_shift)
        if a.conv is not None:
            torch.testing.assert_close(c.conv, a.conv)


@pytest.mark.parametrize("arch", ["x060", "x070"])
def test_conv_at_init_and_zero_time_state_leave_logits_unchanged(arch):
    base = randomize_(RWKV(tiny_config(arch=arch)))
    adapted = RWKV(tiny_config(arch=arch, conv_kernel=4, state_tuning=True))
    missing, unexpected = adapted.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and all(k.endswith(("conv.weight", "conv.bias", "time_state")) for k in missing)
    adapted.blocks[0].att.init_adapters()
    adapted.blocks[1].att.init_adapters()
    idx = torch.randint(0, 97, (3, 30))
    torch.testing.assert_close(adapted(idx)[0], base(idx)[0], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["x060", "x070"])
def test_trained_state_and_conv_change_the_output(arch):
    model = randomize_(RWKV(tiny_config(arch=arch, conv_kernel=3, state_tuning=True)))
    idx = torch.randint(0, 97, (1, 10))
    before = model(idx)[0]
    with torch.no_grad():
        model.blocks[0].att.time_state.normal_()
    after_state = model(idx)[0]
    with torch.no_grad():
        model.blocks[1].att.conv.weight.normal_()
    assert not torch.allclose(before, after_state)
    assert not torch.allclose(after_state, model(idx)[0])


@pytest.mark.parametrize("arch", ["x060", "x070"])
def test_gradients_reach_time_state_and_conv(arch):
    model = randomize_(RWKV(tiny_config(arch=arch, conv_kernel=3, state_tuning=True)))
    model(torch.randint(0, 97, (2, 12)))[0].square().mean().backward()
    for block in model.blocks:
        assert block.att.time_state.grad.abs().sum() > 0
        assert block.att.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["x060", "x052", "x070"])
def test_init_from_scratch_single_layer_starts_as_the_identity(arch):
    # The official init zeros att.output and ffn.value, so every block adds nothing at first.
    config = ModelConfig(vocab_size=50, n_layer=1, n_embd=32, head_size=16, arch=arch)
    model = RWKV(config)
    idx = torch.randint(0, 50, (2, 16))
    hidden, _ = model.forward_hidden(idx)
    expected = model.ln_out(model.blocks[0].ln0(model.emb(idx)))
    torch.testing.assert_close(hidden, expected)
    assert torch.isfinite(model(idx)[0]).all()


def test_init_follows_the_official_formulas():
    model = RWKV(ModelConfig(vocab_size=50, n_layer=3, n_embd=64, head_size=16))
    att = model.blocks[2].att                      # last layer: r0 = 1, r1 = 1/3
    n = torch.arange(64.0)
    torch.testing.assert_close(att.time_decay.flatten(), -6 + 5 * (n / 63) ** 2.0)
    torch.testing.assert_close(att.time_faaaa.flatten(), (1 - n / 63) + 0.1 * ((n + 1) % 3 - 1))
    assert torch.all(model.blocks[1].att.output.weight == 0)
    torch.testing.assert_close(att.ln_x.weight, torch.full((64,), 1.0))


def test_x070_init_follows_rwkv_lm():
    model = RWKV(ModelConfig(vocab_size=50, n_layer=3, n_embd=64, head_size=16, arch="x070"))
    att, ffn = model.blocks[2].att, model.blocks[2].ffn       # last layer: r0 = 1, r1 = 1/3
    n = torch.arange(64.0)
    linear = n / 63 - 0.5
    zigzag = ((n % 16) - 7.5) / 7.5
    zigzag = zigzag * zigzag.abs()
    torch.testing.assert_close(att.w0.flatten(), -6 + 6 * (n / 63) ** 2 + 0.5 + 2.5 * zigzag)
    torch.testing.assert_close(att.a0.flatten(), -0.19 + 0.3 * zigzag + 0.4 * linear)
    torch.testing.assert_close(att.x_r.flatten(), 1 - (n / 64) ** (0.2 / 3))
    torch.testing.assert_close(ffn.x_k.flatten(), 1 - (n / 64) ** (1 / 81))
    for name in ("w", "a", "v", "g"):
        assert torch.all(getattr(att, f"{name}1") == 0)
        lora_out = getattr(att, f"{name}2")
        torch.testing.assert_close(lora_out @ lora_out.T, 0.01 * torch.eye(lora_out.shape[0]))
    assert torch.all(att.output.weight == 0) and torch.all(ffn.value.weight == 0)
    assert torch.all(att.r_k == -0.04) and torch.all(att.k_a == 1.02)
    assert (model.config.w_rank, model.config.a_rank, model.config.v_rank, model.config.g_rank) == (32,) * 4


def test_x070_config_derives_the_official_ranks():
    c = ModelConfig(n_embd=2048, arch="x070")
    assert (c.w_rank, c.a_rank, c.v_rank, c.g_rank, c.dim_ffn) == (128, 128, 64, 224, 8192)
    assert ModelConfig(n_embd=2048).w_rank == 0


@pytest.mark.parametrize("arch", ["x060", "x070"])
def test_gradient_checkpointing_gives_the_same_gradients(arch):
    torch.manual_seed(1)
    a = randomize_(RWKV(tiny_config(arch=arch, conv_kernel=2)))
    b = randomize_(RWKV(tiny_config(arch=arch, conv_kernel=2, grad_cp=True)))
    idx = torch.randint(0, 97, (2, 20))
    for m in (a, b):
        m.train()
        m(idx)[0].logsumexp(-1).mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


def test_embeddings_input_equals_token_input():
    model = randomize_(RWKV(tiny_config()))
    idx = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(model(model.emb(idx))[0], model(idx)[0])


def test_bad_inputs_are_refused():
    model = RWKV(tiny_config())
    with pytest.raises(ValueError, match="embeddings"):
        model(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_embd=64, dim_att=48, head_size=32), "multiple of head_size"),
    (dict(arch="x090"), "arch must be"),
    (dict(arch="x070", n_embd=64, dim_att=128, head_size=16), "dim_att == n_embd"),
    (dict(conv_kernel=-1), "conv_kernel"),
])
def test_config_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_config_derives_the_usual_sizes():
    c = ModelConfig(n_embd=2048)
    assert (c.dim_att, c.dim_ffn, c.n_head, c.mix_rank, c.decay_rank) == (2048, 7168, 32, 32, 64)
    assert ModelConfig(n_embd=4096).mix_rank == 64
