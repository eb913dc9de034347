"""I²F for one image vs the wall time of the attack it predicts, side by side.

For each of a few mnist_subset digits (sigmoid LeNet, U(-0.5, 0.5) weights,
28x28), one Gaussian gradient perturbation is drawn; then, in the same
process and after each has been compiled once (compilation is reported
separately), we time

* ``jaxleak.influence.i2f`` (CG solve of ``(J J^T + eps I) b = J delta``,
  eps = 1, default tol), median over `--repeats` calls, and
* the attack whose error I²F predicts: the L2 gradient-matching attack
  (iDLG objective with the known label, L-BFGS; `--attack-steps`, default
  1000 as in experiments/influence) on the same noisy gradient; and
  Inverting Gradients (`--ig-steps`), for reference.

It prints one row per image and the ratio attack / I²F (target: I²F takes at
most 1/50 of the attack's time, i.e. ratio >= 50), and writes
``i2f_speed.json`` next to `--out` if given.

  python benchmarks/i2f_speed.py
  python benchmarks/i2f_speed.py --images 3 --noise-var 1e-3 --out runs/i2f_speed
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxleak import data
from jaxleak import influence
from jaxleak import models
from jaxleak import report
from jaxleak.attacks import inversion
from jaxleak.influence import audit

# pylint: enable=g-import-not-at-top,wrong-import-position


def _time_i2f(apply_fn, params, x, y, delta, repeats, eps):
  t0 = time.perf_counter()
  jax.block_until_ready(influence.i2f(apply_fn, params, x, y, delta, eps=eps))
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    norm, _ = influence.i2f(apply_fn, params, x, y, delta, eps=eps)
    jax.block_until_ready(norm)
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), first, float(norm)


def _time_attack(name, obs, x, y, seed, **kwargs):
  # Warm-up/compile with the same static settings (results discarded).
  t0 = time.perf_counter()
  inversion.run_attack(name, obs, key=seed, ground_truth=(x, y), **kwargs)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  res = inversion.run_attack(name, obs, key=seed, ground_truth=(x, y),
                             **kwargs)
  wall = time.perf_counter() - t0
  return wall, first, float(np.sqrt(res.metrics["mse"]))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--images", type=int, default=3)
  p.add_argument("--noise-var", type=float, default=1e-3)
  p.add_argument("--attack-steps", type=int, default=1000)
  p.add_argument("--ig-steps", type=int, default=1000,
                 help="Inverting Gradients steps (0: skip)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--eps", type=float, nargs="+", default=[1.0, 1e-4],
                 help="I²F damping values to time (the first is the headline; "
                      "small eps needs many more CG iterations)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)

  ds = data.load("mnist_subset", "test")
  indices = audit.stratified_indices(ds.labels, args.images, args.seed)
  rows = []
  print(f"device: {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
        f"lenet/mnist_subset 28x28, noise var {args.noise_var:g}")
  for pos, idx in enumerate(indices):
    idx = int(idx)
    x = np.asarray(ds.images[idx:idx + 1], np.float32)
    y = np.asarray(ds.labels[idx:idx + 1], np.int32)
    apply_fn, params = models.create("lenet", 10, x.shape[1:],
                                     jax.random.key(args.seed + pos),
                                     init="uniform")
    delta = audit.gaussian_perturbation(
        params, float(np.sqrt(args.noise_var)), jax.random.key(1000 + pos))
    timed = [_time_i2f(apply_fn, params, x, y, delta, args.repeats, e)
             for e in args.eps]
    i2f_s, i2f_first, norm = timed[0]
    obs = inversion.observe(apply_fn, params, x, y, key=0, defence=None)
    obs = dataclasses.replace(obs, gradient=jax.tree.map(
        lambda g, d: g + d, obs.gradient, delta))
    l2_s, l2_first, l2_rmse = _time_attack(
        "idlg", obs, x, y, pos, steps=args.attack_steps,
        label_strategy="known")
    row = {"image": idx, "i2f_s": i2f_s, "i2f_first_call_s": i2f_first,
           "l2_attack_s": l2_s, "l2_first_call_s": l2_first,
           "ratio_l2_over_i2f": l2_s / i2f_s,
           "i2f_rmse": norm / np.sqrt(x.size), "l2_rmse": l2_rmse}
    for e, (t_e, _, n_e) in zip(args.eps[1:], timed[1:]):
      row[f"i2f_eps{e:g}_s"] = t_e
      row[f"ratio_l2_over_i2f_eps{e:g}"] = l2_s / t_e
      row[f"i2f_eps{e:g}_rmse"] = n_e / np.sqrt(x.size)
    if args.ig_steps:
      ig_s, _, ig_rmse = _time_attack(
          "inverting_gradients", obs, x, y, pos, steps=args.ig_steps,
          label_strategy="known")
      row.update(ig_attack_s=ig_s, ratio_ig_over_i2f=ig_s / i2f_s,
                 ig_rmse=ig_rmse)
    rows.append(row)
    print(f"image {idx}: I²F (eps={args.eps[0]:g}) {i2f_s * 1e3:.1f} ms "
          f"(first call "
          f"{i2f_first:.1f} s) | L2 attack ({args.attack_steps} L-BFGS steps) "
          f"{l2_s:.2f} s -> ratio {row['ratio_l2_over_i2f']:.0f}x"
          + (f" | IG ({args.ig_steps} steps) {row['ig_attack_s']:.2f} s -> "
             f"{row['ratio_ig_over_i2f']:.0f}x" if args.ig_steps else "")
          + "".join(f" | I²F (eps={e:g}) {row[f'i2f_eps{e:g}_s']:.2f} s -> "
                    f"{row[f'ratio_l2_over_i2f_eps{e:g}']:.1f}x"
                    for e in args.eps[1:]),
          flush=True)
  ratio = float(np.median([r["ratio_l2_over_i2f"] for r in rows]))
  print(report.markdown_table(rows))
  print(f"median ratio (L2 attack time / I²F time, eps={args.eps[0]:g}): "
        f"{ratio:.0f}x ({'meets' if ratio >= 50 else 'misses'} the 50x "
        f"target)")
  for e in args.eps[1:]:
    r_e = float(np.median([r[f"ratio_l2_over_i2f_eps{e:g}"] for r in rows]))
    print(f"median ratio at eps={e:g}: {r_e:.1f}x")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    report.write_json(os.path.join(args.out, "i2f_speed.json"),
                      {"rows": rows, "median_ratio_l2": ratio,
                       "args": vars(args)})
  return 0


if __name__ == "__main__":
  sys.exit(main())
