"""Fully connected networks: the paper's FCN 784-300-100-10 for MNIST, baseline or Supermask from one builder."""

from __future__ import annotations

import keras

from custom_layers import LayerFactory, MaskedLayers


def build_fcn(layers: LayerFactory | None = None, *, input_shape=(784,), hidden=(300, 100), num_classes=10,
              dropout: float = 0.0, name: str = "fcn") -> keras.Model:
    """Dense(h) -> ELU for every h in `hidden`, then Dense(num_classes) -> softmax; no biases.

    `layers` makes the Dense layers: `MaskedLayers(...)` (the default) for a Supermask, `BaselineLayers(...)`
    for the ordinary trainable network.
    """
    layers = layers if layers is not None else MaskedLayers()
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    for i, units in enumerate(hidden):
        x = layers.dense(units, index=i, name=f"dense_{i}")(x)
        x = keras.layers.Activation("elu", name=f"elu_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    x = layers.dense(num_classes, index=len(hidden), name="output")(x)
    outputs = keras.layers.Activation("softmax", dtype="float32", name="softmax")(x)
    return keras.Model(inputs, outputs, name=name)
