"""Every zoo entry builds, runs at its input size, and declares what the issues require."""

from __future__ import annotations

import pytest
import torch

from cnndemo import anatomy
from cnndemo.archs.bn_inception import BLOCKS, bn_inception
from cnndemo.runtime import build_random
from cnndemo.zoo import IMAGENET_KEYS, ZOO


@pytest.mark.parametrize("key", list(ZOO))
def test_spec_builds_and_gives_logits(key):
    spec = ZOO[key]
    model = build_random(spec)
    assert not model.training, "builders must return eval-mode modules"
    with torch.inference_mode():
        out = model(torch.randn(1, *spec.input_size))
    n = len(spec.labels())
    assert out.shape == (1, n)
    assert n == (1000 if key in IMAGENET_KEYS else 10)
    assert torch.isfinite(out).all()


def test_six_imagenet_models_with_their_keys():
    assert set(IMAGENET_KEYS) == {"googlenet", "bn_inception", "inception_v3", "resnet50", "vgg16", "squeezenet1_0"}
    assert ZOO["inception_v3"].input_size == (3, 299, 299)


@pytest.mark.parametrize("key", list(ZOO))
def test_spec_metadata_is_complete(key):
    spec = ZOO[key]
    assert spec.name and spec.description and spec.family
    assert spec.paper.url.startswith("http")
    assert spec.gradcam_layer and spec.blocks and spec.top_layers
    model = build_random(spec)
    model.get_submodule(spec.gradcam_layer)
    for layer in spec.top_layers:
        model.get_submodule(layer)
    assert spec.default_block in [b.name for b in spec.blocks]


def test_labels_come_from_torchvision_metadata():
    from torchvision.models import GoogLeNet_Weights

    cats = GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"]
    assert ZOO["googlenet"].labels() == tuple(cats)
    assert ZOO["bn_inception"].labels() == tuple(cats)
    assert ZOO["googlenet"].labels()[207] == "golden retriever"


def test_bn_inception_parameter_count_matches_the_table():
    model = bn_inception()
    assert anatomy.total_params(model) == 10_876_968


def test_bn_inception_block_shapes_match_the_table():
    model = bn_inception()
    shapes = {}
    hooks = [
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(o.shape[1:])))
        for name in BLOCKS
    ]
    with torch.inference_mode():
        model(torch.zeros(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    expected = {"inception3a": (256, 28, 28), "inception3b": (320, 28, 28)}
    expected.update({n: (576, 14, 14) for n in ("inception3c", "inception4a", "inception4b", "inception4c", "inception4d")})
    expected.update({n: (1024, 7, 7) for n in ("inception4e", "inception5a", "inception5b")})
    assert shapes == expected
    for name, cfg in BLOCKS.items():
        assert shapes[name][0] == cfg.cout


def test_bn_inception_every_conv_is_conv_bn_relu():
    from cnndemo.archs.bn_inception import ConvBNReLU

    model = bn_inception()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    units = [m for m in model.modules() if isinstance(m, ConvBNReLU)]
    assert len(convs) == len(units) > 0
    reductions = [n for n, c in BLOCKS.items() if c.is_reduction]
    assert reductions == ["inception3c", "inception4e"]
    assert len(list(model.inception3c.children())) == 3
    assert len(list(model.inception4a.children())) == 4


def test_shape_trace_lists_stages_in_order():
    rows = anatomy.architecture(ZOO["googlenet"])
    names = [r.name for r in rows]
    assert names[0] == "conv1" and names[-1] == "fc"
    assert names.index("inception3a") < names.index("inception5b")
    row = {r.name: r for r in rows}
    assert row["inception3a"].shape == (256, 28, 28)
    assert row["inception5b"].shape == (1024, 7, 7)
    assert sum(r.params for r in rows) == 6_624_904
