"""Unlearning sweep: cnn_mnist on mnist_subset (non-convex setting)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "cnn_mnist"
  c.dataset = "mnist_subset"
  c.model = "cnn_mnist"
  c.model_kwargs = {}
  # Plain SGD + L2, replayable by retrain and DeltaGrad. 16 rather than 20
  # epochs: 3 seeds x 3 ratios on 2 shared CPU cores must stay near 40 min.
  c.epochs = 16
  c.batch_size = 128
  c.learning_rate = 0.2
  c.schedule = "step"
  c.l2 = 5e-4
  c.snapshots = 2
  c.ratios = (0.01, 0.1, 0.3)
  c.seeds = (0, 1, 2)
  c.methods = {
      "mini_unlearning": {"steps": 3},
      "finetune": {"epochs": 2},
      "neg_grad": {},
      "deltagrad": {"period": 5, "burn_in": 20, "memory": 2},
  }
  c.devices = 0          # 0: all available devices shard mini_unlearning
  c.warmup = False       # compile time is reported separately anyway
  c.lira_shadows = 0
  return c
