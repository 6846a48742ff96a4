"""The paper's CIFAR ResNets (ResNet20 x1/x2/x3, ResNet56, ResNet110), baseline or Supermask, from one builder.

The layout follows the authors' code, which differs from He et al. (2016) (docs/paper_notes.md, "Architectures"):

    stem:     conv3x3(16w) -> BN -> ELU -> MaxPool 3x3 / stride 1 / same
    3 stages of 16w, 32w, 64w filters with strides 1, 2, 2; n = (depth - 2) / 6 blocks per stage
    block 1 of every stage ("C" block):
              main      conv1x1(f, stride s) -> BN -> ELU -> conv3x3(f) -> BN -> ELU
              shortcut  conv1x1(f, stride s) -> BN
              add -> ELU
    other blocks ("I" blocks):
              conv3x3 -> BN -> ELU -> conv3x3 -> BN, add the identity -> ELU
    head:     global average pool -> Dense(num_classes) -> softmax

No biases anywhere; every conv (shortcuts included) and the head are masked in a Supermask.

Batch-norm modes (docs/paper_notes.md, "Batch norm"):
    learned  Keras BatchNormalization, gamma/beta trained, batch statistics in training
    none     no normalisation layer at all
    frozen   the authors' `trainable=False` BN: always in inference mode with moving mean 0 and variance 1, so
             y = x / sqrt(1 + 1e-3); kept for a faithful comparison
"""

from __future__ import annotations

import keras

from custom_layers import LayerFactory, MaskedLayers
from hparams import BATCH_NORM_MODES


def _batch_norm(x, mode: str, name: str):
    if mode == "none":
        return x
    return keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.99, trainable=(mode == "learned"),
                                           name=name)(x)


def build_resnet(depth: int, layers: LayerFactory | None = None, *, width: int = 1, num_classes: int = 10,
                 batch_norm: str = "learned", stem_batch_norm: str | None = None, input_shape=(32, 32, 3),
                 name: str | None = None) -> keras.Model:
    """ResNet-`depth` (20, 56 or 110; any 6n+2 works) of width multiplier `width`.

    `batch_norm` applies to every BN; `stem_batch_norm` overrides it for the stem (the authors' masked ResNet20
    learned the stem BN and froze the others).
    """
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"ResNet depth must be 6n + 2 (20, 56, 110, ...), got {depth}")
    if width != int(width) or width < 1:
        raise ValueError(f"ResNet width must be a whole number >= 1, got {width}")
    width = int(width)
    for mode in (batch_norm, stem_batch_norm or batch_norm):
        if mode not in BATCH_NORM_MODES:
            raise ValueError(f"unknown batch_norm {mode!r}; allowed: {', '.join(BATCH_NORM_MODES)}")
    layers = layers if layers is not None else MaskedLayers(threshold_fraction=0.75)
    blocks_per_stage = (depth - 2) // 6
    counter = iter(range(10**6))

    def conv(x, filters, kernel_size, strides, name):
        return layers.conv2d(filters, kernel_size, strides=strides, index=next(counter), name=name)(x)

    def elu(x, name):
        return keras.layers.Activation("elu", name=name)(x)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = conv(inputs, 16 * width, 3, 1, "stem_conv")
    x = _batch_norm(x, stem_batch_norm or batch_norm, "stem_bn")
    x = elu(x, "stem_elu")
    x = keras.layers.MaxPooling2D(3, strides=1, padding="same", name="stem_pool")(x)

    for stage, (filters, stride) in enumerate(zip((16, 32, 64), (1, 2, 2))):
        filters *= width
        for block in range(blocks_per_stage):
            p = f"s{stage}_b{block}"
            if block == 0:
                y = conv(x, filters, 1, stride, f"{p}_conv_a")
                y = elu(_batch_norm(y, batch_norm, f"{p}_bn_a"), f"{p}_elu_a")
                y = conv(y, filters, 3, 1, f"{p}_conv_b")
                y = elu(_batch_norm(y, batch_norm, f"{p}_bn_b"), f"{p}_elu_b")
                shortcut = conv(x, filters, 1, stride, f"{p}_shortcut")
                shortcut = _batch_norm(shortcut, batch_norm, f"{p}_bn_shortcut")
            else:
                y = conv(x, filters, 3, 1, f"{p}_conv_a")
                y = elu(_batch_norm(y, batch_norm, f"{p}_bn_a"), f"{p}_elu_a")
                y = conv(y, filters, 3, 1, f"{p}_conv_b")
                y = _batch_norm(y, batch_norm, f"{p}_bn_b")
                shortcut = x
            x = elu(keras.layers.Add(name=f"{p}_add")([y, shortcut]), f"{p}_elu_out")

    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.dense(num_classes, index=next(counter), name="output")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="softmax")(x)
    suffix = f"x{width}" if width != 1 else ""
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}{suffix}")
