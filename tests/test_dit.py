"""DiT / SiT backbone: registry, encoder depth, patchify, the encode/decode seam, CCUA on it."""

from __future__ import annotations

import pytest
import torch

from ccua.config import ModelConfig, load_config, with_changes
from ccua.models.dit import DiTConfig
from ccua.methods.ccua import CCUAConfig
from ccua.build import build_objective
from ccua.diffusion import Flow
from ccua.methods.base import PassOutputs, StepContext
from ccua.methods.ccua import CCUA, ucl_loss
from ccua.build import build_model, load_checked_config
from ccua.models.dit import DIT_SIZES, DiT, encoder_blocks, resolve_dit_size


def tiny_dit(encoder_depth: str = "N/4", depth: int = 4, channels: int = 3, num_classes: int = 5) -> DiT:
    torch.manual_seed(0)
    return DiT(in_channels=channels, num_classes=num_classes, input_size=8, patch_size=2, hidden_size=32,
               depth=depth, num_heads=4, encoder_depth=encoder_depth)


def randomize_(model: torch.nn.Module) -> None:
    """Give the zero-initialised (adaLN-Zero) layers weights, so every block does something."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.05)


@pytest.mark.parametrize("family,depth,hidden,heads", [("S", 12, 384, 6), ("B", 12, 768, 12),
                                                       ("L", 24, 1024, 16), ("XL", 28, 1152, 16)])
@pytest.mark.parametrize("prefix", ["DiT", "SiT"])
@pytest.mark.parametrize("patch", [2, 4, 8])
def test_named_sizes(prefix, family, depth, hidden, heads, patch):
    size = resolve_dit_size(f"{prefix}-{family}/{patch}")
    assert (size.depth, size.hidden_size, size.num_heads, size.patch_size, size.mlp_ratio) == \
        (depth, hidden, heads, patch, 4.0)


def test_registry_is_complete_and_rejects_unknown():
    assert len(DIT_SIZES) == 2 * 4 * 3
    with pytest.raises(ValueError, match="SiT-S/2"):
        resolve_dit_size("SiT-M/2")


def test_sit_s2_builds_with_the_published_size():
    config = with_changes(ModelConfig(arch="dit"), {"dit": DiTConfig(size="SiT-S/2")})
    model = build_model(config, in_channels=4, num_classes=1000, resolution=8)
    # N/4 taps the output of block index 3, as the released SiT code: 4 blocks
    assert (model.depth, model.hidden_size, model.patch_size, model.encoder_depth) == (12, 384, 2, 4)
    assert model.blocks[0].attn.num_heads == 6
    n_params = sum(p.numel() for p in model.parameters())
    assert 32e6 < n_params < 34e6  # the DiT paper lists S/2 at 33M


@pytest.mark.parametrize("spec,depth,expected", [
    ("N/8", 12, 2), ("N/4", 12, 4), ("N/2", 12, 7), ("3N/4", 12, 10), ("N", 12, 12), ("5", 12, 5), (7, 12, 7),
    ("N/8", 4, 1), ("N/4", 4, 2), ("N/2", 4, 3), ("3N/4", 4, 4), ("N", 4, 4), ("N/4", 28, 8), ("3N/4", 28, 22),
])
def test_encoder_blocks(spec, depth, expected):
    assert encoder_blocks(spec, depth) == expected


@pytest.mark.parametrize("spec", ["N/3", "half", "0", "13", "-1", "2.5", ""])
def test_encoder_blocks_rejects(spec):
    with pytest.raises(ValueError, match="encoder_depth"):
        encoder_blocks(spec, 12)


def test_patchify_round_trip_and_layout():
    model = tiny_dit()
    x = torch.randn(2, 3, 8, 8)
    patches = model.patchify(x)
    assert patches.shape == (2, 16, 2 * 2 * 3)
    assert torch.equal(model.unpatchify(patches), x)
    # token r * grid + c is the p x p patch at row r, column c, laid out (p, p, C)
    r, c, p = 1, 3, 2
    expected = x[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p].permute(0, 2, 3, 1).reshape(2, -1)
    assert torch.equal(patches[:, r * 4 + c], expected)


def test_position_embedding_is_fixed_and_distinct():
    model = tiny_dit()
    pos = model.pos_embed
    assert pos.shape == (1, 16, 32) and not pos.requires_grad
    assert "pos_embed" not in dict(model.named_parameters())
    assert torch.cdist(pos[0], pos[0]).add(torch.eye(16)).min() > 0.1  # no two tokens share a position code


def test_adaln_zero_starts_at_zero_prediction():
    model = tiny_dit()
    out = model(torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 5]))
    assert out.shape == (2, 3, 8, 8)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("spec,k", [("N/8", 2), ("N/4", 3), ("N/2", 5), ("3N/4", 7), ("N", 8), ("3", 3)])
def test_encode_decode_equals_forward(spec, k):
    model = tiny_dit(spec, depth=8)
    randomize_(model)
    assert model.encoder_depth == k
    x, t, y = torch.randn(3, 3, 8, 8), torch.rand(3), torch.tensor([0, 2, model.null_label])
    h, context = model.encode(x, t, y)
    assert h.shape == (3, 16, 32)
    out = model.decode(h, context)
    assert out.shape == x.shape
    torch.testing.assert_close(out, model(x, t, y), rtol=0, atol=0)
    # h really is the activation after block k: run the blocks by hand
    ref = model.x_embedder(x).flatten(2).transpose(1, 2) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y)
    for block in model.blocks[:k]:
        ref = block(ref, c)
    torch.testing.assert_close(h, ref)


def test_null_label_is_a_learned_row():
    model = tiny_dit(num_classes=5)
    randomize_(model)
    assert model.null_label == 5 and model.y_embedder.num_embeddings == 6
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    uncond = model(x, t, torch.full((2,), model.null_label))
    cond = model(x, t, torch.tensor([1, 1]))
    assert torch.isfinite(uncond).all() and not torch.allclose(cond, uncond)
    with pytest.raises(IndexError):
        model(x, t, torch.full((2,), 6))


def test_wrong_input_size_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        DiT(3, 5, input_size=9, patch_size=2, hidden_size=32, depth=2, num_heads=4)
    with pytest.raises(ValueError, match="8x8"):
        tiny_dit()(torch.randn(1, 3, 16, 16), torch.rand(1), torch.tensor([0]))


def test_build_model_from_config_fields():
    config = with_changes(ModelConfig(arch="dit"),
                          {"dit": DiTConfig(depth=3, hidden_size=64, num_heads=2, patch_size=4, encoder_depth="N")})
    model = build_model(config, in_channels=1, num_classes=10, resolution=16)
    assert isinstance(model, DiT)
    assert (model.depth, model.hidden_size, model.patch_size, model.encoder_depth, model.num_tokens) == (3, 64, 4, 3, 16)
    assert model(torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([0, 10])).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="encoder_depth"):
        build_model(with_changes(ModelConfig(arch="dit"), {"dit": DiTConfig(encoder_depth="N/3")}), 1, 10, 16)


def test_ucl_backprops_into_the_encoder():
    model = tiny_dit()
    randomize_(model)
    x, t = torch.randn(6, 3, 8, 8), torch.rand(6)
    h, _ = model.encode(x, t, torch.full((6,), model.null_label))
    loss = ucl_loss(h, temperature=0.1, weight=1 - t)  # [B, tokens, hidden] flattened inside
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert model.x_embedder.weight.grad.abs().sum() > 0
    assert model.blocks[model.encoder_depth - 1].attn.qkv.weight.grad.abs().sum() > 0
    # the decoder is not on the path of h
    assert all(p.grad is None for p in model.blocks[model.encoder_depth:].parameters())


def test_ccua_method_on_a_dit_with_the_flow_objective():
    """The trainer's batched pass ([x_t; x_t] with [y; null]) feeding CCUA's loss terms."""
    model = tiny_dit()
    randomize_(model)
    flow = Flow()
    torch.manual_seed(2)
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    batch = flow.noise_batch(images)
    dropped = torch.tensor([False, True, False, False])
    cond_labels = torch.where(dropped, model.null_label, labels)
    null = torch.full_like(labels, model.null_label)
    h, context = model.encode(torch.cat([batch.x_t, batch.x_t]), torch.cat([batch.t, batch.t]),
                              torch.cat([cond_labels, null]))
    pred = model.decode(h, context)
    outputs = PassOutputs(predictions=dict(zip(("cond", "uncond"), pred.chunk(2))),
                          representations=dict(zip(("cond", "uncond"), h.chunk(2))))
    context_ = StepContext(batch=batch, labels=labels, cond_labels=cond_labels, dropped=dropped,
                           null_label=model.null_label, class_counts=torch.tensor([8, 4, 2, 1, 1]), objective=flow)
    terms = CCUA(CCUAConfig(alpha=0.05, gamma=0.05)).loss_terms(context_, outputs)
    assert set(terms) == {"ucl", "al"} and all(torch.isfinite(v) and v > 0 for v in terms.values())
    (terms["ucl"] + terms["al"]).backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.final_layer.linear.weight.grad.abs().sum() > 0  # AL reaches the decoder


@pytest.mark.parametrize("preset", ["sit_s2_imagenet_lt256", "sit_tiny_fashion_mnist_lt"])
def test_sit_presets_load(preset):
    config = load_config(preset)
    assert config.model.arch == "dit" and config.diffusion.objective == "flow"
    assert config.method.names == ["ccua"]
    assert isinstance(build_objective(config.diffusion), Flow)


def test_sit_s2_preset_is_the_published_setting():
    config = load_checked_config("sit_s2_imagenet_lt256")
    assert config.model.dit.size == "SiT-S/2" and config.model.dit.encoder_depth == "N/4"
    # the checked config shows the architecture the size names
    assert (config.model.dit.depth, config.model.dit.hidden_size, config.model.dit.num_heads) == (12, 384, 6)
    assert (config.method.ccua.alpha, config.method.ccua.gamma) == (0.05, 0.05)
    assert (config.train.batch_size, config.train.lr, config.train.ema_decay) == (48, 1e-4, 0.9999)
    assert (config.data.name, config.data.resolution, config.data.balanced_resampling) == ("latents", 32, 0.1)


def test_tiny_preset_model_runs():
    config = load_config("sit_tiny_fashion_mnist_lt")
    model = build_model(config.model, in_channels=1, num_classes=10, resolution=config.data.resolution)
    x = torch.randn(2, 1, config.data.resolution, config.data.resolution)
    assert model(x, torch.rand(2), torch.tensor([0, model.null_label])).shape == x.shape


# --------------------------------------------------------------------------- released checkpoints

def _in_release_layout(model: DiT, learn_sigma: bool) -> dict[str, torch.Tensor]:
    """``model``'s weights as the DiT/SiT release names and shapes them (timm's PatchEmbed and Mlp,
    ``embedding_table``, a saved ``pos_embed``, and with ``learn_sigma`` a variance half in the
    final layer's output: per pixel [prediction (C), variance (C)])."""
    state = {}
    for name, value in model.state_dict().items():
        name = (name.replace("x_embedder.", "x_embedder.proj.").replace("y_embedder.", "y_embedder.embedding_table.")
                .replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.2.", ".mlp.fc2."))
        state[name] = value.clone()
    state["pos_embed"] = model.pos_embed.clone()
    if learn_sigma:
        weight, bias = state["final_layer.linear.weight"], state["final_layer.linear.bias"]
        c, pixels = model.out_channels, weight.shape[0] // model.out_channels
        variance_w, variance_b = torch.randn_like(weight), torch.randn_like(bias)
        state["final_layer.linear.weight"] = torch.cat([weight.view(pixels, c, -1), variance_w.view(pixels, c, -1)],
                                                       1).view(2 * pixels * c, -1)
        state["final_layer.linear.bias"] = torch.cat([bias.view(pixels, c), variance_b.view(pixels, c)], 1).flatten()
    return state


@pytest.mark.parametrize("learn_sigma", [True, False], ids=["DiT (learned variance)", "SiT"])
def test_a_checkpoint_in_the_release_layout_loads_into_the_same_predictions(tmp_path, learn_sigma):
    from ccua.models.dit_release import load_release_weights

    source = tiny_dit(channels=4)
    randomize_(source)
    path = tmp_path / "release.pt"
    torch.save(_in_release_layout(source, learn_sigma), path)
    torch.manual_seed(5)
    target = DiT(in_channels=4, num_classes=5, input_size=8, patch_size=2, hidden_size=32, depth=4, num_heads=4)
    load_release_weights(target, path)
    x, t, y = torch.randn(3, 4, 8, 8), torch.rand(3), torch.tensor([0, 4, 5])
    torch.testing.assert_close(target(x, t, y), source(x, t, y))


def test_a_release_of_another_class_count_keeps_its_null_row_and_names_misfits(tmp_path):
    from ccua.checkpoint import CheckpointError
    from ccua.models.dit_release import load_release_weights

    source = tiny_dit(channels=4, num_classes=7)
    randomize_(source)
    torch.save({"ema": _in_release_layout(source, True)}, tmp_path / "release.pt")  # a training checkpoint's ema
    target = DiT(in_channels=4, num_classes=3, input_size=8, patch_size=2, hidden_size=32, depth=4, num_heads=4)
    load_release_weights(target, tmp_path / "release.pt")
    assert torch.equal(target.y_embedder.weight[3], source.y_embedder.weight[7])  # the null rows
    x, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    null = torch.tensor([3, 3])
    torch.testing.assert_close(target(x, t, null), source(x, t, torch.tensor([7, 7])))  # the unconditional model
    deeper = DiT(in_channels=4, num_classes=7, input_size=8, patch_size=2, hidden_size=32, depth=5, num_heads=4)
    with pytest.raises(CheckpointError, match="the release has no 'blocks.4"):
        load_release_weights(deeper, tmp_path / "release.pt")


def test_init_from_starts_a_training_from_the_release(tmp_path):
    from ccua.checkpoint import list_checkpoints, load_checkpoint
    from ccua.config import config_from_dict
    from ccua.training import train
    from tests.conftest import tiny_config_dict

    settings = tiny_config_dict(tmp_path / "runs", train={"steps": 1, "lr": 1e-12, "ema_decay": 0.0},
                                model={"arch": "dit", "dit": {"depth": 2, "hidden_size": 32, "num_heads": 4,
                                                              "patch_size": 2}})
    source = DiT(in_channels=1, num_classes=10, input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4)
    randomize_(source)
    torch.save(_in_release_layout(source, True), tmp_path / "release.pt")
    settings["model"]["dit"]["init_from"] = str(tmp_path / "release.pt")
    run = train(config_from_dict(settings))
    weights = load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["model"]
    for name, value in source.state_dict().items():  # one step at lr 1e-12 moves nothing visible
        torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6)
