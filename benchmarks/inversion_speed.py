"""Inverting Gradients iterations per second: jaxleak (jitted) vs PyTorch eager.

Times the Inverting Gradients step (cosine gradient distance + TV, Adam on
sign(∇), box projection) on jaxleak's ``convnet`` at 32x32 for batch sizes 1
and 8, against a straightforward PyTorch implementation of the same objective
on the same architecture with the same weights, in the same process:

  python benchmarks/inversion_speed.py              # batch 1 and 8
  python benchmarks/inversion_speed.py --batch-sizes 1 --steps 50

PyTorch is optional (the ``bench`` extra); without it only jaxleak is timed.
Before timing, both implementations evaluate the objective at the same
candidate and must agree to 1e-4 (relative), so the two loops compute the same
thing. Steady-state speed excludes compilation (jaxleak) and warm-up steps
(both); compile time is reported separately. jaxleak is timed with XLA's
convolutions and with kernel derivatives as matrix products
(``matmul_conv``, the library default).

To say how far from the hardware each loop runs, it also prints a roofline:
the FLOPs of one step (XLA's cost analysis of the objective's gradient, the
same arithmetic in both libraries), the GFLOP/s each loop reaches, and the
machine's peak float32 matrix-product rate (2048² matmuls in jax and torch,
timed in the same run). A speed ratio that needs more than that peak cannot
be reached without doing less arithmetic.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxleak import models
from jaxleak import report
from jaxleak.attacks import inversion
from jaxleak.attacks.inversion import attacks as attacks_lib

# pylint: enable=g-import-not-at-top,wrong-import-position

TV = 0.2
LR = 0.1


# ----------------------------------------------------------------------------
# jaxleak.


def _setup(batch: int, res: int, width: int, seed: int = 0):
  apply_fn, params = models.create("convnet", 10, (res, res, 3),
                                   jax.random.key(seed), width=width)
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, res, res, 3)).astype(np.float32)
  labels = (np.arange(batch) % 10).astype(np.int32)
  obs = inversion.observe(apply_fn, params, images, labels, key=seed)
  return apply_fn, params, images, labels, obs


def time_jaxleak(obs, steps: int, warmup: int, loop: str,
                 matmul_conv: bool | None) -> dict[str, float]:
  """Steady-state it/s of `inverting_gradients` through its public API."""
  stamps = []

  def callback(restart, step, loss):
    del restart, loss
    stamps.append((step, time.perf_counter()))

  t0 = time.perf_counter()
  inversion.inverting_gradients(obs, key=0, steps=warmup + steps, lr=LR,
                                tv=TV, log_every=warmup if warmup else steps,
                                loop=loop, matmul_conv=matmul_conv,
                                callback=callback)
  # First stamp: after compilation and the warm-up chunk.
  (s0, t_first), (s1, t_last) = stamps[0], stamps[-1]
  return {"it_per_s": (s1 - s0) / (t_last - t_first),
          "first_chunk_s": t_first - t0}


def jax_objective(obs, x: np.ndarray) -> float:
  """jaxleak's Inverting Gradients objective at candidate `x`."""
  problem, hp = attacks_lib.make_problem(
      obs, tv=TV, lr=LR, distance="cosine", optimizer_name="adam", steps=10,
      schedule="step", signed=True, boxed=True)
  consts = {"params": obs.params, "target": obs.gradient,
            "labels": obs.labels, "hp": hp}
  return float(jax.jit(problem.objective)(jnp.asarray(x), consts))


def step_gflop(obs) -> float:
  """GFLOP of one Inverting Gradients step (XLA cost analysis, default)."""
  problem, hp = attacks_lib.make_problem(
      obs, tv=TV, lr=LR, distance="cosine", optimizer_name="adam", steps=10,
      schedule="step", signed=True, boxed=True, matmul_conv=True)
  consts = {"params": obs.params, "target": obs.gradient,
            "labels": obs.labels, "hp": hp}
  x = jnp.zeros(obs.batch_shape, jnp.float32)
  cost = jax.jit(jax.grad(problem.objective)).lower(x, consts).compile()
  cost = cost.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / 1e9


def peak_matmul_gflops(torch, n: int = 2048, repeats: int = 10
                       ) -> dict[str, float]:
  """float32 ``[n, n] @ [n, n]`` GFLOP/s in jax and (if given) torch."""
  out = {}
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(repeats):
    f(a).block_until_ready()
  out["jax"] = 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9
  if torch is not None:
    b = torch.ones(n, n)
    b @ b  # pylint: disable=pointless-statement
    t0 = time.perf_counter()
    for _ in range(repeats):
      b @ b  # pylint: disable=pointless-statement
    out["torch"] = 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9
  return out


# ----------------------------------------------------------------------------
# PyTorch (imported only here).


def _torch_model(torch, params, width: int):
  """jaxleak's ConvNet layer for layer: 3x3 convs, XLA 'SAME' padding."""
  nn, F = torch.nn, torch.nn.functional
  p = params["params"]
  chans = (width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width,
           4 * width, 4 * width)
  strides = (1, 1, 1, 2, 1, 2, 1, 1)

  class ConvNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.convs = nn.ModuleList()
      cin = 3
      for i, (c, s) in enumerate(zip(chans, strides)):
        conv = nn.Conv2d(cin, c, 3, stride=s, padding=0)
        # Flax HWIO -> torch OIHW.
        conv.weight.data = torch.from_numpy(
            np.asarray(p[f"conv{i}"]["kernel"]).transpose(3, 2, 0, 1).copy())
        conv.bias.data = torch.from_numpy(
            np.array(p[f"conv{i}"]["bias"], np.float32))
        self.convs.append(conv)
        cin = c
      self.head = nn.Linear(cin, 10)
      self.head.weight.data = torch.from_numpy(
          np.asarray(p["head"]["kernel"]).T.copy())
      self.head.bias.data = torch.from_numpy(
          np.array(p["head"]["bias"], np.float32))

    def forward(self, x):
      for conv, s in zip(self.convs, strides):
        # XLA's SAME padding: 1/1 for stride 1; 0/1 for stride 2 (even H).
        x = F.pad(x, (1, 1, 1, 1) if s == 1 else (0, 1, 0, 1))
        x = F.relu(conv(x))
      return self.head(x.mean(dim=(2, 3)))

  return ConvNet()


def _torch_setup(torch, params, width, images, labels, target_grads):
  model = _torch_model(torch, params, width)
  plist = list(model.parameters())
  x_true = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  y = torch.from_numpy(labels.astype(np.int64))
  if target_grads is None:
    loss = torch.nn.functional.cross_entropy(model(x_true), y)
    target = [g.detach() for g in torch.autograd.grad(loss, plist)]
  else:
    target = target_grads
  return model, plist, y, target


def _torch_objective(torch, model, plist, x, y, target, target_norm):
  loss = torch.nn.functional.cross_entropy(model(x), y)
  grads = torch.autograd.grad(loss, plist, create_graph=True)
  dot = sum((g * t).sum() for g, t in zip(grads, target))
  norm = torch.sqrt(sum((g * g).sum() for g in grads))
  cos = 1 - dot / (norm * target_norm)
  dh = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
  dw = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
  tv = ((dh.abs() + 1e-8) + (dw.abs() + 1e-8)).mean()
  return cos + TV * tv


def time_torch(torch, params, width, images, labels, x0, steps, warmup):
  model, plist, y, target = _torch_setup(torch, params, width, images, labels,
                                         None)
  target_norm = torch.sqrt(sum((t * t).sum() for t in target))
  x = torch.from_numpy(x0.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  value0 = float(_torch_objective(torch, model, plist, x, y, target,
                                  target_norm).detach())
  opt = torch.optim.Adam([x], lr=LR)
  n = warmup + steps
  sched = torch.optim.lr_scheduler.MultiStepLR(
      opt, milestones=list(inversion.step_decay_boundaries(n)), gamma=0.1)
  t_start = None
  for i in range(n):
    if i == warmup:
      t_start = time.perf_counter()
    opt.zero_grad()
    obj = _torch_objective(torch, model, plist, x, y, target, target_norm)
    (g,) = torch.autograd.grad(obj, [x])
    x.grad = g.sign()
    opt.step()
    sched.step()
    with torch.no_grad():
      x.clamp_(0, 1)
  return {"it_per_s": steps / (time.perf_counter() - t_start),
          "objective_at_x0": value0}


# ----------------------------------------------------------------------------


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
  ap.add_argument("--resolution", type=int, default=32)
  ap.add_argument("--width", type=int, default=32, help="convnet width")
  ap.add_argument("--steps", type=int, default=100, help="timed steps")
  ap.add_argument("--warmup", type=int, default=5)
  ap.add_argument("--loops", nargs="+", default=["python"],
                  choices=["python", "scan"], help="jaxleak loop strategies")
  ap.add_argument("--threads", type=int, default=None,
                  help="torch intra-op threads (default: torch's)")
  ap.add_argument("--json", default=None, help="also write results here")
  args = ap.parse_args(argv)

  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    torch = None
    print("PyTorch not installed (pip install '.[bench]' and torch): timing "
          "jaxleak only")
  if torch is not None and args.threads:
    torch.set_num_threads(args.threads)

  peak = peak_matmul_gflops(torch)
  peak_best = max(peak.values())
  print("peak float32 matmul GFLOP/s (2048^2): "
        + ", ".join(f"{k} {v:.1f}" for k, v in peak.items()), flush=True)
  rows, roofline = [], []
  for b in args.batch_sizes:
    apply_fn, params, images, labels, obs = _setup(b, args.resolution,
                                                   args.width)
    del apply_fn
    x0 = np.random.default_rng(1).uniform(
        size=images.shape).astype(np.float32)
    row = {"batch": b, "resolution": args.resolution, "width": args.width}
    variants = []
    for loop in args.loops:
      for mm in (False, True):
        name = f"jaxleak_{loop}{'_matmul' if mm else ''}"
        res = time_jaxleak(obs, args.steps, args.warmup, loop, mm)
        row[f"{name}_it_s"] = res["it_per_s"]
        row[f"{name}_first_chunk_s"] = res["first_chunk_s"]
        variants.append((name, loop, mm))
    # The library's default: python loop, matmul kernel derivatives.
    default = "jaxleak_python_matmul_it_s"
    row["jaxleak_default_it_s"] = row.get(default, float("nan"))
    if torch is not None:
      res = time_torch(torch, params, args.width, images, labels, x0,
                       args.steps, args.warmup)
      ours = jax_objective(obs, x0)
      rel = abs(ours - res["objective_at_x0"]) / abs(res["objective_at_x0"])
      if rel > 1e-4:
        raise SystemExit(f"objectives differ: jaxleak {ours} vs torch "
                         f"{res['objective_at_x0']} (rel {rel:.2e})")
      row["objective_rel_diff"] = rel
      row["torch_eager_it_s"] = res["it_per_s"]
      row["ratio_default_over_torch"] = (row["jaxleak_default_it_s"]
                                         / res["it_per_s"])
      best = max(row[f"{name}_it_s"] for name, _, _ in variants)
      row["ratio_best_over_torch"] = best / res["it_per_s"]
    rows.append(row)
    print({k: round(v, 4) if isinstance(v, float) else v
           for k, v in row.items()}, flush=True)
    gflop = step_gflop(obs)
    roof = {"batch": b, "GFLOP per step": gflop,
            "jaxleak GFLOP/s": gflop * row["jaxleak_default_it_s"],
            "peak matmul GFLOP/s": peak_best,
            "it/s at peak": peak_best / gflop}
    if torch is not None:
      roof["torch GFLOP/s"] = gflop * row["torch_eager_it_s"]
      roof["2x torch needs, % of peak"] = (
          100 * 2 * row["torch_eager_it_s"] * gflop / peak_best)
    roofline.append(roof)
    row["step_gflop"] = gflop
    row["peak_matmul_gflop_s"] = peak_best

  print("\n## Inverting Gradients it/s (convnet, "
        f"{args.resolution}x{args.resolution}, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__}"
        + (f", torch {torch.__version__}" if torch else "") + ")\n")
  columns = ["batch"] + [k for k in rows[0] if k.endswith("_it_s")] + [
      k for k in rows[0] if k.startswith("ratio")]
  print(report.markdown_table(rows, columns))
  compile_cols = ["batch"] + [k for k in rows[0] if k.endswith("chunk_s")]
  print("\nFirst chunk (compilation + warm-up steps), seconds:\n")
  print(report.markdown_table(rows, compile_cols))
  print("\nRoofline (one step's FLOPs from XLA's cost analysis; torch is "
        "credited the same FLOPs for the same objective):\n")
  print(report.markdown_table(roofline))
  if args.json:
    report.write_json(args.json, {"rows": rows})
  return 0


if __name__ == "__main__":
  sys.exit(main())
