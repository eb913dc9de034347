"""`jaxleak attack`: run a gradient-inversion attack on simulated victims.

Example::

  jaxleak attack --attack inverting_gradients --model convnet \\
      --dataset mnist_subset --batch-size 4 --defence gaussian \\
      --noise-std 1e-3 --steps 2000 --trials 10 --workdir runs/x

Each trial draws a private batch and model initialisation (from --seed and
the trial index), simulates the victim's (defended) gradient, runs the
attack, and scores it. The workdir receives
``ground_truth_vs_reconstruction.png``, ``loss_curve.png``, ``metrics.json``
(per-trial metrics, their mean and std) and ``report.md``; the diffusion-prior
attacks (``--attack diffusion_dsg --prior mnist``) also write
``x0_trajectory.png``, the x0_hat estimate across sampling steps.
"""

from __future__ import annotations

import inspect
import os

from jaxleak.cli import _common

DEFENCES = ("none", "gaussian", "laplacian", "dp_clip", "topk", "quantize")
METRICS = ("mse", "psnr", "ssim", "lpips", "label_acc", "wall_time_s",
           "final_loss")

# Each classic attack's defaults are the setting it is known to work in
# (experiments/inversion/README.md): DLG's sigmoid LeNet with U(-0.5, 0.5)
# weights, where iDLG reached >= 31.6 dB on 20/20 digits, DLG with 2
# restarts >= 31.1 dB on 20/20, and Inverting Gradients (2000 steps) 46.9 dB
# on average. GradInversion's BN prior needs a BatchNorm model, but on the
# BatchNorm ConvNet it reached only 7.7 dB (one MNIST digit, 1000 steps;
# 6.2 dB at 500 steps with distance_scale 1), so its default is the same
# LeNet without the BN prior (17.5 dB, SSIM 0.85 at 2000 steps): give
# `--model convnet --norm batch` for the prior. "model" carries "init",
# "norm" and "bn" with it: they apply only when --model is not given.
ATTACK_DEFAULTS: dict[str, dict[str, object]] = {
    "dlg": {"model": "lenet", "init": "uniform", "restarts": 2},
    "idlg": {"model": "lenet", "init": "uniform"},
    "inverting_gradients": {"model": "lenet", "init": "uniform",
                            "steps": 2000},
    "grad_inversion": {"model": "lenet", "init": "uniform", "bn": 0.0,
                       "steps": 2000},
    "user_level_diffusion": {"model": "cnn_mnist"},
}
"""Per-attack CLI defaults (flags the user did not give, attack options)."""
CASE_DEFAULTS = {"model": "convnet", "init": "default", "norm": None}
"""Defaults of other (registered) attacks."""
_MODEL_KEYS = ("model", "init", "norm", "bn")


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "attack", help="gradient inversion (DLG, iDLG, Inverting Gradients, "
                     "GradInversion, diffusion DPS/DSG) against a simulated "
                     "victim",
      description="Simulate victims that share (defended) gradients of a "
                  "private batch and invert them; reports MSE, PSNR, SSIM, "
                  "LPIPS (with the [lpips] extra) and label accuracy over "
                  "--trials private batches.")
  p.add_argument("--attack", default="inverting_gradients",
                 help="dlg, idlg, inverting_gradients, grad_inversion or any "
                      "registered attack; flags not given take the attack's "
                      "own defaults (the classic attacks: lenet with "
                      "uniform init, grad_inversion there without its BN "
                      "prior; others: convnet)")
  _common.add_model_args(p, default="convnet")
  # None = the attack's default (ATTACK_DEFAULTS), resolved in `run`.
  p.set_defaults(model=None, init=None)
  p.add_argument("--norm", default=None,
                 help="normalisation for convnet/resnet18 (none, group, "
                      "batch); batch is needed by grad_inversion")
  _common.add_data_args(p)
  p.add_argument("--batch-size", type=_common.positive_int, default=1,
                 help="private images per victim")
  p.add_argument("--unique-labels", action="store_true",
                 help="draw batches with distinct labels")
  p.add_argument("--hide-labels", action="store_true",
                 help="do not give the attacker the labels (they are "
                      "recovered from the gradient)")
  p.add_argument("--local-steps", type=_common.positive_int, default=1,
                 help="victim's local SGD steps (fedAvg when > 1)")
  p.add_argument("--local-lr", type=_common.positive_float, default=1e-3,
                 help="victim's local SGD learning rate (fedAvg)")
  p.add_argument("--local-batch-size", type=_common.positive_int, default=None,
                 help="victim's local minibatch (default: the whole batch)")
  d = p.add_argument_group("defence")
  d.add_argument("--defence", default="none", choices=DEFENCES)
  d.add_argument("--noise-std", type=_common.nonnegative_float, default=1e-3,
                 help="gaussian std / laplacian scale (absolute, or a "
                      "multiple of the gradient RMS with --relative-noise)")
  d.add_argument("--relative-noise", action="store_true")
  d.add_argument("--clip", type=_common.positive_float, default=1.0,
                 help="dp_clip: per-sample L2 clipping bound C")
  d.add_argument("--noise-multiplier", type=_common.nonnegative_float,
                 default=0.0,
                 help="dp_clip: noise multiplier sigma (std sigma*C)")
  d.add_argument("--topk", type=_common.float_range(0.0, 1.0, low_open=True),
                 default=0.1,
                 help="topk: fraction of each tensor kept")
  d.add_argument("--bits", type=_common.positive_int, default=8,
                 help="quantize: bits")
  a = p.add_argument_group("attack hyper-parameters (default: the attack's)")
  a.add_argument("--steps", type=_common.positive_int, default=None,
                 help="optimisation (or sampling) steps")
  a.add_argument("--lr", type=_common.positive_float, default=None,
                 help="attack learning rate")
  a.add_argument("--restarts", type=_common.positive_int, default=None,
                 help="random restarts (the best is kept)")
  a.add_argument("--tv", type=_common.nonnegative_float, default=None,
                 help="total-variation weight")
  a.add_argument("--attack-init", default=None,
                 help="candidate initialisation: randn, rand or half")
  a.add_argument("--label-strategy", default=None,
                 help="auto, known, idlg, analytic or yin")
  g = p.add_argument_group("diffusion-prior attacks (diffusion_dps, "
                           "diffusion_dsg)")
  g.add_argument("--prior", default=None,
                 help="diffusion prior: a shipped name (mnist, lfw_faces), a "
                      "prior or diffusers folder, or random (diffusion_"
                      "finetune); --steps is the number of sampling steps")
  g.add_argument("--zeta", type=_common.nonnegative_float, default=None,
                 help="diffusion_dps guidance step size")
  g.add_argument("--guidance-rate", type=_common.nonnegative_float, default=None,
                 help="diffusion_dsg guidance rate m_r (0.2)")
  u = p.add_argument_group(
      "user-level attacks (user_level_diffusion): with --users, each of N "
      "users shares the gradient of its whole --batch-size batch and the "
      "attack returns one representative image per user; the victim "
      "(--model, default cnn_mnist) and an MLP judge are trained first")
  u.add_argument("--users", type=_common.positive_int, default=None,
                 help="number of users (enables the user-level setting)")
  u.add_argument("--user-mode", default="label",
                 help="label (a user's images share one class) or dominant "
                      "(one class holds --share of the batch)")
  u.add_argument("--share", type=_common.float_range(0.0, 1.0, low_open=True), default=0.7,
                 help="dominant users: the majority class's share")
  u.add_argument("--iterations", type=_common.positive_int, default=None,
                 help="Adam iterations on the latent (200)")
  u.add_argument("--window", type=_common.positive_int, default=None,
                 help="DDIM steps back-propagated through (4)")
  u.add_argument("--num-representatives", type=_common.positive_int, default=None,
                 help="representative images per user (1)")
  u.add_argument("--class-conditional", action="store_true", default=None,
                 help="condition a class-conditional --prior on the majority "
                      "label recovered from the gradient")
  u.add_argument("--guidance-scale", type=float, default=None,
                 help="classifier-free guidance weight of the conditional "
                      "chain (1: none; with --class-conditional)")
  u.add_argument("--train-epochs", type=_common.positive_int, default=15,
                 help="epochs for training the victim and the judge")
  f = p.add_argument_group(
      "diffusion_finetune (fine-tunes the --prior UNet, 'lfw_faces' by default "
      "or 'random' for the ablation, for --steps Adam updates at --lr)")
  f.add_argument("--sampling-steps", type=_common.positive_int, default=None,
                 help="DDIM steps S of the chain from the fixed x_T (10)")
  f.add_argument("--trainable", default=None,
                 help="UNet weights that move: all, up (last up-block) or "
                      "lora (low-rank adapters on conv kernels)")
  f.add_argument("--lora-rank", type=_common.nonnegative_int, default=None, help="LoRA rank (4)")
  f.add_argument("--distance", default=None,
                 help="gradient distance: cosine, l2 or cosine+l2 "
                      "(diffusion_dps/dsg: l2 or cosine)")
  f.add_argument("--proximity", type=_common.nonnegative_float, default=None,
                 help="weight of the L2 proximity to the starting weights")
  p.add_argument("--trials", type=_common.positive_int, default=1,
                 help="private batches to attack; mean and std are reported")
  p.add_argument("--fast-compile", action="store_true",
                 help="compile with XLA optimisations off (quicker start, "
                      "slower steps: for short runs)")
  _common.add_run_args(p, workdir="runs/attack-<attack>-<model>-<dataset>")
  # Only --users trains (checkpointed) models; see main._interrupted_message.
  p.set_defaults(func=run, resumable=False)


def _defence(args) -> tuple[str, dict]:
  if args.defence in ("gaussian", "laplacian"):
    key = "std" if args.defence == "gaussian" else "scale"
    return args.defence, {key: args.noise_std,
                          "relative": args.relative_noise}
  if args.defence == "dp_clip":
    return "dp_clip", {"l2_norm_clip": args.clip,
                       "noise_multiplier": args.noise_multiplier}
  if args.defence == "topk":
    return "topk", {"fraction": args.topk}
  if args.defence == "quantize":
    return "quantize", {"bits": args.bits}
  return "none", {}


def resolve_defaults(args) -> dict[str, object]:
  """Fills what the user left unset with the attack's defaults.

  Flags (``--model``, ``--steps``, ...) are set on `args`; attack options
  without a flag (``bn``) go to ``args.attack_options``. Returns everything
  taken from `ATTACK_DEFAULTS` (for the report).
  """
  own = ATTACK_DEFAULTS.get(args.attack, {})
  filled = {}
  model_given = args.model is not None
  args.attack_options = {}
  for k in _MODEL_KEYS:
    value = own[k] if not model_given and k in own else CASE_DEFAULTS.get(k)
    if not hasattr(args, k):  # an attack option, not a flag
      if k in own and not model_given:
        args.attack_options[k] = filled[k] = value
    elif getattr(args, k) is None:
      setattr(args, k, value)
      if k in own and not model_given:
        filled[k] = value
  for k, value in own.items():
    if k not in _MODEL_KEYS and getattr(args, k, None) is None:
      setattr(args, k, value)
      filled[k] = value
  return filled


def _attack_kwargs(attack_fn, args) -> dict:
  given = {"steps": args.steps, "lr": args.lr, "restarts": args.restarts,
           "tv": args.tv, "init": args.attack_init,
           "label_strategy": args.label_strategy, "prior": args.prior,
           "zeta": args.zeta, "guidance_rate": args.guidance_rate,
           "iterations": args.iterations, "window": args.window,
           "num_representatives": args.num_representatives,
           "class_conditional": getattr(args, "class_conditional", None),
           "guidance_scale": getattr(args, "guidance_scale", None),
           "sampling_steps": args.sampling_steps, "trainable": args.trainable,
           "rank": args.lora_rank, "distance": args.distance,
           "proximity": args.proximity}
  given = {k: v for k, v in given.items() if v is not None}
  given = {**getattr(args, "attack_options", {}), **given}
  accepted = inspect.signature(attack_fn).parameters
  unknown = sorted(set(given) - set(accepted))
  if unknown:
    renamed = {"init": "attack-init", "rank": "lora-rank"}
    flags = ", ".join("--" + renamed.get(k, k.replace("_", "-"))
                      for k in unknown)
    raise ValueError(f"attack {args.attack!r} does not accept {flags}")
  return given


def _default(attack_fn, name: str, kwargs: dict, fallback: int = 1) -> int:
  if name in kwargs:
    return int(kwargs[name])
  param = inspect.signature(attack_fn).parameters.get(name)
  if param is None or param.default is inspect.Parameter.empty:
    return fallback
  return int(param.default)


def _stats(values: list[float]) -> tuple[float, float]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  arr = np.asarray([v for v in values if v is not None], np.float64)
  if arr.size == 0:
    return float("nan"), float("nan")
  return float(arr.mean()), float(arr.std())


def _peak_rss_mb() -> float:
  """This process's peak resident memory in MiB (Linux reports KiB)."""
  import resource  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _finetune_figures(result, truth, workdir) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxleak import metrics as metrics_lib  # pylint: disable=g-import-not-at-top

  def path(name):
    return os.path.join(workdir, name)

  target = np.asarray(truth.images)[:1]
  steps = [int(s) for s in result.snapshot_steps]
  prior = result.hyperparams.get("prior")
  return {
      "Target (private image)": metrics_lib.save_image_grid(
          target, path("target.png"), nrow=1, cell_size=3.0),
      f"Reconstruction (prior {prior})": metrics_lib.save_image_grid(
          result.images[:1], path("reconstruction.png"), nrow=1,
          cell_size=3.0),
      f"Generated image along the fine-tuning (prior {prior}), target last":
          metrics_lib.save_image_grid(
              np.concatenate([result.snapshots[:, 0], target]),
              path("finetune_strip.png"), nrow=len(steps) + 1,
              titles=[f"{prior} prior, step {steps[0]}"]
              + [f"step {s}" for s in steps[1:]] + ["target"],
              cell_size=2.0),
  }


def run(args) -> int:
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top

  if args.attack not in inversion.available_attacks():
    raise ValueError(f"argument --attack: unknown attack {args.attack!r}; "
                     f"choose from {', '.join(inversion.available_attacks())}")
  _common.check_model_name(args)
  attack_fn = inversion.get_attack(args.attack)
  if args.users is None and args.attack == "user_level_diffusion":
    raise ValueError("argument --users is required with --attack "
                     "user_level_diffusion (e.g. --users 20)")
  defaults = resolve_defaults(args)
  kwargs = _attack_kwargs(attack_fn, args)
  if args.attack == "diffusion_finetune" and args.resolution is not None:
    inversion.diffusion_finetuning.check_prior_resolution(
        kwargs.get("prior", "lfw_faces"), args.resolution)
  defence, defence_kwargs = _defence(args)
  workdir = _common.default_workdir(f"attack-{args.attack}", args)
  from jaxleak import runloop  # pylint: disable=g-import-not-at-top
  # Unusable folders fail here, in one line, before any data loads; a run
  # that fails leaves no empty folder behind.
  with runloop.workdir_guard(workdir):
    if args.users is not None:
      args.resumable = True  # the victim and judge training is checkpointed
      from jaxleak.cli import user_level  # pylint: disable=g-import-not-at-top
      return user_level.run(args, attack_fn, kwargs, (defence, defence_kwargs))
    return _attack(args, attack_fn, kwargs, defaults,
                   (defence, defence_kwargs), workdir)


def _attack(args, attack_fn, kwargs: dict, defaults: dict,
            defence_and_kwargs: tuple[str, dict], workdir: str) -> int:
  """`run` once the arguments and the workdir are checked."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  # pylint: disable=g-import-not-at-top
  from jaxleak import metrics as metrics_lib
  from jaxleak import report
  from jaxleak.attacks import inversion
  # pylint: enable=g-import-not-at-top

  defence, defence_kwargs = defence_and_kwargs
  model_kwargs = {"norm": args.norm} if args.norm else {}
  case = inversion.Case(
      model=args.model, dataset=args.dataset, batch_size=args.batch_size,
      resolution=args.resolution, init=args.init,
      model_kwargs=tuple(sorted(model_kwargs.items())), defence=defence,
      defence_kwargs=tuple(sorted(defence_kwargs.items())),
      local_steps=args.local_steps, local_lr=args.local_lr,
      local_batch_size=args.local_batch_size,
      reveal_labels=not args.hide_labels, unique_labels=args.unique_labels,
      data_dir=args.data_dir)
  from jaxleak import data  # pylint: disable=g-import-not-at-top
  _common.check_classes(
      data.load(args.dataset, case.split, args.data_dir,
                resolution=args.resolution), args.dataset)

  steps = _default(attack_fn, "steps", kwargs, 1)
  restarts = _default(attack_fn, "restarts", kwargs, 1)
  shown_defence = " ".join(
      [defence] + [f"{k}={v}" for k, v in sorted(defence_kwargs.items())])
  print(f"{args.attack} on {args.model}/{args.dataset}, batch "
        f"{args.batch_size}, defence {shown_defence}, "
        f"{args.trials} trial(s); workdir {workdir}", flush=True)
  if defaults:
    print(f"{args.attack}'s defaults: " + " ".join(
        f"{k}={v}" if k in args.attack_options
        else f"--{k.replace('_', '-')} {v}" for k, v in defaults.items()),
          flush=True)
  pbar = None
  if not args.no_progress:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
    pbar = tqdm.tqdm(total=args.trials * restarts * steps, unit="step",
                     desc=args.attack, dynamic_ncols=True)

  compile_ctx = (inversion.compiler_options(inversion.FAST_COMPILE)
                 if args.fast_compile else contextlib.nullcontext())
  rows, results, truths = [], [], []
  t_start = time.perf_counter()
  with compile_ctx:
    for trial in range(args.trials):
      batch = inversion.simulate(case, seed=args.seed, trial=trial)
      progress = {"done": 0}

      def callback(restart, step, loss, progress=progress, trial=trial):
        done = restart * steps + step
        if pbar is not None:
          pbar.update(done - progress["done"])
          pbar.set_postfix(trial=trial, loss=f"{loss:.4g}")
        progress["done"] = done

      result = attack_fn(batch.observation, key=args.seed * 100003 + trial,
                         ground_truth=batch.ground_truth, callback=callback,
                         **kwargs)
      results.append(result)
      truths.append(batch.ground_truth)
      row = {"trial": trial, **{k: v for k, v in result.summary().items()
                                if k in METRICS},
             "labels": " ".join(map(str, result.labels.tolist())),
             "true_labels": " ".join(
                 map(str, np.asarray(batch.ground_truth.labels).tolist())),
             "indices": " ".join(map(str, batch.indices.tolist()))}
      rows.append(row)
  if pbar is not None:
    pbar.close()

  summary = {"attack": args.attack, "trials": args.trials}
  for k in METRICS:
    mean, std = _stats([r.get(k) for r in rows])
    summary[f"{k}_mean"] = mean
    summary[f"{k}_std"] = std
  summary["total_time_s"] = time.perf_counter() - t_start

  # Figure: every trial's batch, reconstructions re-ordered to the truth.
  gts, recs = [], []
  for res, gt in zip(results, truths):
    perm = res.metrics["permutation"] if res.metrics else None
    rec = res.images[np.asarray(perm)] if perm else res.images
    gts.append(np.asarray(gt.images))
    recs.append(rec)
    if sum(len(g) for g in gts) >= 16:
      break
  gt_all, rec_all = np.concatenate(gts)[:16], np.concatenate(recs)[:16]
  grid = metrics_lib.save_comparison_grid(
      gt_all, rec_all,
      os.path.join(workdir, "ground_truth_vs_reconstruction.png"))
  curves = {f"trial {i}": (np.arange(1, len(r.loss_history) + 1),
                           r.loss_history) for i, r in enumerate(results[:10])}
  curve = metrics_lib.save_curves(
      curves, os.path.join(workdir, "loss_curve.png"), xlabel="step",
      ylabel="attack objective", logy=True,
      title=f"{args.attack} on {args.model}/{args.dataset}")

  figures = {"Ground truth (top) vs reconstruction (bottom)": grid,
             "Attack objective": curve}
  # Diffusion attacks: the x0_hat estimate across sampling steps.
  traj = getattr(results[0], "trajectory", None)
  if traj is not None:
    pick = np.unique(np.linspace(0, len(traj) - 1, min(len(traj), 10))
                     .astype(int))
    cells = np.concatenate([traj[pick, i] for i in range(
        min(traj.shape[1], 4))])
    figures["x0_hat trajectory across sampling steps (trial 0)"] = (
        metrics_lib.save_image_grid(
            cells, os.path.join(workdir, "x0_trajectory.png"),
            nrow=len(pick), titles=[f"step {i}" for i in pick] * min(
                traj.shape[1], 4)))
  # diffusion_finetune: target, reconstruction and the generated image along
  # the fine-tuning (trial 0, first image), and the memory it took.
  snaps = getattr(results[0], "snapshots", None)
  if snaps is not None:
    figures.update(_finetune_figures(results[0], truths[0], workdir))
  summary["peak_rss_mb"] = _peak_rss_mb()
  step_mem = getattr(results[0], "step_memory_bytes", None)
  if step_mem is not None:
    summary["step_memory_mb"] = step_mem / 2**20
  config = {k: v for k, v in vars(args).items() if k != "func"}
  report.write_json(os.path.join(workdir, "metrics.json"), {
      "summary": summary,
      "mean": {k: summary[f"{k}_mean"] for k in METRICS},
      "std": {k: summary[f"{k}_std"] for k in METRICS},
      "trials": [{**row, "metrics": res.metrics,
                  "restart_losses": list(res.restart_losses)}
                 for row, res in zip(rows, results)],
      "hyperparams": dict(results[0].hyperparams),
      "case": dict(vars(case).items()),
      "config": config,
  })
  report.write_report(
      workdir, f"jaxleak attack: {args.attack} on {args.model}/{args.dataset}",
      summary=summary, tables={"Trials": rows},
      figures=figures,
      config={"hyperparams": dict(results[0].hyperparams), **config},
      notes="Metrics: mean ± std (population) over trials; MSE/PSNR/SSIM "
            "(and AlexNet LPIPS, lower is closer, when the [lpips] extra is "
            "installed) on [0, 1] images after optimal re-ordering, "
            "label_acc order-free. Flags filled from the attack's defaults: "
            f"{defaults or 'none'}.")
  lpips = ("" if np.isnan(summary["lpips_mean"]) else
           f"LPIPS {summary['lpips_mean']:.3f} ± {summary['lpips_std']:.3f}, ")
  written = ["metrics.json", "report.md"] + [
      os.path.basename(path) for path in figures.values()]
  print(f"PSNR {summary['psnr_mean']:.2f} ± {summary['psnr_std']:.2f} dB, "
        f"SSIM {summary['ssim_mean']:.3f} ± {summary['ssim_std']:.3f}, "
        f"{lpips}label accuracy {summary['label_acc_mean']:.3f} over "
        f"{args.trials} trial(s); wrote {workdir}/{', '.join(written)}")
  return 0
