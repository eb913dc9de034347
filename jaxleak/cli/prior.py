"""`jaxleak train-prior` and `jaxleak sample-prior`: diffusion priors.

train-prior trains a pixel-space diffusion UNet (diffusers' Flax
UNet2DCondition through `jaxleak.diffusion`) on an embedded or tfds dataset,
with EMA weights, orbax checkpoints, exact resume (rerun the same command),
periodic sample grids and a diffusers-format export of the EMA prior.
sample-prior draws a DDIM sample grid from a shipped prior or a prior folder.
"""

from __future__ import annotations

import os
import shlex
import sys

from jaxleak.cli import _common


def register(subparsers) -> None:
  _register_train(subparsers)
  _register_sample(subparsers)


# -- train-prior ---------------------------------------------------------------


def _register_train(subparsers) -> None:
  p = subparsers.add_parser(
      "train-prior", help="train a pixel-space diffusion prior; resumes from "
                          "--workdir",
      description="Train a diffusion UNet prior (epsilon-prediction, Adam, "
                  "EMA) data-parallel over all local devices. Rerunning the "
                  "same command resumes from the newest checkpoint in "
                  "--workdir. The EMA prior is exported in diffusers format "
                  "to <workdir>/prior (load it with "
                  "jaxleak.diffusion.load_prior or sample-prior --prior).")
  _common.add_data_args(p)
  p.set_defaults(resolution=32)
  cond = p.add_mutually_exclusive_group()
  cond.add_argument("--class-conditional", dest="conditional",
                    action="store_true", default=None,
                    help="condition on the class label (default when the "
                         "dataset has more than one class)")
  cond.add_argument("--unconditional", dest="conditional",
                    action="store_false", help="ignore labels")
  p.add_argument("--split", default="train", help="dataset split to train on")
  p.add_argument("--class", dest="keep_class", default=None,
                 help="train on the images of this one class only (a class "
                      "name such as 'face' for lfw_faces, or its index); "
                      "implies an unconditional prior")
  p.add_argument("--block-channels", type=_common.positive_int, nargs="+", default=[32, 32, 64],
                 help="UNet channels per level (multiples of 32)")
  p.add_argument("--layers-per-block", type=_common.positive_int, default=1,
                 help="ResNet layers per UNet level")
  p.add_argument("--attention-heads", type=_common.positive_int, default=4,
                 help="heads of the attention blocks")
  p.add_argument("--attention", type=_bool_word, nargs="+", default=None,
                 metavar="{0,1}",
                 help="one 0/1 per UNet level: an attention block in that "
                      "level's down and up block (default: conditional "
                      "priors at the lowest level, unconditional none)")
  p.add_argument("--mid-attention", dest="mid_attention", action="store_true",
                 default=None,
                 help="an attention mid block at the lowest resolution "
                      "(self-attention plus the class context); default: "
                      "conditional priors only")
  p.add_argument("--self-attention", action="store_true",
                 help="the attention blocks of the levels also attend "
                      "spatially (self-attention), not only to the class")
  p.add_argument("--cross-attention-dim", type=_common.positive_int, default=64,
                 help="width of the class embedding (conditional priors)")
  p.add_argument("--timesteps", type=_common.positive_int, default=1000,
                 help="diffusion steps T of the training schedule")
  p.add_argument("--schedule", default="linear", choices=("linear", "cosine"))
  p.add_argument("--steps", type=_common.positive_int, default=2000,
                 help="optimiser steps")
  p.add_argument("--batch-size", type=_common.positive_int, default=64,
                 help="images per optimiser step (over all devices)")
  p.add_argument("--lr", type=_common.positive_float, default=1e-3,
                 help="peak Adam learning rate (warm-up, cosine decay)")
  p.add_argument("--warmup-steps", type=_common.nonnegative_int, default=100,
                 help="linear learning-rate warm-up")
  p.add_argument("--ema-decay", type=_common.float_range(0.0, 1.0, high_open=True),
                 default=0.999, help="decay of the EMA weights (exported)")
  p.add_argument("--cond-drop", type=_common.float_range(0.0, 1.0, high_open=True),
                 default=0.1,
                 help="label dropout for classifier-free guidance "
                      "(conditional priors)")
  p.add_argument("--hflip", action="store_true",
                 help="random left-right flips (faces, natural images)")
  p.add_argument("--shift", type=_common.nonnegative_int, default=0,
                 help="random translations of up to N pixels (edge-padded)")
  p.add_argument("--sample-every", type=_common.nonnegative_int, default=500,
                 help="write a sample grid every N steps (0: only at the end)")
  p.add_argument("--sample-steps", type=_common.positive_int, default=25,
                 help="DDIM steps of the progress sample grids")
  p.add_argument("--checkpoint-every", type=_common.positive_int, default=250,
                 help="steps")
  p.add_argument("--log-every", type=_common.positive_int, default=10,
                 help="steps per "
                 "loss-history entry")
  p.add_argument("--name", default=None,
                 help="prior name (default: the dataset name)")
  p.add_argument("--init-prior", default=None,
                 help="start from this prior's weights (a shipped name or a "
                      "prior folder, e.g. an earlier run's <workdir>/prior) "
                      "instead of a random initialisation, to train a "
                      "finished prior further; its UNet must match the "
                      "architecture flags")
  p.add_argument("--preempt-after-steps", type=_common.positive_int,
                 default=None,
                 help="exit (code 75) once this step is checkpointed; rerun "
                      "to resume")
  _common.add_run_args(p, workdir="runs/prior-<dataset>")
  p.set_defaults(func=run_train)


def _bool_word(value: str) -> bool:
  import argparse  # pylint: disable=g-import-not-at-top
  if value.lower() in ("1", "true", "yes"):
    return True
  if value.lower() in ("0", "false", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected 0 or 1, got {value!r}")


def _spec_from_args(args, channels: int, num_classes: int):
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  attention = getattr(args, "attention", None)
  if attention is not None and len(attention) != len(args.block_channels):
    raise ValueError(
        f"train-prior: argument '--attention' needs one 0/1 per level of "
        f"--block-channels ({len(args.block_channels)}), got {len(attention)}")
  return diffusion.UNetSpec(
      resolution=args.resolution, channels=channels,
      block_out_channels=tuple(args.block_channels),
      attention=None if attention is None else tuple(attention),
      layers_per_block=args.layers_per_block, num_classes=num_classes,
      cross_attention_dim=args.cross_attention_dim,
      attention_heads=args.attention_heads,
      mid_attention=getattr(args, "mid_attention", None),
      self_attention=bool(getattr(args, "self_attention", False)))


def _init_from_prior(name_or_path: str, spec, params):
  """The params of a saved prior, checked against the requested `spec`."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  prior = diffusion.load_prior(name_or_path)
  if prior.spec != spec:
    raise ValueError(
        f"train-prior: argument '--init-prior' {name_or_path!r} has the UNet "
        f"{prior.spec}, but the flags ask for {spec}")
  if jax.tree.structure(prior.params) != jax.tree.structure(params):
    raise ValueError(f"train-prior: argument '--init-prior' "
                     f"{name_or_path!r}: its params do not fit the UNet")
  return jax.tree.map(lambda p: np.asarray(p, np.float32), prior.params)


def _select_class(ds, keep_class: str):
  """The examples of one class of `ds`, by class name or index."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if keep_class in ds.class_names:
    index = ds.class_names.index(keep_class)
  elif keep_class.isdigit() and int(keep_class) < ds.num_classes:
    index = int(keep_class)
  else:
    raise ValueError(
        f"train-prior: argument '--class' must be a class name or index of "
        f"{ds.name!r} (classes {list(ds.class_names)}), got {keep_class!r}")
  return ds.subset(np.flatnonzero(np.asarray(ds.labels) == index)), index


def _command_line() -> str:
  return "jaxleak " + shlex.join(sys.argv[1:])


def run_train(args) -> int:
  from jaxleak import runloop  # pylint: disable=g-import-not-at-top

  if args.resolution is None:
    raise ValueError("train-prior: argument '--resolution' is required")
  args.workdir = args.workdir or os.path.join("runs", f"prior-{args.dataset}")
  # Checked before any data loads; removed again if the run fails empty.
  with runloop.workdir_guard(args.workdir):
    return _train_prior(args, args.workdir)


def _train_prior(args, workdir: str) -> int:
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np

  from jaxleak import data
  from jaxleak import diffusion
  from jaxleak import metrics
  from jaxleak import report
  # pylint: enable=g-import-not-at-top

  ds = data.load(args.dataset, args.split, args.data_dir,
                 resolution=args.resolution)
  class_index = None
  if args.keep_class is not None:
    if args.conditional:
      raise ValueError("train-prior: arguments '--class' and "
                       "'--class-conditional' exclude each other (one class "
                       "trains an unconditional prior)")
    ds, class_index = _select_class(ds, args.keep_class)
    args.conditional = False
  conditional = (ds.num_classes > 1 if args.conditional is None
                 else args.conditional)
  num_classes = ds.num_classes if conditional else 0
  spec = _spec_from_args(args, ds.image_shape[2], num_classes)
  schedule = diffusion.make_schedule(args.schedule, args.timesteps)
  name = args.name or args.dataset
  # A rerun must describe the same run, or resuming would mix two configs;
  # train_prior compares this (and its own settings) with the checkpoint's.
  run_info = {"spec": spec.to_dict(), "dataset": args.dataset,
              "split": args.split, "schedule": args.schedule,
              "timesteps": args.timesteps}
  if class_index is not None:
    run_info["class"] = class_index

  params = diffusion.init_unet(spec, jax.random.key(args.seed))
  if args.init_prior is not None:
    params = _init_from_prior(args.init_prior, spec, params)
    run_info["init_prior"] = args.init_prior
  apply_fn = diffusion.make_unet_apply(spec)
  n_params = diffusion.param_count(params)
  print(f"train-prior: {name}: {len(ds)} images {ds.image_shape}, "
        f"{'class-conditional (' + str(num_classes) + ' classes)' if conditional else 'unconditional'}, "
        f"UNet {spec.block_out_channels} with {n_params:,} params, "
        f"{jax.local_device_count()} device(s); workdir {workdir}")

  sample_dir = os.path.join(workdir, "samples")
  os.makedirs(sample_dir, exist_ok=True)
  grid_paths = []

  def make_prior(state) -> diffusion.Prior:
    ema = jax.tree.map(np.asarray, jax.device_get(state.ema_params))
    return diffusion.Prior(name=name, spec=spec, params=ema,
                           schedule=schedule,
                           class_names=ds.class_names if conditional else ())

  def sample_grid(step: int, state) -> None:
    prior = make_prior(state)
    per = 2 if conditional else 0
    labels = (np.repeat(np.arange(num_classes), per) if conditional else None)
    n = len(labels) if conditional else 16
    imgs = diffusion.generate(prior, jax.random.key(1234), n, labels=labels,
                              num_steps=min(args.sample_steps, args.timesteps))
    titles = ([ds.class_names[l] for l in labels] if conditional else None)
    path = os.path.join(sample_dir, f"step_{step:06d}.png")
    metrics.save_image_grid(imgs, path, nrow=max(per, 1) * 5 if conditional
                            else 4, titles=titles)
    grid_paths.append(path)

  result = diffusion.train_prior(
      apply_fn, params, schedule, ds.images,
      ds.labels if conditional else None, steps=args.steps,
      batch_size=args.batch_size, learning_rate=args.lr,
      warmup_steps=args.warmup_steps, ema_decay=args.ema_decay,
      cond_drop_prob=args.cond_drop if conditional else 0.0,
      null_class=spec.null_class if conditional else None, hflip=args.hflip,
      shift=args.shift, seed=args.seed, workdir=workdir, checkpoint_every=args.checkpoint_every,
      log_every=args.log_every, callback=sample_grid,
      callback_every=args.sample_every, progress=not args.no_progress,
      stop_after=args.preempt_after_steps, run_info=run_info)
  if result.resumed_from is not None:
    print(f"resumed from step {result.resumed_from}")
  step = int(result.state.step)
  if step < args.steps:
    print(f"preempted at step {step}; rerun the same command to resume")
    return 75

  history = result.history
  final_loss = history[-1]["loss"] if history else float("nan")
  info = {"command": _command_line(), "dataset": args.dataset,
          "split": args.split, "train_images": len(ds),
          **({"class": ds.class_names[class_index], "class_index": class_index}
             if class_index is not None else {}),
          **({"init_prior": args.init_prior} if args.init_prior else {}), "steps": step,
          "batch_size": args.batch_size, "lr": args.lr,
          "ema_decay": args.ema_decay,
          "cond_drop": args.cond_drop if conditional else 0.0,
          "hflip": args.hflip, "shift": args.shift, "seed": args.seed,
          "final_loss": final_loss,
          "wall_time_s": round(result.total_wall_time_s, 1),
          "devices": jax.local_device_count(),
          "device_kind": jax.devices()[0].device_kind}
  prior = make_prior(result.state)
  prior = diffusion.Prior(name=prior.name, spec=spec, params=prior.params,
                          schedule=schedule, class_names=prior.class_names,
                          info=info)
  export = os.path.join(workdir, "prior")
  diffusion.save_prior(prior, export, format="diffusers")

  curve = metrics.save_curves(
      {"train loss": ([h["step"] for h in history],
                      [h["loss"] for h in history])},
      os.path.join(workdir, "loss_curve.png"), xlabel="step",
      ylabel="epsilon MSE", title=f"train-prior {name}", logy=True)
  summary = {"final_loss": final_loss, "steps": step,
             "params": n_params, "wall_time_s": result.total_wall_time_s,
             "resumed_from_step": result.resumed_from,
             "exported_prior": export}
  report.write_json(os.path.join(workdir, "metrics.json"),
                    {**summary, "spec": spec.to_dict(), "info": info,
                     "history": history})
  figures = {"Loss curve": curve}
  if grid_paths:
    figures["Samples (EMA, DDIM)"] = grid_paths[-1]
  else:
    last = sorted(os.listdir(sample_dir))
    if last:
      figures["Samples (EMA, DDIM)"] = os.path.join(sample_dir, last[-1])
  report.write_report(workdir, f"jaxleak train-prior: {name}",
                      summary=summary, figures=figures, config=info)
  print(f"final loss {final_loss:.4f} after {step} steps "
        f"({result.total_wall_time_s:.0f} s); exported the EMA prior to "
        f"{export}; wrote {workdir}/metrics.json, report.md, loss_curve.png"
        + (f", {len(grid_paths)} sample grid(s) in {sample_dir}"
           if grid_paths else ""))
  return 0


# -- sample-prior --------------------------------------------------------------


def _register_sample(subparsers) -> None:
  p = subparsers.add_parser(
      "sample-prior", help="draw a DDIM sample grid from a diffusion prior",
      description="Sample a shipped prior (by name) or a prior folder with "
                  "DDIM and write samples.png, samples.npz, metrics.json and "
                  "report.md to --workdir.")
  p.add_argument("--prior", required=True,
                 help="shipped prior name (mnist, lfw_faces) or folder path")
  p.add_argument("--n", type=_common.positive_int, default=64,
                 help="number of samples")
  p.add_argument("--steps", type=_common.positive_int, default=None,
                 help="DDIM steps (10 to 1000 typical; at most T). Default: "
                      "the prior's recommended sampling, else 50")
  p.add_argument("--eta", type=_common.nonnegative_float, default=None,
                 help="DDIM stochasticity (0 = deterministic). Default: the "
                      "prior's recommended sampling, else 0")
  p.add_argument("--guidance-scale", type=_common.finite_float, default=None,
                 help="classifier-free guidance weight (1 = none). Default: "
                      "the prior's recommended sampling, else 1")
  p.add_argument("--labels", default="cycle",
                 help="conditional priors: 'cycle' (0,1,2,...), 'null' "
                      "(unconditional), or comma-separated labels")
  p.add_argument("--nrow", type=_common.positive_int, default=None,
                 help="images per row")
  p.add_argument("--seed", type=_common.nonnegative_int, default=0,
                 help="seed of the sampling noise")
  p.add_argument("--workdir", default=None,
                 help="output folder (default runs/sample-NAME, NAME being "
                      "the prior's recorded name: runs/sample-mnist_subset "
                      "for --prior mnist)")
  p.set_defaults(func=run_sample, resumable=False)  # keeps no checkpoints


# Used where neither the command line nor the prior's record says otherwise.
SAMPLING_FALLBACK = {"steps": 50, "eta": 0.0, "guidance_scale": 1.0}


def sampling_settings(args, prior_info: dict) -> dict:
  """DDIM settings: explicit flags, else the prior's ``info["sampling"]``.

  A shipped prior records the settings its quality was measured with (for
  the MNIST prior: 50 steps, eta 0, guidance 3; see
  jaxleak/assets/priors/README.md), so ``sample-prior --prior mnist`` draws
  what the README reports unless told otherwise.
  """
  recommended = dict(prior_info.get("sampling", {}))
  out = {}
  for name, fallback in SAMPLING_FALLBACK.items():
    value = getattr(args, name)
    out[name] = (value if value is not None
                 else type(fallback)(recommended.get(name, fallback)))
  return out


def _parse_labels(text: str, n: int, num_classes: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  if text == "cycle":
    return np.arange(n) % num_classes
  if text == "null":
    return None
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise ValueError(
        f"sample-prior: argument '--labels' must be 'cycle', 'null' or "
        f"comma-separated ints, got {text!r}") from None
  if not values:
    raise ValueError("sample-prior: argument '--labels' is empty")
  return np.resize(np.asarray(values), n)


def run_sample(args) -> int:
  # pylint: disable=g-import-not-at-top
  from jaxleak import diffusion
  from jaxleak import runloop
  # pylint: enable=g-import-not-at-top
  if args.workdir:  # an unusable folder fails before the prior loads
    with runloop.workdir_guard(args.workdir):
      return _sample(args, diffusion.load_prior(args.prior), args.workdir)
  prior = diffusion.load_prior(args.prior)  # the default folder is named by it
  workdir = args.workdir = os.path.join("runs", f"sample-{prior.name}")
  with runloop.workdir_guard(workdir):
    return _sample(args, prior, workdir)


def _sample(args, prior, workdir: str) -> int:
  """`run_sample` once the prior is loaded and the workdir checked."""
  # pylint: disable=g-import-not-at-top
  import time

  import jax
  import numpy as np

  from jaxleak import diffusion
  from jaxleak import metrics
  from jaxleak import report
  # pylint: enable=g-import-not-at-top

  settings = sampling_settings(args, prior.info)
  args.steps, args.eta, args.guidance_scale = (
      settings["steps"], settings["eta"], settings["guidance_scale"])
  if not 1 <= args.steps <= prior.schedule.num_timesteps:
    raise ValueError(
        f"sample-prior: argument '--steps' must be in [1, "
        f"{prior.schedule.num_timesteps}], got {args.steps}")
  labels = (_parse_labels(args.labels, args.n, prior.num_classes)
            if prior.conditional else None)
  t0 = time.time()
  images = diffusion.generate(prior, jax.random.key(args.seed), args.n,
                              labels=labels, num_steps=args.steps,
                              eta=args.eta, guidance_scale=args.guidance_scale)
  wall = time.time() - t0
  titles = None
  if labels is not None and prior.class_names:
    titles = [prior.class_names[int(l)] for l in labels]
  grid = metrics.save_image_grid(images, os.path.join(workdir, "samples.png"),
                                 nrow=args.nrow, titles=titles)
  np.savez_compressed(os.path.join(workdir, "samples.npz"), images=images,
                      labels=np.asarray([] if labels is None else labels))
  summary = {"prior": prior.name, "samples": args.n, "ddim_steps": args.steps,
             "eta": args.eta, "guidance_scale": args.guidance_scale,
             "wall_time_s": wall}
  report.write_json(os.path.join(workdir, "metrics.json"),
                    {**summary, "prior_info": prior.info})
  report.write_report(workdir, f"jaxleak sample-prior: {prior.name}",
                      summary=summary, figures={"Samples": grid},
                      config={k: v for k, v in vars(args).items()
                              if k != "func"})
  print(f"{args.n} samples, {args.steps} DDIM steps, eta {args.eta:g}, "
        f"guidance {args.guidance_scale:g} ({wall:.1f} s); wrote "
        f"{workdir}/samples.png, samples.npz, metrics.json, report.md")
  return 0
