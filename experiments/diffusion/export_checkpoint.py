"""Exports the EMA weights of a `jaxleak train-prior` checkpoint as a prior.

`jaxleak train-prior` exports its prior only when the run reaches --steps.
A run stopped earlier (Ctrl-C, --preempt-after-steps, a deadline) keeps its
checkpoints in ``<workdir>/checkpoints``; this writes the newest one's EMA
params in diffusers format, with the run's spec, schedule and training record,
so it loads with `jaxleak.diffusion.load_prior(out)`. Rerunning the same
train-prior command still resumes the run.

  python experiments/diffusion/export_checkpoint.py \\
      --workdir runs/prior-faces --name lfw_faces --out runs/prior-faces/prior
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from jaxleak import checkpoint
from jaxleak import diffusion


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="train-prior's --workdir")
  ap.add_argument("--name", required=True, help="prior name")
  ap.add_argument("--out", required=True, help="prior folder to write")
  ap.add_argument("--class-names", nargs="*", default=(),
                  help="class names (class-conditional priors)")
  ap.add_argument("--info", default="{}",
                  help="JSON merged into the prior's training record")
  args = ap.parse_args(argv)
  import json  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint.Checkpointer(f"{args.workdir}/checkpoints")
  step = ckpt.latest_step
  if step is None:
    raise SystemExit(f"no checkpoint in {args.workdir}/checkpoints")
  meta = ckpt.restore_metadata(step)
  identity = meta["identity"]
  run = identity["run"]
  spec = diffusion.UNetSpec.from_dict(run["spec"])
  schedule = diffusion.make_schedule(run["schedule"], run["timesteps"])
  params = diffusion.init_unet(spec, jax.random.key(0))
  # Only the structure matters for the target: restore plain arrays.
  state, _ = ckpt.restore(None, step)
  ema = jax.tree.map(np.asarray, state["ema_params"])
  # Restored as plain dicts; keep init's structure (a check on the spec).
  ema = jax.tree.unflatten(jax.tree.structure(params), jax.tree.leaves(ema))
  history = meta.get("aux", {}).get("history", [])
  info = {"checkpoint_step": int(meta["step"]),
          "planned_steps": identity["steps"],
          "dataset": run.get("dataset"), "split": run.get("split"),
          "batch_size": identity["batch_size"], "lr": identity["learning_rate"],
          "ema_decay": identity["ema_decay"], "hflip": identity["hflip"],
          "shift": identity.get("shift", 0), "seed": identity["seed"],
          "train_images": identity["num_images"],
          "final_loss": history[-1]["loss"] if history else None,
          "wall_time_s": round(float(meta.get("wall_time_s", 0.0)), 1),
          **json.loads(args.info)}
  prior = diffusion.Prior(name=args.name, spec=spec, params=ema,
                          schedule=schedule,
                          class_names=tuple(args.class_names), info=info)
  diffusion.save_prior(prior, args.out, format="diffusers")
  print(f"exported step {step} of {identity['steps']} to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
