"""What every family module uses: the input pipelines (from torchvision's Weights enum for the
photo models), the papers, and the two ways a spec is made (``imagenet``, ``digit_net``)."""

from __future__ import annotations

from ..digits import LABELS as DIGIT_LABELS
from ..digits import MNIST_MEAN, MNIST_STD, DigitTransform
from ..specs import InputSpec, ModelSpec, Paper
from ..weights import BundledWeights, TorchvisionWeights


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


PAPERS = {
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


def imagenet(enum, *, published: bool = True, min_side: int | None = None, **fields) -> ModelSpec:
    """A photo model read as the torchvision weights ``enum`` were trained: their preset, input
    size and categories (and the weights themselves, when ``published``)."""
    return ModelSpec(weights=TorchvisionWeights(enum) if published else None,
                     inputs=_photo_inputs(enum, min_side), labels=_categories(enum), **fields)


def digit_net(key: str, size: int, **fields) -> ModelSpec:
    """A digit network trained here: weights in assets/weights/KEY.safetensors, the classifier and
    the Grad-CAM layer re-initialised by the sanity check."""
    return ModelSpec(key=key, family="Digits", weights=BundledWeights(f"{key}.safetensors"),
                     inputs=_digit_inputs(size), labels=_digits, top_layers=("fc", fields["gradcam_layer"]), **fields)
