"""Faithful to the released code: DDIM's update, the ancestral variance, where the DiT encoder
stops, the presets' settings, and one device default for every command."""

import math

import pytest
import torch

from ccua.build import load_checked_config
from ccua.config import load_config
from ccua.diffusion import DDPM
from ccua.models.dit import DiT, encoder_blocks


class TrueEpsilon:
    """The epsilon that explains x_t for one fixed x0: a perfect denoiser of a known image.
    Records every x it is given."""

    def __init__(self, ddpm: DDPM, x0: torch.Tensor):
        self.ddpm, self.x0, self.inputs = ddpm, x0, []

    def __call__(self, x, t):
        self.inputs.append((int(t[0]), x.clone()))
        ab = self.ddpm.alphas_cumprod[t.long()].view(-1, *[1] * (x.dim() - 1))
        return (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()


def _implied_noise(ddpm: DDPM, x: torch.Tensor, t: int, x0: torch.Tensor) -> torch.Tensor:
    ab = ddpm.alphas_cumprod[t]
    return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


def test_ddim_with_the_true_epsilon_recovers_x0_exactly_without_clipping():
    ddpm = DDPM()
    x0 = torch.tensor([[-1.5, -0.3, 0.0, 0.7, 1.4]], dtype=torch.float64)  # partly outside [-1, 1]
    noise = torch.randn(1, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = ddpm.ddim(TrueEpsilon(ddpm, x0), noise, steps=10)
    # the released sampler clips nothing: the perfect denoiser's image comes back as it is
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-6)


def test_clipped_ddim_steps_with_the_epsilon_of_the_clipped_x0():
    ddpm = DDPM()
    x0 = torch.tensor([[-1.5, 0.5, 1.4]], dtype=torch.float64)
    clipped = x0.clamp(-1, 1)
    noise = torch.randn(1, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    predict = TrueEpsilon(ddpm, x0)
    out = ddpm.ddim(predict, noise, steps=4, clip_x0=True)
    torch.testing.assert_close(out, clipped, rtol=0, atol=1e-6)
    # eta = 0 keeps the noise that explains x_t around the (clipped) x0 the same at every step:
    # each x the sampler visits lies on one DDIM trajectory of the clipped image
    (t_first, x_first), *rest = predict.inputs
    expected = _implied_noise(ddpm, x_first, t_first, clipped)
    for t, x in rest:
        torch.testing.assert_close(_implied_noise(ddpm, x, t, clipped), expected, rtol=1e-5, atol=1e-6)


def _ancestral_noise_std(variance: str) -> tuple[DDPM, dict[int, float]]:
    """Std of x_{t-1} - mean(x_t, x0) per step, over many samples, with a perfect denoiser."""
    ddpm = DDPM(timesteps=10, beta_start=1e-3, beta_end=0.2)
    x0 = torch.zeros(1, 20000, dtype=torch.float64)
    predict = TrueEpsilon(ddpm, x0)
    torch.manual_seed(0)
    noise = torch.randn(1, 20000, dtype=torch.float64)
    out = ddpm.ancestral(predict, noise, variance=variance)
    visited = [x for _, x in predict.inputs] + [out]
    stds = {}
    for i, t in enumerate(range(9, 0, -1)):
        ab, ab_prev, beta = ddpm.alphas_cumprod[t], ddpm.alphas_cumprod[t - 1], ddpm.betas[t]
        mean = ((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)) * visited[i]  # x0 = 0
        stds[t] = float((visited[i + 1] - mean).std())
    return ddpm, stds


@pytest.mark.parametrize("variance", ["large", "posterior"])
def test_ancestral_noise_has_the_chosen_variance(variance):
    ddpm, stds = _ancestral_noise_std(variance)
    for t, std in stds.items():
        beta, ab, ab_prev = (float(v) for v in (ddpm.betas[t], ddpm.alphas_cumprod[t], ddpm.alphas_cumprod[t - 1]))
        expected = beta if variance == "large" else beta * (1 - ab_prev) / (1 - ab)
        assert std == pytest.approx(math.sqrt(expected), rel=0.03), t


def test_the_released_large_variance_is_the_default_and_documented_choices_are_checked():
    assert load_config("fashion_mnist_lt").sample.ddpm.variance == "large"
    assert load_config("fashion_mnist_lt").sample.clip_x0 is False
    with pytest.raises(ValueError, match="sample.ddpm.variance='fixed' is not one of: large, posterior"):
        load_checked_config("fashion_mnist_lt", ["sample.ddpm.variance=fixed"])
    with pytest.raises(ValueError, match="latents are not bounded"):
        load_checked_config("sit_s2_imagenet_lt256", ["diffusion.objective=ddpm", "sample.sampler=ddim",
                                                      "sample.clip_x0=true"])
    with pytest.raises(ValueError, match="the flow objective's samplers do not clip"):
        load_checked_config("sit_tiny_fashion_mnist_lt", ["sample.clip_x0=true"])
    with pytest.raises(ValueError, match="not applied by the dpm\\+\\+ solver"):
        load_checked_config("fashion_mnist_lt", ["sample.sampler=dpm++", "sample.steps=10", "sample.clip_x0=true"])


# ------------------------------------------------------------------ where the DiT encoder stops

@pytest.mark.parametrize("spec, fraction", [("N/8", 1 / 8), ("N/4", 1 / 4), ("N/2", 1 / 2), ("3N/4", 3 / 4)])
def test_the_encoder_taps_what_the_released_code_taps(spec, fraction):
    torch.manual_seed(0)
    model = DiT(in_channels=2, num_classes=3, input_size=4, patch_size=2, hidden_size=16, depth=12, num_heads=2,
                encoder_depth=spec)
    for block in model.blocks:  # adaLN-Zero blocks start as the identity: give them real outputs
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.1)
    x, t, y = torch.randn(2, 2, 4, 4), torch.rand(2), torch.tensor([0, 3])
    # the released code collects every block's output and takes act[int(len(act) * fraction)]
    h = model.x_embedder(x).flatten(2).transpose(1, 2) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y)
    act = []
    for block in model.blocks:
        h = block(h, c)
        act.append(h)
    ran = []
    hooks = [block.register_forward_hook(lambda *_: ran.append(1)) for block in model.blocks]
    encoded, _ = model.encode(x, t, y)
    for hook in hooks:
        hook.remove()
    assert len(ran) == int(len(act) * fraction) + 1 == model.encoder_depth  # N/4 of 12: 4 blocks
    torch.testing.assert_close(encoded, act[int(len(act) * fraction)])


def test_n_is_every_block_and_fractions_stop_at_the_last():
    assert [encoder_blocks(spec, 12) for spec in ("N/8", "N/4", "N/2", "3N/4", "N")] == [2, 4, 7, 10, 12]
    assert [encoder_blocks(spec, 4) for spec in ("N/8", "N/4", "N/2", "3N/4", "N")] == [1, 2, 3, 4, 4]
    assert encoder_blocks("N", 1) == encoder_blocks("3N/4", 1) == 1


# ------------------------------------------------------------------ presets against the releases

def test_attention_sits_at_the_released_level_index():
    """The released U-Net's attn=[1] names the second resolution level: 16x16 at 32 px, 32x32 at 64 px."""
    for preset, resolution in [("cifar10_lt", 32), ("tinyimagenet_lt", 64)]:
        config = load_config(preset)
        assert config.data.resolution == resolution
        levels = [resolution // 2**i for i in range(len(config.model.unet.ch_mult))]
        assert config.model.unet.attn_resolutions == [levels[1]], preset


def test_guidance_of_the_presets_follows_the_released_evaluations():
    sit = load_config("sit_s2_imagenet_lt256").sample
    assert sit.guidance == 0.5 and sit.guidance_channels == 3  # SiT cfg scale 1 + 0.5 = 1.5
    assert load_config("cifar10_lt_cbdm").sample.guidance == 1.6  # CBDM's omega for CBDM models


# ------------------------------------------------------------------ one device default

def test_sample_uses_cuda_when_it_is_available(tmp_path, monkeypatch):
    """`ccua sample` without --device takes the same default as train/evaluate: cuda when available.
    On a machine without CUDA, claiming it is available makes moving the model fail, which shows
    the command tried."""
    import yaml

    from ccua.cli import main
    from ccua.devices import default_device
    from tests.conftest import tiny_config_dict

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", train={"steps": 0})))
    assert main(["train", str(config), "--device", "cpu"]) == 0
    run = tmp_path / "runs" / "000-tiny"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device().type == "cuda" and default_device("cpu").type == "cpu"
    if torch.backends.cuda.is_built():
        pytest.skip("this torch has CUDA: the real default is exercised by every sampling test")
    with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        main(["sample", str(run), "--out", str(tmp_path / "s"), "--per-class", "1", "--steps", "1", "--no-png"])
