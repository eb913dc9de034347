"""Compile and step time of one `diffusion_finetune` step, and compile reuse.

Builds the fine-tuning step for one sample image at R px, times the first
call (compile + run) and the next calls (steady state), then a second target
with the same victim `apply_fn` (the step's static argument) to check that it
reuses the compiled program. Prints one JSON line.

  nice -n 19 python experiments/finetune/probe_timing.py --res 64 --s 10
"""

import argparse
import json
import os
import time

import jax

from jaxleak import data
from jaxleak import models
from jaxleak.attacks import inversion
from jaxleak.attacks.inversion import diffusion_finetuning as dft


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--res", type=int, default=64)
  p.add_argument("--s", type=int, default=10)
  p.add_argument("--loop", default="scan")
  p.add_argument("--fast-compile", action="store_true")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--cache", default="")
  a = p.parse_args()
  if a.cache:
    jax.config.update("jax_compilation_cache_dir", a.cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  ds = data.load("sample_images", resolution=a.res)
  apply_fn, _ = models.create("convnet", ds.num_classes, (a.res, a.res, 3),
                              jax.random.key(0), width=32, norm="group")
  row = {"res": a.res, "s": a.s, "loop": a.loop,
         "fast_compile": a.fast_compile}
  opts = inversion.FAST_COMPILE if a.fast_compile else None
  for j, target in enumerate(("coffee", "astronaut")):
    idx = data.SAMPLE_IMAGE_NAMES.index(target)
    key = jax.random.fold_in(jax.random.key(0), idx)
    _, params = models.create("convnet", ds.num_classes, (a.res, a.res, 3),
                              key, width=32, norm="group")
    obs = inversion.observe(apply_fn, params, ds.images[idx:idx + 1],
                            ds.labels[idx:idx + 1], key=key)
    st = dft.prepare(obs, key=jax.random.key(0), prior="lfw_faces",
                     sampling_steps=a.s, loop=a.loop, lr=1e-3)
    theta, opt = st.theta, st.opt_state
    times = []
    with inversion.compiler_options(opts):
      for _ in range(a.steps if j == 0 else 2):
        t0 = time.perf_counter()
        theta, opt, loss, _ = dft.finetune_step(st.problem, theta, opt,
                                                st.consts)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    row[f"{target}_times_s"] = times
    print(target, times, float(loss), flush=True)
  row["load_average"] = os.getloadavg()[0]
  print("ROW " + json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
