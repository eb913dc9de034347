"""How much the judge matters: rescore a study's label users with other judges.

  python experiments/user_level/rejudge.py RESULTS_DIR [JUDGE ...]

Reads the representatives a `run.py` study stored under
``RESULTS_DIR/reps/B<b>_label/<method>/user<i>.npy`` (20 label users at
B = 30 and 100, configs/default.py's pool and seed) and prints each
method's attribute accuracy as read by each judge, next to the judge's own
accuracy on the users' real images. Every judge is trained by the study's
own set-up (`jaxleak.cli.user_level.prepare` with ``judge_model``: 15 epochs
on the judge pool plus the test split, seed 1, disjoint from every user) and
cached beside the study's victim in configs/default.py's ``models_dir``.
Judges (default: all):

* ``mlp_sigmoid``: the study's judge (MLP, 256 sigmoid units);
* ``mlp_relu``: MLP, 512-512 ReLU units;
* ``lenet_relu``: LeNet with ReLU;
* ``convnet``: the breaching ConvNet (width 32, ReLU; slow on a CPU).
"""
import os
import sys

import jax.numpy as jnp
import numpy as np

from jaxleak.cli import user_level as ul

JUDGES = {"mlp_sigmoid": ("mlp", None),
          "mlp_relu": ("mlp", {"hidden": (512, 512), "act": "relu"}),
          "lenet_relu": ("lenet", {"act": "relu"}),
          "convnet": ("convnet", {})}
MODELS_DIR = "experiments/user_level/results/models"


def main():
  if len(sys.argv) < 2:
    sys.exit(__doc__.split("\n\n")[1])
  results_dir, names = sys.argv[1], sys.argv[2:] or list(JUDGES)
  unknown = [n for n in names if n not in JUDGES]
  if unknown:
    sys.exit(f"rejudge.py: unknown judge(s) {unknown}; choose from "
             f"{list(JUDGES)}")
  for b in (30, 100):
    if not os.path.isdir(os.path.join(results_dir, "reps", f"B{b}_label")):
      sys.exit(f"rejudge.py: RESULTS_DIR {results_dir!r} holds no "
               f"reps/B{b}_label/ (a run.py study of label users)")
  for name in names:
    arch, options = JUDGES[name]
    setup = ul.prepare("mnist_subset", workdir=MODELS_DIR, seed=0,
                       judge_model=arch, judge_options=options,
                       progress=False)
    print(f"{name}: accuracy on the users' images "
          f"{setup.judge_accuracy:.4f}", flush=True)
    for b in (30, 100):
      users = ul.make_users(setup.pool, 20, b, "label", 0.7, 0)
      setting = os.path.join(results_dir, "reps", f"B{b}_label")
      for method in sorted(os.listdir(setting)):
        right = 0
        for i, user in enumerate(users):
          rep = np.load(os.path.join(setting, method, f"user{i:02d}.npy"))
          logits = setup.judge_apply(setup.judge_params, jnp.asarray(rep))
          right += int(np.argmax(logits[0])) == ul.attribute(user)
        print(f"  B{b} {method}: {right / len(users):.2f}", flush=True)


if __name__ == "__main__":
  main()
