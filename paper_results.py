"""The paper's reported results (docs/paper_notes.md, "Results of the paper"), to print next to measured ones.

Accuracy and remaining weights are means over the paper's runs; intervals are as printed in the paper's table
(their kind, min-max or quantiles, is not known). Baseline rows have no remaining-weights figure (100 %).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PaperRow:
    model: str
    dataset: str
    accuracy: float
    accuracy_interval: tuple[float, float] | None = None
    remaining_percent: float | None = None
    remaining_interval: tuple[float, float] | None = None
    parameters: int | None = None

    @property
    def dataset_key(self) -> str:
        """The dataset as configs name it ("CIFAR-10" -> "cifar10")."""
        return DATASET_KEYS[self.dataset]


DATASET_KEYS = {"MNIST": "mnist", "CIFAR-10": "cifar10", "CIFAR-100": "cifar100"}


def compares_with_paper(source: str | None) -> bool:
    """Whether a run whose data came from `source` can be set beside the paper's numbers: not one on synthetic
    data, which is made up (the summary, the figures and the ledger all ask this)."""
    return source != "synthetic"


def paper_figure(value: float | None, interval: tuple[float, float] | None = None) -> str:
    """A paper figure as this repository prints it: two decimals, then its interval as the paper prints it
    ("0.60 [0.58, 0.62]"); "–" where the paper gives no figure."""
    if value is None:
        return "–"
    return f"{value:.2f}" + (f" [{interval[0]}, {interval[1]}]" if interval else "")


PAPER_RESULTS: dict[str, PaperRow] = {
    "fcn": PaperRow("FCN", "MNIST", 97.48, (97.3, 97.7), 3.77, (3.7, 3.8), 266_200),
    "conv2": PaperRow("Conv2", "CIFAR-10", 68.37, (67.7, 69.0), 0.60, (0.58, 0.62), 4_300_992),
    "conv4": PaperRow("Conv4", "CIFAR-10", 77.40, (76.7, 78.3), 2.91, (2.9, 3.0), 2_425_024),
    "conv6": PaperRow("Conv6", "CIFAR-10", 79.17, (78.1, 80.5), 2.36, (1.9, 2.6), 2_261_184),
    "conv8": PaperRow("Conv8", "CIFAR-10", 80.91, (79.9, 81.7), 1.17, (1.1, 1.2), 5_275_840),
    "resnet20": PaperRow("ResNet20", "CIFAR-10", 81.68, None, 21.13, None, 248_624),
    "resnet20x2": PaperRow("ResNet20x2", "CIFAR-10", 84.42, None, 7.69, None, 992_352),
    "resnet20x3": PaperRow("ResNet20x3", "CIFAR-10", 84.89, None, 4.06, None, 2_231_184),
    "resnet56": PaperRow("ResNet56", "CIFAR-100", 60.01, None, 29.39, None, 834_992),
    "resnet110": PaperRow("ResNet110", "CIFAR-100", 46.42, None, 20.64, None, 1_705_904),
    "fcn_baseline": PaperRow("FCN baseline", "MNIST", 97.42, (97.4, 97.5), None, None, 266_200),
    "conv2_baseline": PaperRow("Conv2 baseline", "CIFAR-10", 68.79, (68.4, 69.2), None, None, 4_300_992),
    "conv4_baseline": PaperRow("Conv4 baseline", "CIFAR-10", 74.50, (74.7, 75.3), None, None, 2_425_024),
    "conv6_baseline": PaperRow("Conv6 baseline", "CIFAR-10", 75.91, (75.4, 76.4), None, None, 2_261_184),
    "conv8_baseline": PaperRow("Conv8 baseline", "CIFAR-10", 72.24, (71.4, 73.0), None, None, 5_275_840),
    "resnet20_baseline": PaperRow("ResNet20 baseline", "CIFAR-10", 84.91, None, None, None, 248_624),
    "resnet20x2_baseline": PaperRow("ResNet20x2 baseline", "CIFAR-10", 86.80, None, None, None, 992_352),
    "resnet20x3_baseline": PaperRow("ResNet20x3 baseline", "CIFAR-10", 87.32, None, None, None, 2_231_184),
    "resnet56_baseline": PaperRow("ResNet56 baseline", "CIFAR-100", 68.04, None, None, None, 834_992),
    "resnet110_baseline": PaperRow("ResNet110 baseline", "CIFAR-100", 62.70, None, None, None, 1_705_904),
}
BASELINE_SUFFIX = "_baseline"  # "conv2_baseline" is the dense baseline of row "conv2"
SUPERMASK_ROWS = tuple(row for row in PAPER_RESULTS if not row.endswith(BASELINE_SUFFIX))  # the table's rows


def baseline_of(row: str) -> str:
    """The key of row `row`'s dense baseline ("conv2" -> "conv2_baseline")."""
    return f"{row}{BASELINE_SUFFIX}"
