"""Stock Keras models from a trained Supermask: `strip` (the same network, kernels w * M) and `shrink` (the dead
units removed, exactly), with the effective architecture that survives.

`strip(model)` replaces every MaskedDense / MaskedConv2D by a stock keras Dense / Conv2D (no bias, same geometry
and name) whose kernel is the effective kernel w * M; every other layer (activations, pooling, BN with its weights,
Add, ...) is cloned with its weights (tensorflow-model-optimization's `strip_pruning` pattern: keras.models.
clone_model with a clone function). The stripped model predicts exactly what the Supermask predicts and needs no
code of this repository to load.

In a trained Supermask most effective weights w * M are zero, so whole units are dead. No layer of the repo's
networks has a bias, and every layer between two kernels maps 0 to 0 channel by channel (ELU(0) = 0, max-pool and
average of zeros = 0, dropout at inference = identity). Hence:

    a unit with no incoming weight outputs exactly 0 for every input, so it contributes nothing;
    a unit with no outgoing weight is read by nobody;

and deleting such a unit (its column in the producing kernel, its rows in the reading kernel) changes no
prediction. `shrink(model)` does this to a fixed point and returns a stock Keras model (only keras.layers classes;
it loads with `keras.models.load_model` without this repository), e.g. a trained FCN 784-300-100-10 becomes
468-115-99-10.

Model and notation. Every tensor's last axis is its channel axis (Dense units, Conv2D filters, input features).
Layers that act on each channel alone (Activation, ELU, ReLU, Dropout, MaxPooling2D, AveragePooling2D,
GlobalAverage/MaxPooling2D, BatchNormalization, Identity) and Add keep the channels aligned, so all tensors joined
by them form one *channel space* and are sliced together (an Add joins the residual stream of a ResNet stage into one
space). A space is produced by kernels (Dense / Conv2D with groups 1, channels_last) or a model input, and is read
by kernels. A kernel K has shape (..., C_in, C_out) (Dense: (C_in, C_out); Conv2D: (kh, kw, C_in, C_out)).

Rules (all exact: the shrunk model computes the same function on the surviving inputs; see the proofs in brackets):

 1. no incoming weight   zero_out[o] = AND_i ( all(K[..., i, o] == 0)  or  zero_in[i] )  and bias[o] == 0 and
                         act(0) == 0.  [y_o = act(sum_i x_i * K[.., i, o] + b_o) = act(0) = 0 for every input.]
                         Zero-ness passes channel-wise layers that map 0 to 0 (ELU, ReLU, pooling, dropout, GAP),
                         a BatchNormalization only where it maps 0 to 0 (rule 5), an Add only where every summand
                         is zero, and a Flatten position by position.
 2. no outgoing weight   channel i of a tensor x is ignored by the kernel K reading x when
                         all(K[..., i, o] == 0) for every output o that is still alive.  [x_i is multiplied by 0 only.]
 3. removal              channel c of a space is removed when, at EVERY kernel reading a tensor of the space, it is
                         zero there (rule 1) or ignored (rule 2); then its column is deleted from every kernel
                         producing the space, its row from every kernel reading it, its entry from every BN in it.
                         [The channel changes no value that any surviving unit reads, and the layers inside the space
                         are channel-wise, so no other channel depended on it.] Removing units removes rows/columns
                         of the neighbouring kernels, which can make more units dead; the rules are applied in rounds
                         until nothing changes (units removed in a round are judged against the kernels left after the
                         previous round, so every removal in a round is justified by the same state).
 4. Flatten (channels_last)  feature p of Flatten((H, W, C)) comes from channel f = p mod C (p = (h*W + w)*C + f).
                         A conv filter f feeding a Flatten is removed only as a whole: when it is zero (rule 1) or
                         when ALL its H*W flattened features are ignored by the Dense (rule 2 on every p with
                         p mod C == f); the Dense loses those H*W rows. Single flattened features of a surviving
                         filter cannot be dropped with stock layers (that needs a gather layer), so they stay,
                         with their zero rows (noted as "flatten_partial").
 5. BatchNormalization   inference output y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel. Slicing a
                         channel that no reader uses (rule 2) is always exact (gamma, beta, moving mean and variance
                         are sliced). A channel that is zero before the BN (rule 1) is zero after it only if
                         BN(0) = beta - gamma * mean / sqrt(var + eps) == 0; this module uses the condition
                         beta == 0 and (mean == 0 or gamma == 0), under which every floating-point evaluation order
                         gives exactly 0 (the repo's "frozen" BN, mean 0 and beta 0, meets it; batch_norm "none" has
                         no BN). Otherwise the channel is the constant BN(0) != 0, which its readers use: it is kept
                         (noted as "nonzero_offset"). Exactness is claimed for inference (training=False).
 6. Add (residual sums)  all summands and the sum are one space, sliced alike, so channels stay aligned. A residual
                         channel is removed when every reader of the stream ignores it or it is zero at every reader
                         (every summand zero, e.g. conv_b and shortcut columns both zero with frozen BN or none).
                         This does at least what "leave the residual stream in place" does (units strictly inside a
                         block, conv_a -> BN -> ELU -> conv_b, shrink by rules 1-3) and more, and stays exact.
 7. never removed        the units of a space that holds a model output (the output layer: a class whose logit is 0
                         still matters for the softmax, and the outputs keep their shape), and the channels of a space
                         that any other layer touches (softmax, Reshape, Concatenate, nested models, unknown layers:
                         "opaque"). A space never drops to 0 units: if all are dead, its first unit is kept as a
                         placeholder whose incoming and outgoing weights are set to 0 (exact: the unit was dead, so
                         nothing read its value; noted as "last_unit"), and the units that fed only it die too.
 8. model inputs         an input feature (e.g. an MNIST pixel of a flat-input FCN) whose rows are zero in every
                         first kernel is removed (rule 2): the shrunk model takes fewer inputs, the surviving original
                         indices are result.survivors["input:<input name>"], and callers feed x[..., survivors]
                         (`reduce_inputs`). For an image input this removes whole colour channels only.
                         `trim_inputs=False` keeps every input.

Reasons are recorded: `removed[key]` maps "no_incoming" (zero wherever read), "no_outgoing" (ignored by every
reader) or "mixed" (zero at some readers, ignored by the others) to original unit indices; `kept[key]` lists units
that have no incoming weight but were kept ("nonzero_offset", "pinned", "last_unit") and conv filters with some
unread flattened features ("flatten_partial").

Architecture string (one line): the model input's feature/channel count, then the unit count of every Dense /
Conv2D layer in graph (topological) order joined by "-", and at every Flatten " | " followed by its number of
output features; before and after are joined by " → ". Examples (runs of ledger entries fcn-965ff8d5 and
conv2-f3384725): FCN "784-300-100-10 → 468-115-99-10", Conv2 "3-64-64 | 16384-256-256-10 → 3-59-21 |
5376-35-159-10"; ResNets list every conv, shortcut convs included, in the order of `model.layers`. Several inputs
are joined by ", ".

Structure: pure numpy functions (`no_incoming`, `no_outgoing`, `flatten_channels`, `bn_maps_zero_to_zero`,
`analyze_graph` over a `Graph` of tensors and nodes, `summarize`, `chain_survivors`), then a thin Keras layer:
`model_graph` walks a functional model with the public API (model.layers, layer.input, layer.output), `analyze` /
`surviving_units` / `effective_architecture` run the analysis without building anything, and `shrink` strips the
masks (export.strip), rebuilds the model with keras.models.clone_model at the smaller sizes and assigns the sliced
weights. `save_shrunk` / `load_survivors` write and read the .keras file and its JSON sidecar.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import keras
import numpy as np

import run_folder
from custom_layers import MaskedConv2D, MaskedDense, MaskedKernelMixin, leaf_layers

INPUT_PREFIX = "input:"
ARROW = "→"
SIDECAR_SUFFIX = ".survivors.json"
SIDECAR_FORMAT = "signed-supermask-shrunk"
SIDECAR_VERSION = 1

# Activations applied channel by channel; the first set maps 0 to exactly 0.
ZERO_PRESERVING_ACTIVATIONS = frozenset({"linear", "elu", "relu", "relu6", "leaky_relu", "selu", "tanh", "silu",
                                         "swish", "gelu", "softsign", "mish", "hard_silu", "hard_swish"})
OTHER_CHANNELWISE_ACTIVATIONS = frozenset({"sigmoid", "hard_sigmoid", "softplus", "exponential"})

NODE_KINDS = ("kernel", "channelwise", "bn", "add", "flatten", "opaque")


# --------------------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------------------
def connections(kernel) -> np.ndarray:
    """conn[i, o] = any(K[..., i, o] != 0) over the kernel's spatial positions: (C_in, C_out) bool."""
    k = np.asarray(kernel)
    return (k != 0).reshape((-1,) + k.shape[-2:]).any(axis=0)


def no_incoming(kernel) -> np.ndarray:
    """dead[o] = all(K[..., i, o] == 0 for every input i and position): output unit o receives nothing."""
    return ~connections(kernel).any(axis=0)


def no_outgoing(kernel) -> np.ndarray:
    """dead[i] = all(K[..., i, o] == 0 for every output o and position): input unit i reaches nothing."""
    return ~connections(kernel).any(axis=1)


def flatten_channels(spatial_shape, channels: int) -> np.ndarray:
    """Channel of each output feature of a channels_last Flatten of (*spatial_shape, channels):
    feature p = (h*W + w)*C + f comes from channel f = p mod C."""
    return np.tile(np.arange(int(channels)), int(np.prod(tuple(spatial_shape), dtype=np.int64)))


def bn_maps_zero_to_zero(gamma=None, beta=None, moving_mean=None) -> np.ndarray:
    """Per channel: does inference BN map x = 0 to exactly 0?  BN(0) = beta - gamma * mean / sqrt(var + eps); the
    test used is the sufficient condition beta == 0 and (mean == 0 or gamma == 0), exact in any evaluation order.
    gamma / beta None mean scale / center off (gamma = 1, beta = 0)."""
    arrays = [np.asarray(a) for a in (gamma, beta, moving_mean) if a is not None]
    n = arrays[0].shape[0]
    gamma = np.ones(n) if gamma is None else np.asarray(gamma)
    beta = np.zeros(n) if beta is None else np.asarray(beta)
    mean = np.zeros(n) if moving_mean is None else np.asarray(moving_mean)
    return (beta == 0) & ((mean == 0) | (gamma == 0))


@dataclasses.dataclass
class Node:
    """One operation of a `Graph`. kind is one of NODE_KINDS:

    kernel       Dense / Conv2D: `kernel` (..., C_in, C_out) (only its zero pattern is used); `zero_ok[o]` says
                 that unit o outputs 0 when all its inputs contribute 0 (bias 0 and act(0) == 0)
    channelwise  a per-channel layer; `zero_ok` (bool) says it maps 0 to 0
    bn           BatchNormalization; `zero_ok` per channel (bn_maps_zero_to_zero)
    add          sum of its inputs (same channels)
    flatten      channels_last Flatten
    opaque       anything else: its inputs and outputs keep all their channels
    `params`: its number of weights per channel (bn), or its fixed count (opaque); `bias`: a kernel with a bias.
    """

    kind: str
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    kernel: np.ndarray | None = None
    zero_ok: object = True
    params: int = 0
    bias: bool = False


@dataclasses.dataclass
class Graph:
    """Tensors (by index: `channels[t]` = size of the last axis, `spatial[t]` = the axes between batch and channels)
    and nodes in topological order; `inputs` / `input_names` / `outputs` are the model's."""

    channels: list[int]
    spatial: list[tuple[int, ...]]
    nodes: list[Node]
    inputs: list[int]
    input_names: list[str]
    outputs: list[int]


@dataclasses.dataclass
class GraphAnalysis:
    """Result of `analyze_graph`. Channel spaces are numbered by `root`; `cmap[t]` maps the channels of tensor t to
    the channels of its space (identity, or p -> p mod C after a Flatten). `alive[r]` are the surviving channels of
    space r; `reason[r][c]` why channel c was removed ("" if alive); `kept[r]` {channel: note} for kept units that
    look dead; `rounds` is the number of rounds that removed something."""

    graph: Graph
    root: list[int]
    cmap: list[np.ndarray]
    alive: dict[int, np.ndarray]
    reason: dict[int, np.ndarray]
    kept: dict[int, dict[int, str]]
    pinned: set[int]
    rounds: int
    severed: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

    def tensor_alive(self, t: int) -> np.ndarray:
        """Surviving channels (bool) of tensor t."""
        return self.alive[self.root[t]][self.cmap[t]]

    def tensor_severed(self, t: int) -> np.ndarray:
        """Channels of tensor t kept only as a placeholder ("last_unit"): their weights are set to 0."""
        return self.severed[self.root[t]][self.cmap[t]]


class _UnionFind:
    def __init__(self, n):
        self.parent = list(range(n))

    def find(self, a):
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)


def _spaces(graph: Graph):
    """(root per tensor, channel map per tensor, pinned roots). Channel-wise layers, BN and Add join tensors into
    one space; a Flatten output space is derived from its input's space by p -> p mod C."""
    n = len(graph.channels)
    uf = _UnionFind(n)
    for node in graph.nodes:
        if node.kind in ("channelwise", "bn", "add"):
            for t in node.inputs + node.outputs:
                if graph.channels[t] != graph.channels[node.outputs[0]]:
                    raise ValueError(f"{node.name}: channel counts differ across a channel-wise layer")
                uf.union(t, node.outputs[0])
    produced_by = {t: node for node in graph.nodes for t in node.outputs}
    derived: dict[int, tuple[int, np.ndarray]] = {}
    opaque_flattens = set()
    for node in graph.nodes:
        if node.kind != "flatten":
            continue
        t_in, t_out = node.inputs[0], node.outputs[0]
        cls = uf.find(t_out)
        members = [t for t in range(n) if uf.find(t) == cls]
        # The derived space must be fed by this Flatten only (not also by an Add with a kernel's output).
        others = [t for t in members if t in produced_by and produced_by[t].kind not in ("channelwise", "bn", "add")
                  and produced_by[t] is not node]
        if cls in derived or others or t_out in graph.inputs:
            opaque_flattens.add(node.name)
            continue
        derived[cls] = (t_in, flatten_channels(graph.spatial[t_in], graph.channels[t_in]))

    root, cmap = [0] * n, [None] * n

    def resolve(t, depth=0):
        if depth > n:
            raise ValueError("cyclic Flatten derivation")
        cls = uf.find(t)
        if cls in derived:
            parent, mapping = derived[cls]
            r, parent_map = resolve(parent, depth + 1)
            return r, parent_map[mapping]
        return cls, np.arange(graph.channels[t])

    for t in range(n):
        root[t], cmap[t] = resolve(t)
    pinned = {root[t] for t in graph.outputs}
    for node in graph.nodes:
        if node.kind == "opaque" or (node.kind == "flatten" and node.name in opaque_flattens):
            pinned.update(root[t] for t in node.inputs + node.outputs)
    return root, cmap, pinned, opaque_flattens


def _all_at(size: int, index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """out[c] = AND of values[j] over every j with index[j] == c (True where no j maps to c)."""
    out = np.ones(size, bool)
    np.logical_and.at(out, index, values)
    return out


def analyze_graph(graph: Graph, trim_inputs: bool = True, max_rounds: int = 10_000) -> GraphAnalysis:
    """Dead units of `graph` by rules 1-8 of the module docstring, iterated to a fixed point (pure numpy)."""
    root, cmap, pinned, opaque_flattens = _spaces(graph)
    if not trim_inputs:
        pinned.update(root[t] for t in graph.inputs)
    roots = sorted(set(root))
    size = {r: int(graph.channels[r]) for r in roots}  # a root is a non-derived tensor of its space
    alive = {r: np.ones(size[r], bool) for r in roots}
    reason = {r: np.full(size[r], "", dtype=object) for r in roots}
    kept: dict[int, dict[int, str]] = {r: {} for r in roots}
    severed = {r: np.zeros(size[r], bool) for r in roots}
    kernels = [node for node in graph.nodes if node.kind == "kernel"]
    conn = {id(node): connections(node.kernel) for node in kernels}
    readers = defaultdict(list)  # root -> [(tensor, kernel node)]
    for node in kernels:
        readers[root[node.inputs[0]]].append((node.inputs[0], node))

    def tensor_alive(t):  # alive and not a severed placeholder: what the kernels still connect
        return (alive[root[t]] & ~severed[root[t]])[cmap[t]]

    def forward():
        live = {id(k): conn[id(k)] & tensor_alive(k.inputs[0])[:, None] & tensor_alive(k.outputs[0])[None, :]
                for k in kernels}
        zero = {t: np.zeros(graph.channels[t], bool) for t in graph.inputs}
        for node in graph.nodes:
            if node.kind == "kernel":
                z_in = zero[node.inputs[0]]
                out = ~np.any(live[id(node)] & ~z_in[:, None], axis=0) & np.asarray(node.zero_ok, bool)
            elif node.kind in ("channelwise", "bn"):
                out = zero[node.inputs[0]] & np.asarray(node.zero_ok, bool)
            elif node.kind == "add":
                out = np.logical_and.reduce([zero[t] for t in node.inputs])
            elif node.kind == "flatten" and node.name not in opaque_flattens:
                t_in = node.inputs[0]
                out = zero[t_in][flatten_channels(graph.spatial[t_in], graph.channels[t_in])]
            else:
                out = None
            for t in node.outputs:
                zero[t] = np.zeros(graph.channels[t], bool) if out is None else out
        return live, zero

    rounds = 0
    for _ in range(max_rounds):
        live, zero = forward()
        changed = False
        for r in roots:
            if r in pinned or not alive[r].any():
                continue
            zero_all, ignored_all, ok = np.ones(size[r], bool), np.ones(size[r], bool), np.ones(size[r], bool)
            for t, node in readers[r]:
                z = zero[t]
                ignored = ~live[id(node)].any(axis=1)
                zero_all &= _all_at(size[r], cmap[t], z)
                ignored_all &= _all_at(size[r], cmap[t], ignored)
                ok &= _all_at(size[r], cmap[t], z | ignored)
            new = alive[r] & ~ok  # ok: removable (zero or ignored at every reader)
            if not new.any():
                # Keep one dead unit as a placeholder (an already severed one if any); its weights become 0.
                candidates = np.flatnonzero(alive[r] & severed[r])
                first = int(candidates[0] if candidates.size else np.flatnonzero(alive[r])[0])
                new[first] = True
                if not severed[r][first]:
                    severed[r][first] = changed = True
                    kept[r][first] = "last_unit"
            gone = alive[r] & ~new
            if gone.any():
                changed = True
                reason[r][gone & zero_all] = "no_incoming"
                reason[r][gone & ~zero_all & ignored_all] = "no_outgoing"
                reason[r][gone & ~zero_all & ~ignored_all] = "mixed"
                alive[r] = new
        if not changed:
            break
        rounds += 1
    else:
        raise RuntimeError("analyze_graph: no fixed point")

    # Notes on kept units that look dead (final state: the last forward() saw the final `alive`).
    producers = defaultdict(list)
    for node in kernels:
        producers[root[node.outputs[0]]].append(node.outputs[0])
    for r in roots:
        if producers[r] and graph.channels[producers[r][0]] == size[r]:
            dead_in = np.logical_and.reduce([zero[t] for t in producers[r]])
            for c in np.flatnonzero(dead_in & alive[r]):
                kept[r].setdefault(int(c), "pinned" if r in pinned else "nonzero_offset")
        for t, node in readers[r]:
            if np.array_equal(cmap[t], np.arange(graph.channels[t])):
                continue
            ignored = ~live[id(node)].any(axis=1) | zero[t]
            some = ~_all_at(size[r], cmap[t], ~ignored)  # at least one flattened feature ignored
            for c in np.flatnonzero(some & alive[r]):
                kept[r].setdefault(int(c), "flatten_partial")
    return GraphAnalysis(graph, root, cmap, alive, reason, kept, pinned, rounds, severed)


def chain_graph(kernels, names=None) -> Graph:
    """A Graph of a chain x -> K1 -> ELU -> K2 -> ELU -> ... -> Kn -> softmax (the FCN's layout) from kernels."""
    names = list(names) if names is not None else [f"dense_{i}" for i in range(len(kernels))]
    channels = [int(np.shape(kernels[0])[-2])]
    nodes = []
    for i, (k, name) in enumerate(zip(kernels, names)):
        t_in = len(channels) - 1
        channels.append(int(np.shape(k)[-1]))
        nodes.append(Node("kernel", name, (t_in,), (len(channels) - 1,), kernel=np.asarray(k),
                          zero_ok=np.ones(channels[-1], bool)))
        t = len(channels) - 1
        channels.append(channels[-1])
        last = i == len(kernels) - 1
        nodes.append(Node("opaque" if last else "channelwise", f"act_{i}", (t,), (len(channels) - 1,)))
    return Graph(channels, [()] * len(channels), nodes, [0], ["x"], [len(channels) - 1])


def chain_survivors(kernels, trim_inputs: bool = True) -> list[list[int]]:
    """Surviving original indices of [input features, layer 1 units, ..., output units] of a Dense chain with ELU
    between the kernels (the FCN), by `analyze_graph`."""
    graph = chain_graph(kernels)
    result = analyze_graph(graph, trim_inputs=trim_inputs)
    tensors = [0] + [node.outputs[0] for node in graph.nodes if node.kind == "kernel"]
    return [np.flatnonzero(result.tensor_alive(t)).tolist() for t in tensors]


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------
def format_architecture(layout: list[tuple[str, str]], counts: dict[str, int]) -> str:
    """'784-300-100-10' or '3-64-64 | 16384-256-256-10' (see the module docstring) from a layout of
    (kind, key) entries, kind 'input' / 'kernel' / 'flatten'."""
    text = ""
    for kind, key in layout:
        n = str(counts[key])
        if kind == "input":
            text += (", " if text else "") + n
        elif kind == "flatten":
            text += " | " + n
        else:
            text += ("-" if text else "") + n
    return text


@dataclasses.dataclass
class UnitAnalysis:
    """Which units of a model survive (`analyze`), without building anything.

    survivors  {key: surviving original indices}; key = Dense / Conv2D layer name (its output units / filters),
               or INPUT_PREFIX + input name (its surviving input features / channels)
    before     {key: units} of the unshrunk model: the same keys plus every Flatten (its output features)
    after      the same counts after shrinking
    removed    {key: {"no_incoming" | "no_outgoing" | "mixed": [original indices]}} (non-empty only)
    kept       {key: {"nonzero_offset" | "pinned" | "last_unit" | "flatten_partial": [original indices]}}
    layout     [(kind, key)] in graph order, for the architecture string
    parameters_before / parameters_after   weights of the stock model (kernels, biases, BN, other layers)
    rounds     rounds of removal until the fixed point
    """

    survivors: dict[str, list[int]]
    before: dict[str, int]
    after: dict[str, int]
    removed: dict[str, dict[str, list[int]]]
    kept: dict[str, dict[str, list[int]]]
    layout: list[tuple[str, str]]
    parameters_before: int
    parameters_after: int
    rounds: int

    @property
    def architecture_before(self) -> str:
        return format_architecture(self.layout, self.before)

    @property
    def architecture_after(self) -> str:
        return format_architecture(self.layout, self.after)

    @property
    def architecture(self) -> str:
        """'784-300-100-10 → 468-115-99-10'."""
        return f"{self.architecture_before} {ARROW} {self.architecture_after}"

    def with_units(self, layer_counts: dict[str, dict]) -> dict[str, dict]:
        """A copy of per-layer counts ({layer: {"kept": ...}}, layers.json) with each layer's `units` and
        `surviving_units` added."""
        return {name: {**counts, "units": self.before.get(name), "surviving_units": self.after.get(name)}
                for name, counts in layer_counts.items()}

    @property
    def input_keys(self) -> list[str]:
        return [key for kind, key in self.layout if kind == "input"]

    @property
    def input_survivors(self) -> list[int]:
        """Surviving input feature indices of the (first) model input."""
        return self.survivors[self.input_keys[0]]

    def to_json(self) -> dict:
        return {"architecture": self.architecture, "architecture_before": self.architecture_before,
                "architecture_after": self.architecture_after, "survivors": self.survivors, "before": self.before,
                "after": self.after, "removed": self.removed, "kept": self.kept,
                "layout": [list(item) for item in self.layout], "parameters_before": self.parameters_before,
                "parameters_after": self.parameters_after, "rounds": self.rounds}


@dataclasses.dataclass
class ShrinkResult(UnitAnalysis):
    """`UnitAnalysis` plus `model`: the shrunk stock Keras model (feed it `reduce_inputs(result, x)`)."""

    model: keras.Model = dataclasses.field(kw_only=True)


def _numpy(value) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value))


# --------------------------------------------------------------------------------------------------------------
# strip
# --------------------------------------------------------------------------------------------------------------
def effective_kernel(layer) -> np.ndarray:
    """w * M in float32, the value a masked layer multiplies its input with (before any compute-dtype cast)."""
    return (_numpy(layer.kernel).astype(np.float32) * _numpy(layer.effective_mask()).astype(np.float32))


def _stock_twin(layer):
    """The stock layer that replaces a masked one (kernel filled in afterwards), or a config clone."""
    if isinstance(layer, MaskedDense):
        return keras.layers.Dense(layer.units, use_bias=False, name=layer.name, dtype=layer.dtype_policy,
                                  kernel_initializer="zeros")
    if isinstance(layer, MaskedConv2D):
        return keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding,
                                   dilation_rate=layer.dilation_rate, data_format="channels_last", use_bias=False,
                                   name=layer.name, dtype=layer.dtype_policy, kernel_initializer="zeros")
    if isinstance(layer, MaskedKernelMixin):
        raise TypeError(f"no stock twin for masked layer {layer.name} of type {type(layer).__name__}")
    return layer.__class__.from_config(layer.get_config())


def strip(model) -> keras.Model:
    """A plain Keras model: masked layers become stock Dense / Conv2D (use_bias=False) with kernel w * M; every
    other layer is cloned with its weights. Works for Sequential and functional models (nested ones included)."""
    stripped = keras.models.clone_model(model, clone_function=_stock_twin, recursive=True)
    targets = dict(leaf_layers(stripped))
    for path, layer in leaf_layers(model):
        target = targets.get(path)
        if target is None:
            raise RuntimeError(f"strip: layer {path} has no counterpart in the clone")
        if isinstance(layer, MaskedKernelMixin):
            target.kernel.assign(effective_kernel(layer))
        elif layer.weights:
            target.set_weights(layer.get_weights())
    return stripped


# --------------------------------------------------------------------------------------------------------------
# Keras: the graph of a model
# --------------------------------------------------------------------------------------------------------------
def _is_masked(layer) -> bool:
    return isinstance(layer, MaskedKernelMixin)


def has_masked_layers(model) -> bool:
    return any(_is_masked(layer) or (isinstance(layer, keras.Model) and has_masked_layers(layer))
               for layer in model.layers)


def _as_functional(model) -> keras.Model:
    if isinstance(model, keras.Sequential):
        if not model.built or not getattr(model, "inputs", None):
            raise ValueError("shrink: build the Sequential model with an Input first")
        inputs, outputs = list(model.inputs), list(model.outputs)
        return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
                           name=model.name)
    if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
        raise TypeError("shrink needs a functional or Sequential model (subclassed models have no graph to walk)")
    return model


def _activation_zero(name) -> bool | None:
    """True / False: channel-wise activation that maps 0 to 0 / not; None: not channel-wise (softmax, custom)."""
    if not isinstance(name, str):
        return None
    if name in ZERO_PRESERVING_ACTIVATIONS:
        return True
    if name in OTHER_CHANNELWISE_ACTIVATIONS:
        return False
    return None


def _channels_last(layer) -> bool:
    fmt = getattr(layer, "data_format", None)
    return fmt in (None, "channels_last")


def _kernel_node(layer, ins, outs, kernel, bias, activation) -> Node:
    zero_ok = np.ones(kernel.shape[-1], bool)
    if bias is not None:
        zero_ok &= bias == 0
    act = _activation_zero(activation)
    if act is None:  # e.g. Dense(activation="softmax") mixes channels
        return Node("opaque", layer.name, ins, outs, params=int(layer.count_params()))
    if not act:
        zero_ok[:] = False
    return Node("kernel", layer.name, ins, outs, kernel=kernel, zero_ok=zero_ok, bias=bias is not None)


def _node_for(layer, ins, outs, ndim) -> Node:
    """The Node of one (non-input) layer; anything not recognised is 'opaque'."""

    def cfg_activation():
        return layer.get_config().get("activation")

    stock_kernel = isinstance(layer, keras.layers.Dense) or (
        isinstance(layer, keras.layers.Conv2D) and layer.groups == 1 and _channels_last(layer))
    if _is_masked(layer):
        kernel = _numpy(layer.kernel).astype(np.float32) * _numpy(layer.effective_mask()).astype(np.float32)
        if kernel.ndim in (2, 4) and len(ins) == 1:
            return _kernel_node(layer, ins, outs, kernel, None, "linear")
    elif stock_kernel and len(ins) == 1:
        bias = _numpy(layer.bias) if layer.use_bias else None
        return _kernel_node(layer, ins, outs, _numpy(layer.kernel), bias, cfg_activation())
    elif isinstance(layer, keras.layers.BatchNormalization):
        axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
        if axis is not None and axis in (-1, ndim - 1):
            zero_ok = bn_maps_zero_to_zero(_numpy(layer.gamma) if layer.scale else None,
                                           _numpy(layer.beta) if layer.center else None, _numpy(layer.moving_mean))
            return Node("bn", layer.name, ins, outs, zero_ok=zero_ok, params=len(layer.weights))
    elif isinstance(layer, keras.layers.Activation):
        act = _activation_zero(cfg_activation())
        if act is not None:
            return Node("channelwise", layer.name, ins, outs, zero_ok=act)
    elif isinstance(layer, (keras.layers.ELU, keras.layers.LeakyReLU)):
        return Node("channelwise", layer.name, ins, outs, zero_ok=True)
    elif isinstance(layer, keras.layers.ReLU):
        cfg = layer.get_config()
        ok = float(cfg.get("threshold") or 0.0) <= 0.0 or float(cfg.get("negative_slope") or 0.0) == 0.0
        return Node("channelwise", layer.name, ins, outs, zero_ok=ok)
    elif isinstance(layer, (keras.layers.Dropout, keras.layers.Identity)):  # identity at inference, 0 -> 0
        return Node("channelwise", layer.name, ins, outs, zero_ok=True)
    elif isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
                            keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)):
        if _channels_last(layer):
            return Node("channelwise", layer.name, ins, outs, zero_ok=True)
    elif isinstance(layer, keras.layers.Flatten) and _channels_last(layer) and len(ins) == 1:
        return Node("flatten", layer.name, ins, outs)
    elif isinstance(layer, keras.layers.Add) and len(ins) >= 2:
        return Node("add", layer.name, ins, outs)
    params = int(layer.count_params()) if layer.built else 0
    return Node("opaque", layer.name, ins, outs, params=params)


def model_graph(model) -> tuple[Graph, keras.Model]:
    """(Graph, the functional model it describes) of a functional or Sequential model, through the public API:
    model.inputs / outputs, model.layers, layer.input / layer.output. Masked layers count as kernels with
    w * M. Shared layers (called twice) and nested models are not walked (a nested model is 'opaque')."""
    functional = _as_functional(model)
    index: dict[int, int] = {}
    keep: list = []  # the KerasTensors themselves, so that their ids stay unique
    channels, spatial = [], []

    def tensor(t) -> int:
        if id(t) not in index:
            shape = tuple(t.shape)
            if len(shape) < 2 or shape[-1] is None:
                raise ValueError(f"shrink: tensor {t} has no static channel axis")
            index[id(t)] = len(channels)
            keep.append(t)
            channels.append(int(shape[-1]))
            spatial.append(tuple(shape[1:-1]))
        return index[id(t)]

    inputs = [tensor(t) for t in keras.tree.flatten(functional.inputs)]
    input_layers = {id(layer.output): layer.name for layer in functional.layers
                    if isinstance(layer, keras.layers.InputLayer)}
    input_names = [input_layers.get(id(t), f"input_{i}") for i, t in enumerate(keras.tree.flatten(functional.inputs))]
    nodes, produced = [], set(inputs)
    pending = [layer for layer in functional.layers if not isinstance(layer, keras.layers.InputLayer)]
    layer_nodes = []
    for layer in pending:
        ins = tuple(tensor(t) for t in keras.tree.flatten(layer.input))
        outs = tuple(tensor(t) for t in keras.tree.flatten(layer.output))
        ndim = len(keras.tree.flatten(layer.input)[0].shape)
        layer_nodes.append(_node_for(layer, ins, outs, ndim) if not isinstance(layer, keras.Model)
                           else Node("opaque", layer.name, ins, outs, params=int(layer.count_params())))
    # Topological order (model.layers already is one for functional models; checked here).
    remaining = list(layer_nodes)
    while remaining:
        ready = [n for n in remaining if all(t in produced for t in n.inputs)]
        if not ready:
            missing = sorted({t for n in remaining for t in n.inputs if t not in produced})
            raise ValueError(f"shrink: tensors {missing[:5]} are consumed but produced by no layer (a shared layer "
                             "called more than once is not supported)")
        for n in ready:
            nodes.append(n)
            produced.update(n.outputs)
            remaining.remove(n)
    outputs = [tensor(t) for t in keras.tree.flatten(functional.outputs)]
    if any(t not in produced for t in outputs):
        raise ValueError("shrink: a model output is produced by no layer (shared layer?)")
    return Graph(channels, spatial, nodes, inputs, input_names, outputs), functional


def _parameters(graph: Graph, alive_of) -> int:
    """Weights of the stock model when tensor t keeps the channels alive_of(t)."""
    total = 0
    for node in graph.nodes:
        if node.kind == "kernel":
            n_in, n_out = int(alive_of(node.inputs[0]).sum()), int(alive_of(node.outputs[0]).sum())
            total += int(np.prod(node.kernel.shape[:-2], dtype=np.int64)) * n_in * n_out + (n_out if node.bias else 0)
        elif node.kind == "bn":
            total += node.params * int(alive_of(node.inputs[0]).sum())
        elif node.kind == "opaque":
            total += node.params
    return total


def summarize(graph: Graph, result: GraphAnalysis) -> UnitAnalysis:
    """The UnitAnalysis (survivors, counts, reasons, layout, parameters) of an analysed Graph."""
    survivors, before, after, removed, kept, layout = {}, {}, {}, {}, {}, []
    keys_of_root = defaultdict(list)
    for t, name in zip(graph.inputs, graph.input_names):
        key = INPUT_PREFIX + name
        layout.append(("input", key))
        keys_of_root[result.root[t]].append((key, t))
    for node in graph.nodes:
        if node.kind == "kernel":
            layout.append(("kernel", node.name))
            keys_of_root[result.root[node.outputs[0]]].append((node.name, node.outputs[0]))
        elif node.kind == "flatten":
            layout.append(("flatten", node.name))
            before[node.name] = graph.channels[node.outputs[0]]
            after[node.name] = int(result.tensor_alive(node.outputs[0]).sum())
    for r, entries in keys_of_root.items():
        for key, t in entries:
            mask = result.tensor_alive(t)
            survivors[key] = np.flatnonzero(mask).tolist()
            before[key], after[key] = int(mask.size), int(mask.sum())
            why = result.reason[r]
            groups = {label: np.flatnonzero(why == label).tolist() for label in ("no_incoming", "no_outgoing", "mixed")}
            if any(groups.values()):
                removed[key] = {label: idx for label, idx in groups.items() if idx}
            notes = defaultdict(list)
            for c, note in sorted(result.kept[r].items()):
                notes[note].append(c)
            if notes:
                kept[key] = dict(notes)
    return UnitAnalysis(survivors=survivors, before=before, after=after, removed=removed, kept=kept, layout=layout,
                        parameters_before=_parameters(graph, lambda t: np.ones(graph.channels[t], bool)),
                        parameters_after=_parameters(graph, result.tensor_alive), rounds=result.rounds)


def analyze(model, trim_inputs: bool = True) -> UnitAnalysis:
    """The dead-unit analysis of `model` (masked or stock; masked layers count with w * M), nothing rebuilt."""
    graph, _ = model_graph(model)
    return summarize(graph, analyze_graph(graph, trim_inputs=trim_inputs))


def surviving_units(model, trim_inputs: bool = True) -> dict[str, int]:
    """{key: surviving units} per input (INPUT_PREFIX + name), Dense / Conv2D layer and Flatten."""
    return analyze(model, trim_inputs).after


def effective_architecture(model, trim_inputs: bool = True) -> str:
    """'784-300-100-10 → 468-115-99-10': the architecture and what survives of it (see the module docstring)."""
    return analyze(model, trim_inputs).architecture


# --------------------------------------------------------------------------------------------------------------
# Keras: rebuilding at the smaller sizes
# --------------------------------------------------------------------------------------------------------------
def _rebuild(functional: keras.Model, graph: Graph, result: GraphAnalysis) -> keras.Model:
    nodes = {node.name: node for node in graph.nodes}
    alive = result.tensor_alive
    input_alive = {t: alive(t) for t in graph.inputs}
    flat_inputs = keras.tree.flatten(functional.inputs)
    new_inputs = {}
    for t_index, t, name in zip(graph.inputs, flat_inputs, graph.input_names):
        shape = tuple(t.shape[1:-1]) + (int(input_alive[t_index].sum()),)
        new_inputs[id(t)] = keras.Input(shape=shape, dtype=t.dtype, name=name)
    input_tensors = keras.tree.map_structure(lambda t: new_inputs[id(t)], functional.input)

    def clone(layer):
        config = layer.get_config()
        node = nodes.get(layer.name)
        if node is not None and node.kind == "kernel":
            n = int(alive(node.outputs[0]).sum())
            config["filters" if isinstance(layer, keras.layers.Conv2D) else "units"] = n
        return layer.__class__.from_config(config)

    clone_map = {}
    for layer in functional.layers:
        node = nodes.get(layer.name)
        if node is not None and node.kind == "kernel" and _is_masked(layer):
            raise TypeError("shrink: strip the masked layers first (strip)")
        clone_map[layer.name] = layer
    shrunk = keras.models.clone_model(functional, input_tensors=input_tensors, clone_function=clone)
    for layer in shrunk.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        original = clone_map[layer.name]
        node = nodes.get(layer.name)
        weights = original.get_weights()
        if node is not None and node.kind == "kernel":
            rows = np.flatnonzero(alive(node.inputs[0]))
            cols = np.flatnonzero(alive(node.outputs[0]))
            kernel = np.take(np.take(weights[0], rows, axis=-2), cols, axis=-1).copy()
            kernel[..., result.tensor_severed(node.inputs[0])[rows], :] = 0  # placeholders ("last_unit")
            kernel[..., result.tensor_severed(node.outputs[0])[cols]] = 0
            weights = [kernel] + ([weights[1][cols]] if len(weights) > 1 else [])
        elif node is not None and node.kind == "bn":
            channels = np.flatnonzero(alive(node.inputs[0]))
            weights = [w[channels] for w in weights]
        if weights:
            layer.set_weights(weights)
    return shrunk


def shrink(model, trim_inputs: bool = True) -> ShrinkResult:
    """Remove the dead units of `model` (a Supermask, stripped first, or a stock model) by rules 1-8 of the module
    docstring; returns the stock shrunk model with the survivors and unit counts."""
    if has_masked_layers(model):
        model = strip(model)
    graph, functional = model_graph(model)
    if any(_is_masked(layer) for layer in functional.layers):
        raise TypeError("shrink: masked layers left after strip")
    result = analyze_graph(graph, trim_inputs=trim_inputs)
    shrunk = _rebuild(functional, graph, result)
    return ShrinkResult(**dataclasses.asdict(summarize(graph, result)), model=shrunk)


def reduce_inputs(result: UnitAnalysis, x):
    """x[..., survivors] for the (single) model input: what the shrunk model takes. A list of arrays for several
    inputs."""
    keys = result.input_keys
    if isinstance(x, (list, tuple)):
        return [np.take(np.asarray(v), result.survivors[k], axis=-1) for v, k in zip(x, keys)]
    return np.take(np.asarray(x), result.survivors[keys[0]], axis=-1)


def max_abs_difference(result: ShrinkResult, reference, x) -> float:
    """max |shrunk(reduce_inputs(x)) - reference(x)| at inference."""
    a = _numpy(result.model(reduce_inputs(result, x), training=False))
    b = _numpy(reference(x, training=False))
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------
def sidecar_path(path) -> Path:
    """'<dir>/<stem>.survivors.json' next to '<dir>/<stem>.keras'."""
    path = Path(path)
    if path.name.endswith(SIDECAR_SUFFIX):
        return path
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def _json_lines(obj: dict) -> str:
    """JSON with one top-level key per line and compact values (the index lists stay short)."""
    items = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False, separators=(',', ':'))}" for k, v in obj.items()]
    return "{\n" + ",\n".join(items) + "\n}\n"


def save_shrunk(result: ShrinkResult, path) -> dict[str, Path]:
    """Write result.model to `path` (.keras) and the JSON sidecar `<stem>.survivors.json` next to it (survivors,
    unit counts, architecture strings), each atomically (temp file in the same directory, then os.replace).
    Returns {'model': path, 'sidecar': sidecar path}."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"save_shrunk writes a .keras file, got {path}")
    run_folder.atomic_save_model(result.model, path)
    meta = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "model_file": path.name, **result.to_json()}
    side = sidecar_path(path)
    run_folder.atomic_write_text(side, _json_lines(meta))
    return {"model": path, "sidecar": side}


def load_survivors(path) -> dict:
    """The sidecar of a shrunk model (`path`: the .keras file or the sidecar itself) as a dict."""
    meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    if meta.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{sidecar_path(path)} is not a shrunk-model sidecar")
    return meta


def input_indices(sidecar: dict) -> list[int]:
    """The original indices of the input features a shrunk model takes (its first input), from its sidecar: an
    input pipeline feeds x[..., input_indices(sidecar)]."""
    key = next(key for kind, key in sidecar["layout"] if kind == "input")
    return sidecar["survivors"][key]


def load_shrunk(path) -> tuple[keras.Model, dict]:
    """(the stock shrunk model, its sidecar dict); needs no code from this repository."""
    return keras.models.load_model(Path(path)), load_survivors(path)
