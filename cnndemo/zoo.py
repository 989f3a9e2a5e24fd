"""The zoo: one frozen ``ModelSpec`` per architecture, and nothing else decides per model.

Branch taps are declared here, block by block, from the real module layout of each
implementation (torchvision's attribute names, this package's own archs); nothing is
discovered by name patterns at run time.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from .errors import NotFound
from .archs.bn_inception import BLOCKS as BN_BLOCKS
from .archs.bn_inception import bn_inception
from .archs.mnist import D2L_TABLE, d2l_googlenet, mnist_inception, mnist_resnet
from .digits import LABELS as DIGIT_LABELS
from .digits import MNIST_MEAN, MNIST_STD, DigitTransform
from .specs import BlockSpec, BranchSpec, InputSpec, ModelSpec, Paper
from .weights import BundledWeights, TorchvisionWeights

def _photo_inputs(weights_enum, min_side: int | None = None) -> InputSpec:
    """What torchvision's Weights enum already knows: its preset (resize, centre crop,
    normalise), the crop size, mean and std, and the smallest input side (``meta["min_size"]``)."""
    preset = weights_enum.transforms()
    size = preset.crop_size[0]
    side = min_side if min_side is not None else weights_enum.meta["min_size"][0]
    return InputSpec((3, size, size), tuple(preset.mean), tuple(preset.std), preset, min_side=side)


def _digit_inputs(size: int) -> InputSpec:
    return InputSpec((1, size, size), MNIST_MEAN, MNIST_STD, DigitTransform(size), kind="digit",
                     trained_on="MNIST handwritten digits (white strokes on black, 28 × 28)", min_side=size)


def _categories(weights_enum):
    return lambda: tuple(weights_enum.meta["categories"])


def _digits():
    return DIGIT_LABELS


# ----------------------------------------------------------------------------- builders
# Keyword-only, eval mode, logits out. transform_input=True is what torchvision sets for the
# ported GoogLeNet / Inception-v3 weights: the first layer maps ImageNet-normalised input to
# the [-1, 1] range those weights expect.


def _googlenet() -> nn.Module:
    return tvm.googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=True)


def _inception_v3() -> nn.Module:
    return tvm.inception_v3(weights=None, aux_logits=False, transform_input=True, init_weights=True)


def _resnet50() -> nn.Module:
    return tvm.resnet50(weights=None)


def _vgg16() -> nn.Module:
    return tvm.vgg16(weights=None)


def _squeezenet1_0() -> nn.Module:
    return tvm.squeezenet1_0(weights=None)


# ----------------------------------------------------------------------------- branch taps

_GOOGLENET_BLOCKS = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
_NOTE_3X3B = (
    "torchvision's branch3 is the paper's 5x5 path, but torchvision builds it with a 3x3 "
    "kernel (a known upstream bug kept so the ported weights still load; pytorch/vision#906). "
    "It is labelled by the kernel it really has."
)


def _googlenet_blocks() -> tuple[BlockSpec, ...]:
    out = []
    for b in _GOOGLENET_BLOCKS:
        p = f"inception{b}"
        out.append(
            BlockSpec(
                name=p,
                path=p,
                kind="Inception (4 branches)",
                branches=(
                    BranchSpec("1x1", (f"{p}.branch1",)),
                    BranchSpec("3x3", (f"{p}.branch2",)),
                    BranchSpec("3x3b", (f"{p}.branch3",), note=_NOTE_3X3B),
                    BranchSpec("pool_proj", (f"{p}.branch4",)),
                ),
            )
        )
    return tuple(out)


def _bn_inception_blocks() -> tuple[BlockSpec, ...]:
    out = []
    for p, cfg in BN_BLOCKS.items():
        if cfg.is_reduction:
            kind = "reduction (3 branches, stride 2)"
            branches = (
                BranchSpec("3x3", (f"{p}.branch1",)),
                BranchSpec("double_3x3", (f"{p}.branch2",)),
                BranchSpec("pool", (f"{p}.branch3",), note="max-pool passed through, no projection"),
            )
        else:
            kind = "Inception (4 branches)"
            branches = (
                BranchSpec("1x1", (f"{p}.branch1",)),
                BranchSpec("3x3", (f"{p}.branch2",)),
                BranchSpec("double_3x3", (f"{p}.branch3",), note="two 3x3 convs in place of a 5x5"),
                BranchSpec("pool_proj", (f"{p}.branch4",)),
            )
        out.append(BlockSpec(p, p, kind, branches))
    return tuple(out)


def _avg_pool() -> nn.Module:
    # torchvision calls F.avg_pool2d(x, kernel_size=3, stride=1, padding=1) in these blocks.
    return nn.AvgPool2d(3, stride=1, padding=1)


def _max_pool_s2() -> nn.Module:
    # torchvision calls F.max_pool2d(x, kernel_size=3, stride=2) in Mixed_6a and Mixed_7a.
    return nn.MaxPool2d(3, stride=2)


def _seq(p: str, name: str, n: int) -> tuple[str, ...]:
    return tuple(f"{p}.{name}_{i}" for i in range(1, n + 1))


def _inception_v3_blocks() -> tuple[BlockSpec, ...]:
    out = []
    for b in ("5b", "5c", "5d"):
        p = f"Mixed_{b}"
        out.append(
            BlockSpec(
                p,
                p,
                "Inception-A (4 branches)",
                (
                    BranchSpec("1x1", (f"{p}.branch1x1",)),
                    BranchSpec("5x5", _seq(p, "branch5x5", 2)),
                    BranchSpec("double_3x3", _seq(p, "branch3x3dbl", 3)),
                    BranchSpec("pool_proj", (f"{p}.branch_pool",), pre=_avg_pool()),
                ),
            )
        )
    p = "Mixed_6a"
    out.append(
        BlockSpec(
            p,
            p,
            "Inception-B reduction (3 branches, stride 2)",
            (
                BranchSpec("3x3", (f"{p}.branch3x3",)),
                BranchSpec("double_3x3", _seq(p, "branch3x3dbl", 3)),
                BranchSpec("pool", (), taps=(), pre=_max_pool_s2(), note="functional max-pool"),
            ),
        )
    )
    for b in ("6b", "6c", "6d", "6e"):
        p = f"Mixed_{b}"
        out.append(
            BlockSpec(
                p,
                p,
                "Inception-C (4 branches, factorised 7x7)",
                (
                    BranchSpec("1x1", (f"{p}.branch1x1",)),
                    BranchSpec("7x7", _seq(p, "branch7x7", 3), note="7x7 factorised as 1x7 then 7x1"),
                    BranchSpec("double_7x7", _seq(p, "branch7x7dbl", 5)),
                    BranchSpec("pool_proj", (f"{p}.branch_pool",), pre=_avg_pool()),
                ),
            )
        )
    p = "Mixed_7a"
    out.append(
        BlockSpec(
            p,
            p,
            "Inception-D reduction (3 branches, stride 2)",
            (
                BranchSpec("3x3", _seq(p, "branch3x3", 2)),
                BranchSpec("7x7x3", _seq(p, "branch7x7x3", 4)),
                BranchSpec("pool", (), taps=(), pre=_max_pool_s2(), note="functional max-pool"),
            ),
        )
    )
    for b in ("7b", "7c"):
        p = f"Mixed_{b}"
        split = "its output is two sub-outputs concatenated: a 1x3 conv and a 3x1 conv in parallel"
        out.append(
            BlockSpec(
                p,
                p,
                "Inception-E (4 branches, split 3x3)",
                (
                    BranchSpec("1x1", (f"{p}.branch1x1",)),
                    BranchSpec(
                        "3x3",
                        (f"{p}.branch3x3_1", f"{p}.branch3x3_2a", f"{p}.branch3x3_2b"),
                        taps=(f"{p}.branch3x3_2a", f"{p}.branch3x3_2b"),
                        note=split,
                    ),
                    BranchSpec(
                        "double_3x3",
                        (
                            f"{p}.branch3x3dbl_1",
                            f"{p}.branch3x3dbl_2",
                            f"{p}.branch3x3dbl_3a",
                            f"{p}.branch3x3dbl_3b",
                        ),
                        taps=(f"{p}.branch3x3dbl_3a", f"{p}.branch3x3dbl_3b"),
                        note=split,
                    ),
                    BranchSpec("pool_proj", (f"{p}.branch_pool",), pre=_avg_pool()),
                ),
            )
        )
    return tuple(out)


def _bottleneck_blocks(layers: tuple[int, ...]) -> tuple[BlockSpec, ...]:
    out = []
    for li, n in enumerate(layers, start=1):
        for i in range(n):
            p = f"layer{li}.{i}"
            residual = BranchSpec(
                "residual",
                tuple(f"{p}.{m}" for m in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")),
                note="what the block adds to its input, before the final ReLU",
            )
            if i == 0:
                shortcut = BranchSpec("shortcut", (f"{p}.downsample",), note="projection shortcut")
            else:
                shortcut = BranchSpec("shortcut", (), taps=(), pre=nn.Identity(), note="identity")
            out.append(
                BlockSpec(p, p, "Bottleneck (residual + shortcut)", (residual, shortcut), "add_relu")
            )
    return tuple(out)


def _fire_blocks() -> tuple[BlockSpec, ...]:
    # SqueezeNet 1.0: features index -> Fire number of the paper.
    fires = {3: 2, 4: 3, 5: 4, 7: 5, 8: 6, 9: 7, 10: 8, 12: 9}
    out = []
    for idx, n in fires.items():
        p = f"features.{idx}"
        out.append(
            BlockSpec(
                f"fire{n}",
                p,
                "Fire (squeeze, then 2 expand branches)",
                (
                    BranchSpec("expand1x1", (f"{p}.expand1x1", f"{p}.expand1x1_activation")),
                    BranchSpec("expand3x3", (f"{p}.expand3x3", f"{p}.expand3x3_activation")),
                ),
                shared=(f"{p}.squeeze", f"{p}.squeeze_activation"),
            )
        )
    return tuple(out)


def _vgg_stages() -> tuple[BlockSpec, ...]:
    # VGG-16 ("D"): pools close the five conv stages at these features indices.
    pools = (4, 9, 16, 23, 30)
    out, start = [], 0
    for n, end in enumerate(pools, start=1):
        mods = tuple(f"features.{i}" for i in range(start, end + 1))
        out.append(
            BlockSpec(
                f"stage{n}",
                f"features.{end}",
                "plain conv stage (no branches)",
                (BranchSpec("output", mods),),
                "single",
            )
        )
        start = end + 1
    return tuple(out)


def _mnist_inception_blocks() -> tuple[BlockSpec, ...]:
    return tuple(
        BlockSpec(
            p,
            p,
            "Inception (4 branches)",
            (
                BranchSpec("pool_proj", (f"{p}.branch_pool",), note="3x3 avg-pool at stride 1"),
                BranchSpec("1x1", (f"{p}.branch1x1",)),
                BranchSpec("5x5", (f"{p}.branch5x5",)),
                BranchSpec("double_3x3", (f"{p}.branch3x3",)),
            ),
        )
        for p in ("incept1", "incept2")
    )


def _mnist_resnet_blocks() -> tuple[BlockSpec, ...]:
    return tuple(
        BlockSpec(
            p,
            p,
            "residual block",
            (
                BranchSpec("residual", (f"{p}.conv1", f"{p}.relu1", f"{p}.conv2")),
                BranchSpec("shortcut", (), taps=(), pre=nn.Identity(), note="identity"),
            ),
            "add_relu",
        )
        for p in ("rblock1", "rblock2")
    )


def _d2l_blocks() -> tuple[BlockSpec, ...]:
    names = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")
    return tuple(
        BlockSpec(
            f"inception{n}",
            path,
            "Inception (4 branches)",
            (
                BranchSpec("1x1", (f"{path}.p1",)),
                BranchSpec("3x3", (f"{path}.p2",)),
                BranchSpec("5x5", (f"{path}.p3",)),
                BranchSpec("pool_proj", (f"{path}.p4",)),
            ),
        )
        for n, path in zip(names, D2L_TABLE)
    )


# ----------------------------------------------------------------------------- papers

_PAPERS = {
    "googlenet": Paper("Going Deeper with Convolutions", "Szegedy et al.", 2014, "https://arxiv.org/abs/1409.4842"),
    "bn": Paper(
        "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift",
        "Ioffe & Szegedy",
        2015,
        "https://arxiv.org/abs/1502.03167",
    ),
    "v3": Paper(
        "Rethinking the Inception Architecture for Computer Vision",
        "Szegedy et al.",
        2015,
        "https://arxiv.org/abs/1512.00567",
    ),
    "resnet": Paper("Deep Residual Learning for Image Recognition", "He et al.", 2015, "https://arxiv.org/abs/1512.03385"),
    "vgg": Paper(
        "Very Deep Convolutional Networks for Large-Scale Image Recognition",
        "Simonyan & Zisserman",
        2014,
        "https://arxiv.org/abs/1409.1556",
    ),
    "squeezenet": Paper(
        "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
        "Iandola et al.",
        2016,
        "https://arxiv.org/abs/1602.07360",
    ),
    "d2l": Paper("Dive into Deep Learning, 8.4: Multi-Branch Networks (GoogLeNet)", "Zhang et al.", 2023, "https://d2l.ai/chapter_convolutional-modern/googlenet.html"),
    "mnist": Paper("Gradient-Based Learning Applied to Document Recognition (MNIST)", "LeCun et al.", 1998, "http://yann.lecun.com/exdb/mnist/"),
}

_G = tvm.GoogLeNet_Weights.IMAGENET1K_V1
_V3 = tvm.Inception_V3_Weights.IMAGENET1K_V1
_R50 = tvm.ResNet50_Weights.IMAGENET1K_V2
_VGG = tvm.VGG16_Weights.IMAGENET1K_V1
_SQ = tvm.SqueezeNet1_0_Weights.IMAGENET1K_V1

def _imagenet(enum, *, published: bool = True, min_side: int | None = None, **fields) -> ModelSpec:
    """A photo model read as the torchvision weights ``enum`` were trained: their preset, input
    size and categories (and the weights themselves, when ``published``)."""
    return ModelSpec(weights=TorchvisionWeights(enum) if published else None,
                     inputs=_photo_inputs(enum, min_side), labels=_categories(enum), **fields)


def _digit_net(key: str, size: int, **fields) -> ModelSpec:
    """A digit network trained here: weights in assets/weights/KEY.safetensors, the classifier and
    the Grad-CAM layer re-initialised by the sanity check."""
    return ModelSpec(key=key, family="Digits", weights=BundledWeights(f"{key}.safetensors"),
                     inputs=_digit_inputs(size), labels=_digits, top_layers=("fc", fields["gradcam_layer"]), **fields)


ZOO: dict[str, ModelSpec] = {
    s.key: s
    for s in (
        _imagenet(
            _G,
            key="googlenet",
            name="GoogLeNet (Inception v1)",
            description="The 2014 ImageNet winner: nine Inception blocks of parallel 1x1, 3x3 and pooling paths.",
            family="Inception",
            builder=_googlenet,
            paper=_PAPERS["googlenet"],
            blocks=_googlenet_blocks(),
            gradcam_layer="inception5b",
            default_block="inception4c",
            drop_keys=("aux1.", "aux2."),
            top_layers=("fc", "inception5b"),
            notes=(
                "Built without the two auxiliary classifiers (training-only heads).",
                _NOTE_3X3B,
            ),
        ),
        _imagenet(
            _G, published=False, min_side=32,  # its own stem: GoogLeNet's min_size does not describe it
            key="bn_inception",
            name="BN-Inception (Inception v2)",
            description="GoogLeNet with BatchNorm after every conv and 5x5 paths replaced by two 3x3 convs.",
            family="Inception",
            builder=bn_inception,
            paper=_PAPERS["bn"],
            blocks=_bn_inception_blocks(),
            gradcam_layer="inception5b",
            default_block="inception4c",
            top_layers=("fc", "inception5b"),
            notes=(
                "No public torchvision weights exist: architecture only until you load a checkpoint.",
                "Conv layers keep their bias as in the reference text (BatchNorm makes it "
                "redundant); this gives the published 10,876,968 parameters.",
                "Uses the ImageNet preprocessing of torchvision's GoogLeNet weights.",
            ),
        ),
        _imagenet(
            _V3,
            key="inception_v3",
            name="Inception-v3",
            description="Factorised convolutions (1x7 + 7x1, split 3x3) and grid reductions, read at 299x299.",
            family="Inception",
            builder=_inception_v3,
            paper=_PAPERS["v3"],
            blocks=_inception_v3_blocks(),
            gradcam_layer="Mixed_7c",
            default_block="Mixed_6c",
            drop_keys=("AuxLogits.",),
            top_layers=("fc", "Mixed_7c"),
            notes=(
                "Built without AuxLogits, the training-only auxiliary head; torchvision's "
                "num_params counts it, the parameter figures here do not.",
            ),
        ),
        _imagenet(
            _R50,
            key="resnet50",
            name="ResNet-50",
            description="16 bottleneck blocks, each adding a learned residual to an identity or projection shortcut.",
            family="Residual",
            builder=_resnet50,
            paper=_PAPERS["resnet"],
            blocks=_bottleneck_blocks((3, 4, 6, 3)),
            gradcam_layer="layer4",
            default_block="layer3.0",
            top_layers=("fc", "layer4.2"),
        ),
        _imagenet(
            _VGG,
            key="vgg16",
            name="VGG-16",
            description="Thirteen 3x3 convs in five plain stages: deep, simple, and very large.",
            family="Plain",
            builder=_vgg16,
            paper=_PAPERS["vgg"],
            blocks=_vgg_stages(),
            gradcam_layer="features.29",
            default_block="stage4",
            top_layers=("classifier",),
            notes=("VGG-16 has no parallel branches: the branch views show its five conv stages.",),
        ),
        _imagenet(
            _SQ,
            key="squeezenet1_0",
            name="SqueezeNet 1.0",
            description="AlexNet-level accuracy from 1.2M parameters: Fire modules squeeze, then expand 1x1 and 3x3.",
            family="Compact",
            builder=_squeezenet1_0,
            paper=_PAPERS["squeezenet"],
            blocks=_fire_blocks(),
            gradcam_layer="features.12",
            default_block="fire5",
            top_layers=("classifier", "features.12"),
        ),
        _digit_net(
            "mnist_inception", 28,
            name="MNIST Inception net",
            description="Two convs, each followed by a four-branch Inception module; trained here on MNIST.",
            builder=mnist_inception,
            paper=_PAPERS["mnist"],
            blocks=_mnist_inception_blocks(),
            gradcam_layer="incept2",
            default_block="incept1",
            notes=("Pool branch at stride 1 (the text's stride 3 cannot be concatenated).",),
        ),
        _digit_net(
            "mnist_resnet", 28,
            name="MNIST residual net",
            description="Two convs, each followed by a residual block relu(x + F(x)); trained here on MNIST.",
            builder=mnist_resnet,
            paper=_PAPERS["mnist"],
            blocks=_mnist_resnet_blocks(),
            gradcam_layer="rblock2",
            default_block="rblock1",
        ),
        _digit_net(
            "d2l_googlenet", 96,
            name="d2l GoogLeNet (digits)",
            description="The d2l GoogLeNet: five stages, nine Inception blocks, 1 channel at 96x96; trained here.",
            builder=d2l_googlenet,
            paper=_PAPERS["d2l"],
            blocks=_d2l_blocks(),
            gradcam_layer="b5.1",
            default_block="inception4c",
        ),
    )
}



def families() -> tuple[str, ...]:
    """The model families, in zoo order (the menus group by them): a new family is simply a new
    ``family`` value in ``ZOO``."""
    return tuple(dict.fromkeys(s.family for s in ZOO.values()))


IMAGENET_KEYS = tuple(k for k, s in ZOO.items() if s.inputs.kind == "photo")
DIGIT_KEYS = tuple(k for k, s in ZOO.items() if s.inputs.kind == "digit")
# Models whose weights are published online (fetch-weights and the background prefetch get them).
PUBLISHED_KEYS = tuple(k for k, s in ZOO.items() if s.weights is not None and s.weights.downloadable)
# The model every view opens with, and the digit network whose branch maps and attribution the
# Digits tab shows (the first digit network, in zoo order, with parallel branches).
DEFAULT_MODEL = "googlenet"
DIGIT_SHOWCASE = next(k for k in DIGIT_KEYS if ZOO[k].has_branches)


def get_spec(key: str) -> ModelSpec:
    try:
        return ZOO[key]
    except KeyError:
        raise NotFound(f"unknown model {key!r}; choose one of: {', '.join(ZOO)}") from None
