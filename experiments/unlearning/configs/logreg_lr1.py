"""As logreg.py with learning rate 1.0 (a twice larger step).

mnist_subset flattened, multinomial logistic regression with L2, large
batches and a halving learning rate, as in DeltaGrad's MNIST example
(batch 16384 of 60000, 20 epochs, lr 0.1 then 0.05); scaled to 4000
examples.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "logreg_lr1"
  c.dataset = "mnist_subset"
  c.model = "mlp"
  c.model_kwargs = {"hidden": ()}
  c.epochs = 20
  c.batch_size = 1024
  c.learning_rate = 1.0
  c.schedule = "step"
  c.l2 = 1e-3
  c.snapshots = 2
  c.ratios = (0.01, 0.1, 0.3)
  c.seeds = (0, 1, 2)
  c.methods = {
      "mini_unlearning": {"steps": 4},
      "finetune": {"epochs": 2},
      "neg_grad": {},
      "deltagrad": {"period": 5, "burn_in": 20, "memory": 2},
  }
  c.devices = 0
  c.warmup = True        # runs take milliseconds: time them compiled,
  c.repeats = 5          # and take the median of 5 (shared machine)
  c.lira_shadows = 16    # cheap for a linear model: offline LiRA column
  return c
