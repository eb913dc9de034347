"""Peak memory of one `diffusion_finetune` step vs resolution and chain length.

Each configuration (resolution R, DDIM steps S, remat on/off) runs in a fresh
subprocess that builds the attack's fine-tuning step for one private R x R
RGB image (the shipped `lfw_faces` UNet lifted to RGB, all weights trainable,
a small ConvNet victim), compiles it, and reports

* XLA's memory analysis of the compiled step: arguments + outputs +
  temporaries - aliased bytes (what the step holds at its peak, compilation
  excluded; the honest number for "does memory grow with S"), and
* with ``--run``, the subprocess's peak resident set size after running the
  step once (includes the compiler's own memory and the Python runtime).

  python benchmarks/finetune_memory.py                     # 64/128/256 x 5/10/20
  python benchmarks/finetune_memory.py --resolutions 512 --sampling-steps 10 \\
      --out benchmarks/results/finetune_memory_512.json     # on a GPU

With `jax.checkpoint` on every UNet call (``remat``) the backward pass keeps
only the S intermediate images and one UNet's activations at a time, so the
temporaries should stay nearly flat in S; without it they grow linearly.
Results go to ``benchmarks/results/finetune_memory.json`` and are printed as
a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(res: int, s: int, remat: bool, loop: str, run: bool,
           victim: str, fast_compile: bool = False, num_classes: int = 10,
           norm: str | None = None, cache: str | None = None) -> dict:
  sys.path.insert(0, ROOT)
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  if cache:  # persistent XLA cache (shared with experiments/finetune/run.py)
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

  from jaxleak import models
  from jaxleak.attacks import inversion
  from jaxleak.attacks.inversion import diffusion_finetuning as dft
  # pylint: enable=g-import-not-at-top
  kw = {"width": 32} if victim == "convnet" else {}
  if norm:
    kw["norm"] = norm
  apply_fn, params = models.create(victim, num_classes, (res, res, 3),
                                   jax.random.key(0), **kw)
  x = np.random.default_rng(0).uniform(size=(1, res, res, 3)).astype(
      np.float32)
  obs = inversion.observe(apply_fn, params, x, np.array([3]), key=0)
  setup = dft.prepare(obs, key=jax.random.key(0), prior="lfw_faces",
                      sampling_steps=s, remat=remat, loop=loop)
  options = inversion.FAST_COMPILE if fast_compile else None
  t0 = time.perf_counter()
  with inversion.compiler_options(options):
    mem = dft.step_memory(setup)
  row = {"resolution": res, "sampling_steps": s, "remat": remat,
         "loop": loop, "victim": victim, "fast_compile": fast_compile,
         "num_classes": num_classes, "norm": norm,
         "compile_s": time.perf_counter() - t0,
         **{f"xla_{k}": v for k, v in mem.items()}}
  if run:
    t0 = time.perf_counter()
    with inversion.compiler_options(options):
      out = dft.finetune_step(setup.problem, setup.theta, setup.opt_state,
                              setup.consts)
    jax.block_until_ready(out)
    row["first_step_s"] = time.perf_counter() - t0
    row["peak_rss_mb"] = resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024
  row["device"] = jax.devices()[0].device_kind
  return row


def _mib(b) -> str:
  return "-" if b is None else f"{b / 2**20:.0f}"


def _table_row(r: dict) -> str:
  head = (f"| {r.get('resolution', r.get('res'))} | "
          f"{r.get('sampling_steps', r.get('s'))} | {r['remat']} | ")
  if "error" in r:
    return head + f"error: {r['error']} | | | |"
  rss = r.get("peak_rss_mb")
  return head + (f"{_mib(r.get('xla_total_bytes'))} | {_mib(r.get('xla_temp'))}"
                 f" | {'-' if rss is None else f'{rss:.0f}'} | "
                 f"{r['compile_s']:.0f} |")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
  p.add_argument("--sampling-steps", type=int, nargs="+", default=[5, 10, 20])
  p.add_argument("--remat", choices=("on", "off", "both"), default="both")
  p.add_argument("--loop", default="unrolled", choices=("unrolled", "scan"))
  p.add_argument("--victim", default="convnet")
  p.add_argument("--num-classes", type=int, default=10)
  p.add_argument("--norm", default=None,
                 help="victim normalisation (convnet: 'group' as the study)")
  p.add_argument("--cache", default=None,
                 help="persistent XLA compilation cache folder")
  p.add_argument("--fast-compile", action="store_true",
                 help="XLA:CPU fast-compile options (inversion.FAST_COMPILE): "
                      "compiles several times faster; less fusion, so more "
                      "temporaries, but the trend in S is what is measured")
  p.add_argument("--run", action="store_true",
                 help="also run one step and record the peak RSS")
  p.add_argument("--timeout", type=float, default=1800,
                 help="seconds per configuration")
  p.add_argument("--out", default=os.path.join(
      ROOT, "benchmarks", "results", "finetune_memory.json"))
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    cfg = json.loads(args.child)
    print("ROW " + json.dumps(_child(**cfg)), flush=True)
    return 0

  remats = {"on": [True], "off": [False], "both": [True, False]}[args.remat]
  rows = []
  if os.path.exists(args.out):  # resumable: keep finished configurations
    with open(args.out) as f:
      rows = [r for r in json.load(f).get("rows", []) if "error" not in r]
  done = {(r["resolution"], r["sampling_steps"], r["remat"], r["loop"],
           r["victim"], r.get("fast_compile", False)) for r in rows}
  for res in args.resolutions:
    for s in args.sampling_steps:
      for remat in remats:
        if (res, s, remat, args.loop, args.victim,
            args.fast_compile) in done:
          continue
        cfg = {"res": res, "s": s, "remat": remat, "loop": args.loop,
               "run": args.run, "victim": args.victim,
               "fast_compile": args.fast_compile,
               "num_classes": args.num_classes, "norm": args.norm,
               "cache": args.cache}
        try:
          proc = subprocess.run(
              [sys.executable, os.path.abspath(__file__), "--child",
               json.dumps(cfg)], capture_output=True, text=True,
              timeout=args.timeout, check=False)
          lines = [ln for ln in proc.stdout.splitlines()
                   if ln.startswith("ROW ")]
          if not lines:
            tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
            row = {**cfg, "error": tail[0]}
          else:
            row = json.loads(lines[-1][4:])
        except subprocess.TimeoutExpired:
          row = {**cfg, "error": f"timeout after {args.timeout:.0f} s"}
        row["load_average"] = os.getloadavg()[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
          json.dump({"rows": rows}, f, indent=1)
  print("\n| R | S | remat | XLA total MiB | XLA temp MiB | peak RSS MiB | "
        "compile s |\n|---|---|---|---|---|---|---|")
  for r in sorted(rows, key=lambda r: (r.get("resolution", 0),
                                       r.get("sampling_steps", 0),
                                       not r.get("remat"))):
    print(_table_row(r))
  return 0


if __name__ == "__main__":
  sys.exit(main())
