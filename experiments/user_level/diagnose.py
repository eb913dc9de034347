"""Diagnosis runs for the user-level attack on a few B = 30 label users.

  python experiments/user_level/diagnose.py B N '{"name": {kwargs}, ...}'

For users 0..N-1 (label users of batch size B, the study's pool, victim
and judge from configs/default.py's models_dir) runs each named variant
and prints the judge's reading of the representative against the user's
digit (``digit->judged (y<recovered label>, L<final loss>)``), the share
judged right and the wall seconds per user. Names starting with "prior"
run `prior_representative` (kwargs: cond, gs). Logs of this session's runs
are in results/diagnosis/. The representatives go to runs/ (not kept).
"""
import json
import os
import sys
import time

import jax.numpy as jnp
import numpy as np

from jaxleak import diffusion
from jaxleak.attacks import inversion
from jaxleak.attacks.inversion import user_level
from jaxleak.cli import user_level as ul


def main():
  b, users_n = int(sys.argv[1]), int(sys.argv[2])
  variants = json.loads(sys.argv[3])
  setup = ul.prepare("mnist_subset",
                     workdir="experiments/user_level/results/models",
                     victim_model="cnn_mnist", seed=0, progress=False)
  prior = diffusion.load_prior("mnist")
  users = ul.make_users(setup.pool, 20, b, "label", 0.7, 0)
  os.makedirs("runs", exist_ok=True)

  def judge(x):
    logits = setup.judge_apply(setup.judge_params, jnp.asarray(x))
    return int(np.argmax(logits[0]))

  for name, kw in variants.items():
    ok, times, out = 0, [], []
    for i in range(users_n):
      u = users[i]
      obs = ul.observe_user(setup, u, key=i)
      t0 = time.perf_counter()
      if name.startswith("prior"):
        y = user_level.majority_label(obs)[0]
        rep = user_level.prior_representative(
            prior, i, obs.image_shape, steps=kw.get("steps", 20),
            label=y if kw.get("cond") else None,
            guidance_scale=kw.get("gs", 1.0))
        loss = float("nan")
      else:
        r = inversion.user_level_diffusion(obs, key=i, prior=prior, **kw)
        rep, y, loss = r.images, r.majority_label, float(r.final_loss)
      times.append(time.perf_counter() - t0)
      p, a = judge(rep), ul.attribute(u)
      ok += p == a
      out.append(f"{a}->{p}(y{y},L{loss:.3f})")
      np.save(f"runs/rep_{name}_B{b}_u{i}.npy", rep)
    print(name, f"acc {ok}/{users_n}",
          f"s/user {np.mean(times):.1f} first {times[0]:.1f}", " ".join(out),
          flush=True)


if __name__ == "__main__":
  main()
