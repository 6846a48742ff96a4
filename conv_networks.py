"""VGG-style Conv2 / Conv4 / Conv6 / Conv8 of Zhou et al. and the paper, baseline or Supermask, from one builder.

    Conv2: 64,64,pool                               FC 256-256-10
    Conv4: 64,64,pool, 128,128,pool                 FC 256-256-10
    Conv6: ... , 256,256,pool                       FC 256-256-10
    Conv8: ... , 512,512,pool                       FC 256-256-10

3x3 'same' convolutions without bias, ELU after every conv and hidden FC layer, 2x2 max-pool after each pair.
"""

from __future__ import annotations

import keras

from architectures import CONV_DEPTHS
from custom_layers import LayerFactory, MaskedLayers

CONV_FILTERS = (64, 128, 256, 512)


def build_conv(depth: int, layers: LayerFactory | None = None, *, input_shape=(32, 32, 3), num_classes=10,
               width: float = 1.0, hidden=(256, 256), dropout: float = 0.0, name: str | None = None) -> keras.Model:
    """Conv`depth` (2, 4, 6 or 8). `width` multiplies every conv and hidden FC width; `dropout` (rate) follows
    each hidden FC layer when > 0 (the paper uses none)."""
    if depth not in CONV_DEPTHS:
        raise ValueError(f"conv depth must be one of {CONV_DEPTHS}, got {depth}")
    layers = layers if layers is not None else MaskedLayers()
    index = 0
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for block, filters in enumerate(CONV_FILTERS[: depth // 2]):
        for j in range(2):
            x = layers.conv2d(max(1, round(filters * width)), 3, index=index, name=f"conv_{block}_{j}")(x)
            x = keras.layers.Activation("elu", name=f"elu_conv_{block}_{j}")(x)
            index += 1
        x = keras.layers.MaxPooling2D(2, name=f"pool_{block}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate(hidden):
        x = layers.dense(max(1, round(units * width)), index=index, name=f"dense_{i}")(x)
        x = keras.layers.Activation("elu", name=f"elu_dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
        index += 1
    x = layers.dense(num_classes, index=index, name="output")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="softmax")(x)
    return keras.Model(inputs, outputs, name=name or f"conv{depth}")
