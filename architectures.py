"""The registry of the paper's architectures: one name -> one builder call and the datasets it is for.

A thin index over dense_networks, conv_networks and resnet_networks so that configs, the looper, the benchmarks
and the tests name models the same way (`build_model("conv6", layers)`). The builders are imported when a model
is built, not when this module is imported, so the config schema can list the names without TensorFlow. The
paper's parameter count of each model is in paper_results.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

CIFAR = ("cifar10", "cifar100")
CONV_DEPTHS = (2, 4, 6, 8)  # the paper's Conv2-Conv8 (conv_networks.build_conv accepts these)
RESNET_DEPTHS = (20, 56, 110)  # the paper's ResNets (resnet_networks.build_resnet takes any 6n + 2)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """`module.function(**kwargs, layers=..., **build_kwargs)` builds it; `datasets` are the ones it fits;
    `options` are the model keys of a config that its builder takes (the config refuses the others)."""

    name: str
    module: str
    function: str
    kwargs: dict
    datasets: tuple[str, ...]
    options: tuple[str, ...]

    def build(self, layers, **build_kwargs):
        builder = getattr(importlib.import_module(self.module), self.function)
        return builder(**self.kwargs, layers=layers, **build_kwargs)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("fcn", "dense_networks", "build_fcn", {}, ("mnist",), ("dropout",)),
        *(Architecture(f"conv{d}", "conv_networks", "build_conv", {"depth": d}, CIFAR, ("width", "dropout"))
          for d in CONV_DEPTHS),
        *(Architecture(f"resnet{d}", "resnet_networks", "build_resnet", {"depth": d}, CIFAR,
                       ("width", "batch_norm", "stem_batch_norm"))
          for d in RESNET_DEPTHS),
    )
}
# Every model key that some architecture takes and others ignore.
OPTIONS = tuple(dict.fromkeys(option for a in ARCHITECTURES.values() for option in a.options))


def build_model(architecture: str, layers, **kwargs: Any):
    """Build `architecture` with `layers` (a LayerFactory: BaselineLayers or MaskedLayers); kwargs go to its
    builder."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture].build(layers, **kwargs)
