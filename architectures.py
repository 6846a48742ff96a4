"""The registry of the paper's architectures: one name -> one builder call, its dataset and its parameter count.

A thin index over dense_networks, conv_networks and resnet_networks so that configs, the looper, the benchmark
and the tests name models the same way (`build_model("conv6", layers)`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import keras

from conv_networks import build_conv
from custom_layers import LayerFactory
from dense_networks import build_fcn
from resnet_networks import build_resnet


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    builder: Callable[..., keras.Model]
    datasets: tuple[str, ...]
    paper_parameters: int  # masked kernel weights (BN excluded), paper.md sections 3.1 / 3.2


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("fcn", build_fcn, ("mnist",), 266_200),
        Architecture("conv2", functools.partial(build_conv, 2), ("cifar10", "cifar100"), 4_300_992),
        Architecture("conv4", functools.partial(build_conv, 4), ("cifar10", "cifar100"), 2_425_024),
        Architecture("conv6", functools.partial(build_conv, 6), ("cifar10", "cifar100"), 2_261_184),
        Architecture("conv8", functools.partial(build_conv, 8), ("cifar10", "cifar100"), 5_275_840),
        Architecture("resnet20", functools.partial(build_resnet, 20), ("cifar10", "cifar100"), 248_624),
        Architecture("resnet56", functools.partial(build_resnet, 56), ("cifar10", "cifar100"), 834_992),
        Architecture("resnet110", functools.partial(build_resnet, 110), ("cifar10", "cifar100"), 1_705_904),
    )
}


def build_model(architecture: str, layers: LayerFactory, **kwargs) -> keras.Model:
    """Build `architecture` with `layers` (BaselineLayers or MaskedLayers); kwargs go to its builder."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture].builder(layers=layers, **kwargs)
