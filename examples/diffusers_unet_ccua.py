"""CCUA in your own training loop: a diffusers UNet2DModel with a class embedding, trained with
CCUA's two losses on Fashion-MNIST-LT, then sampled with ccua's sampler and scored with ccua's
evaluation. Run: python examples/diffusers_unet_ccua.py --steps 200

What CCUA needs from any network: the prediction of the conditional and of the unconditional
pass on the same x_t and t, and the unconditional pass's representation h (here the output of the
U-Net's middle block, taken with a forward hook). The null class is the model's own: diffusers'
class embedding gets one row more than there are classes, the last one meaning "no label".
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import ccua
from ccua.config import DataConfig, SampleConfig
from ccua.data import build_training_set
from ccua.diffusion import DDPM
from ccua.generate import generate_uint8
from ccua.methods.ccua import alignment_loss, ucl_loss


class ConditionalUNet(nn.Module):
    """The ~10 lines that let ccua's samplers (and so ``ccua.evaluate_samples``) drive a diffusers
    U-Net: ccua calls ``model(x, t, y)`` for epsilon and reads ``model.null_label``."""

    def __init__(self, unet: nn.Module, num_classes: int):
        super().__init__()
        self.unet, self.null_label = unet, num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, class_labels=y).sample


def build_unet(num_classes: int, resolution: int = 16):
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=resolution, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), num_class_embeds=num_classes + 1)
    return ConditionalUNet(unet, num_classes)


def ccua_step(model: ConditionalUNet, ddpm: DDPM, x0: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0,
              gamma: float = 1.0, drop: float = 0.1) -> dict[str, torch.Tensor]:
    """One step's losses: denoising (labels dropped with p = ``drop``) + alpha UCL + gamma AL."""
    batch = ddpm.noise_batch(x0)  # x_t, t, the noise target and s = t / T (1 = pure noise)
    null = torch.full_like(labels, model.null_label)
    dropped = torch.rand(labels.shape) < drop
    captured = {}
    hook = model.unet.mid_block.register_forward_hook(lambda module, args, output: captured.update(h=output))
    try:
        pred_uncond = model(batch.x_t, batch.t, null)  # the hook keeps this pass's h
    finally:
        hook.remove()
    pred_cond = model(batch.x_t, batch.t, torch.where(dropped, null, labels))
    keep = (~dropped).float()  # a dropped label has nothing to align
    return {"dm": (pred_cond - batch.target).pow(2).mean(),
            "ucl": alpha * ucl_loss(captured["h"], temperature=0.1, weight=batch.s),
            "al": gamma * alignment_loss(pred_cond, pred_uncond, weight=batch.s * keep)}


def main(steps: int = 200, batch_size: int = 32, per_class: int = 10, sampler_steps: int = 20,
         features: str = "classifier", feature_path: str | None = None, max_reference: int | None = None):
    torch.manual_seed(0)
    data = DataConfig(name="fashion_mnist", resolution=16, imbalance=0.01, n_max=600)
    train = build_training_set(data)
    model, ddpm = build_unet(train.num_classes), DDPM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True)
    step = 0
    while step < steps:
        for x0, labels in loader:
            losses = ccua_step(model.train(), ddpm, x0, labels)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            step += 1
            if step % 50 == 0 or step == steps:
                print(f"step {step}: " + ", ".join(f"{k} {v.item():.4f}" for k, v in losses.items()), flush=True)
            if step == steps:
                break
    labels = torch.arange(train.num_classes).repeat_interleave(per_class)
    images = generate_uint8(model.eval(), ddpm, labels, (1, 16, 16), SampleConfig(sampler="dpm++", steps=sampler_steps,
                                                                                    guidance=1.0), progress=False)
    scores = ccua.evaluate_samples(images, labels.numpy(), data=data, features=features, feature_path=feature_path,
                                   max_reference=max_reference)
    print(f"FID {scores.fid:.2f}; tail FID {scores.groups['tail'].fid:.2f}, tail recall "
          f"{scores.groups['tail'].recall:.3f}, tail near-copies {scores.copies['tail']:.3f}")
    return losses, scores


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--features", default="classifier")
    parser.add_argument("--feature-path", default=".cache/ccua/classifiers/fashion_mnist-16px.pt")
    args = parser.parse_args()
    main(args.steps, features=args.features, feature_path=args.feature_path)
