"""Train the FCN signed Supermask on MNIST and print its accuracy and remaining weights. The recipe is
configs/fcn.yaml's, which lands the paper's FCN row after 100 epochs; 10 epochs here, for a quick look.

    python minimal_working_example.py                      # MNIST from tensorflow-datasets (downloads)
    python minimal_working_example.py ~/datasets           # offline: a directory holding mnist.npz
"""
import sys

from architectures import build_model
from custom_layers import MaskedLayers, mask_statistics
from data_preprocessor import DataUnavailableError, load_dataset
from model_trainer import OptimizerSpec, ScheduleSpec, train

data_dir = sys.argv[1] if len(sys.argv) > 1 else None
if data_dir is None:  # offline, tensorflow-datasets gives up only after minutes of retries
    print("Downloading MNIST with tensorflow-datasets; offline: python minimal_working_example.py DIR", file=sys.stderr)
try:
    data = load_dataset("mnist", source="local" if data_dir else "tfds", data_dir=data_dir, batch_size=128,
                        shuffle=False)  # the authors' MNIST order, the same every epoch
except DataUnavailableError as exc:  # no internet, or no mnist.npz in the folder given
    sys.exit(f"error: {exc.reason}\nOffline: python minimal_working_example.py DIR, where DIR holds mnist.npz.")

# Frozen signed-constant weights +-sqrt(6/n_in), Xavier-uniform masks, tau = 0.4 * max|m_init| per layer.
layers = MaskedLayers(mask_mode="signed", weight_init="elus_x2", mask_init="xavier_uniform",
                      threshold_fraction=0.4, seed=7531)
model = build_model("fcn", layers)

# SGD + Nesterov momentum with decoupled weight decay; lr and wd decay x0.9 every 10 epochs.
result = train(model, data, epochs=10,
               optimizer=OptimizerSpec("sgdw", learning_rate=0.05, weight_decay=1.3e-4),
               schedule=ScheduleSpec("exponential_decay", decay_epochs=10, decay_rate=0.9))

stats = mask_statistics(model)
print(f"test accuracy: {100 * result.final['test_accuracy']:.2f} %")
print(f"remaining weights: {stats['remaining_percent']:.2f} % "
      f"({stats['remaining_weights']} of {stats['total_weights']})")
