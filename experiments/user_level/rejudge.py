"""How much the judge matters: rescore a study's label users with other judges.

  python experiments/user_level/rejudge.py RESULTS_DIR [JUDGE ...]

Reads the representatives a `run.py` study stored under
``RESULTS_DIR/reps/B<b>_label/<method>/user<i>.npy`` (20 label users at
B = 30 and 100, configs/default.py's pool and seed) and prints each
method's attribute accuracy as read by each judge, next to the judge's own
accuracy on the users' real images. Every judge is trained like the
study's (`jaxleak.cli.user_level.prepare`: 15 epochs on the judge pool
plus the test split, seed 1, disjoint from every user) and cached under
``configs/default.py``'s ``models_dir/judge_<name>``. Judges (default: all):

* ``mlp_sigmoid``: the study's judge (MLP, 256 sigmoid units);
* ``mlp_relu``: MLP, 512-512 ReLU units;
* ``lenet_relu``: LeNet with ReLU;
* ``convnet``: the breaching ConvNet (width 32, ReLU; slow on a CPU).
"""
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak import data
from jaxleak import models
from jaxleak import training
from jaxleak.cli import user_level as ul

JUDGES = {"mlp_sigmoid": ("mlp", {"hidden": (256,)}),
          "mlp_relu": ("mlp", {"hidden": (512, 512), "act": "relu"}),
          "lenet_relu": ("lenet", {"act": "relu"}),
          "convnet": ("convnet", {})}
MODELS_DIR = "experiments/user_level/results/models"


def main():
  results_dir, names = sys.argv[1], sys.argv[2:] or list(JUDGES)
  train = data.load("mnist_subset", "train")
  test = data.load("mnist_subset", "test")
  pool, held_out = ul.split_pool(train, 0)
  judge_train = data.Dataset(
      images=np.concatenate([held_out.images, test.images]),
      labels=np.concatenate([held_out.labels, test.labels]),
      class_names=train.class_names, name="mnist_subset/judge")
  users = {b: ul.make_users(pool, 20, b, "label", 0.7, 0) for b in (30, 100)}
  for name in names:
    arch, kwargs = JUDGES[name]
    t0 = time.time()
    apply_fn, params = models.create(arch, train.num_classes,
                                     train.image_shape, jax.random.key(1),
                                     **kwargs)
    params, _ = ul._train(  # pylint: disable=protected-access
        "judge", apply_fn, params, judge_train, pool, 15, 1,
        os.path.join(MODELS_DIR, f"judge_{name}"), False)
    acc = training.evaluate(apply_fn, params, pool)["accuracy"]
    print(f"{name}: accuracy on the users' images {acc:.4f} "
          f"({time.time() - t0:.0f} s)", flush=True)
    for b in (30, 100):
      setting = os.path.join(results_dir, "reps", f"B{b}_label")
      for method in sorted(os.listdir(setting)):
        right = 0
        for i, user in enumerate(users[b]):
          rep = np.load(os.path.join(setting, method, f"user{i:02d}.npy"))
          pred = int(np.argmax(apply_fn(params, jnp.asarray(rep))[0]))
          right += pred == ul.attribute(user)
        print(f"  B{b} {method}: {right / len(users[b]):.2f}", flush=True)


if __name__ == "__main__":
  main()
