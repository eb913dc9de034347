"""Gradient-guided diffusion fine-tuning vs Inverting Gradients, 64-512 px.

Thin launcher over `jaxleak.attacks.inversion` (`diffusion_finetune`,
`inverting_gradients`). Private images are named scikit-image sample images
(`jaxleak.data` "sample_images": centre-cropped, resized to R x R RGB), one
per victim, labels known, victims untrained (initialised from the seed and
the target's index). Per (resolution, target) it runs

* ``diffusion_finetune`` from the configured starting prior (the shipped
  32 px ``lfw_faces`` UNet by default, lifted to RGB at R x R) and from a
  randomly initialised UNet of the same architecture (the ablation), and
* ``inverting_gradients`` with its step count set so that its steady-state
  time matches the fine-tuning's (``ig_steps = ft_seconds / ig_s_per_step``,
  seconds per step measured on this target first; compilation excluded for
  both), plus the same at a fraction of the budget for a PSNR-vs-time curve;

and, on the defence target, ``diffusion_finetune`` under relative Gaussian
gradient noise and DP clipping plus noise. Every run appends one record to
``results.jsonl`` (PSNR, SSIM, wall time, steady seconds, PSNR of every
fine-tuning snapshot with its time); rerunning the command skips what is
done. Then ``report.md``, ``results.md`` and the figures are written:

  nice -n 10 python experiments/finetune/run.py \\
      --config experiments/finetune/configs/acceptance.py \\
      --workdir experiments/finetune/results/acceptance
  python experiments/finetune/run.py --config ... --workdir ... --report_only

256 and 512 px rows (a GPU is needed for them in reasonable time):

  python experiments/finetune/run.py \\
      --config experiments/finetune/configs/acceptance.py \\
      --config.resolutions='(256, 512)' --config.defence_resolution=0 \\
      --workdir experiments/finetune/results/gpu
"""

import json
import os
import time

from absl import flags
import numpy as np

from jaxleak import launch

_CONFIG, _WORKDIR = launch.define_config_flags()
_REPORT_ONLY = flags.DEFINE_bool("report_only", False,
                                 "only summarise results.jsonl")


def _log(msg):
  print(time.strftime("%H:%M:%S"), msg, flush=True)


_APPLY_FNS = {}


def _victim_apply(cfg, res, num_classes):
  """One victim `apply_fn` per resolution, shared by every target.

  `ModelFn` hashes by identity and is a static argument of the attacks'
  jitted steps: sharing it lets every target, prior and defence at one
  resolution reuse one compiled fine-tuning step (and one IG step), the
  observation (gradient, victim params) travelling as arguments.
  """
  # pylint: disable=g-import-not-at-top
  import jax

  from jaxleak import models
  # pylint: enable=g-import-not-at-top
  k = (cfg.model, res, num_classes)
  if k not in _APPLY_FNS:
    _APPLY_FNS[k], _ = models.create(cfg.model, num_classes, (res, res, 3),
                                     jax.random.key(0),
                                     **dict(cfg.model_kwargs))
  return _APPLY_FNS[k]


def _observation(cfg, res, target, defence=None):
  """The victim's observation of one named sample image at res x res."""
  # pylint: disable=g-import-not-at-top
  import jax

  from jaxleak import data
  from jaxleak import models
  from jaxleak.attacks import inversion
  # pylint: enable=g-import-not-at-top
  ds = data.load("sample_images", resolution=res)
  idx = data.SAMPLE_IMAGE_NAMES.index(target)
  images = np.asarray(ds.images[idx:idx + 1], np.float32)
  labels = np.asarray(ds.labels[idx:idx + 1], np.int32)
  key = jax.random.fold_in(jax.random.key(cfg.seed), idx)
  _, params = models.create(cfg.model, ds.num_classes, (res, res, 3), key,
                            **dict(cfg.model_kwargs))
  apply_fn = _victim_apply(cfg, res, ds.num_classes)
  obs = inversion.observe(apply_fn, params, images, labels, key=key,
                          defence=defence)
  return obs, images


class _Clock:
  """Callback recording (step, time) to get steady-state seconds per step."""

  def __init__(self):
    self.marks = []

  def __call__(self, restart, step, loss):
    del restart, loss
    self.marks.append((step, time.perf_counter()))

  def seconds_per_step(self):
    if len(self.marks) < 2:
      return float("nan")
    (s0, t0), (s1, t1) = self.marks[0], self.marks[-1]
    return (t1 - t0) / max(s1 - s0, 1)


def _run(name, obs, truth, *, log_every, **kwargs):
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  from jaxleak.metrics import psnr  # pylint: disable=g-import-not-at-top
  clock = _Clock()
  r = inversion.run_attack(name, obs, key=0, ground_truth=truth,
                           callback=clock, log_every=log_every, **kwargs)
  sps = clock.seconds_per_step()
  # LPIPS appears when the library's metrics provide it (optional).
  rec = {"psnr": r.metrics["psnr"], "ssim": r.metrics["ssim"],
         "lpips": r.metrics.get("lpips"),
         "wall_time_s": r.wall_time_s, "s_per_step": sps,
         "steps": len(r.loss_history) - (name == "diffusion_finetune"),
         "final_loss": r.final_loss,
         "hyperparams": {k: v for k, v in r.hyperparams.items()
                         if isinstance(v, (int, float, str, bool, type(None)))}}
  snaps = getattr(r, "snapshots", None)
  if snaps is not None:
    rec["curve"] = [{"step": int(s), "seconds": float(s) * sps,
                     "psnr": float(np.mean(psnr(np.clip(im, 0, 1), truth)))}
                    for s, im in zip(r.snapshot_steps, snaps)]
  return rec, r


def _runs(cfg):
  """Every (key, spec) of the study, in the order they run."""
  for res in cfg.resolutions:
    for target in cfg.targets:
      for prior in cfg.priors:
        yield ({"kind": "finetune", "resolution": res, "target": target,
                "prior": prior})
      for frac in cfg.ig_budget_fractions:
        yield ({"kind": "ig", "resolution": res, "target": target,
                "budget_fraction": frac})
  if cfg.defence_resolution:
    for level in cfg.noise_levels:
      yield {"kind": "defence", "resolution": cfg.defence_resolution,
             "target": cfg.defence_target, "defence": "gaussian",
             "level": level}
    for nm in cfg.dp_noise_multipliers:
      yield {"kind": "defence", "resolution": cfg.defence_resolution,
             "target": cfg.defence_target, "defence": "dp_clip",
             "level": nm}


def _key(spec):
  return json.dumps(spec, sort_keys=True)


def _execute(cfg, spec, done, workdir):
  from jaxleak import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  res, target = spec["resolution"], spec["target"]
  ft = dict(cfg.finetune)
  ft["steps"] = dict(cfg.get("finetune_steps", ())).get(res, ft["steps"])
  if spec["kind"] == "finetune":
    obs, truth = _observation(cfg, res, target)
    rec, r = _run("diffusion_finetune", obs, truth, prior=spec["prior"],
                  log_every=cfg.log_every, **ft)
    stem = f"{res}px_{target}_{spec['prior']}"
    metrics_lib.save_image_grid(
        np.concatenate([r.snapshots[:, 0], truth]),
        os.path.join(workdir, f"strip_{stem}.png"),
        nrow=len(r.snapshot_steps) + 1,
        titles=[f"{spec['prior']} prior, step 0"]
        + [f"step {s}" for s in r.snapshot_steps[1:]] + ["target"])
    return rec
  if spec["kind"] == "ig":
    ref = done.get(_key({"kind": "finetune", "resolution": res,
                         "target": target, "prior": cfg.priors[0]}))
    obs, truth = _observation(cfg, res, target)
    # Seconds per IG step on this target (second call: compiled program).
    _run("inverting_gradients", obs, truth, steps=cfg.ig_calibration_steps,
         log_every=5)
    cal, _ = _run("inverting_gradients", obs, truth,
                  steps=cfg.ig_calibration_steps, log_every=5)
    budget = ref["s_per_step"] * ref["steps"] * spec["budget_fraction"]
    steps = max(10, int(budget / cal["s_per_step"]))
    rec, r = _run("inverting_gradients", obs, truth, steps=steps,
                  log_every=max(1, steps // 20))
    rec.update(budget_s=budget, ig_calibration_s_per_step=cal["s_per_step"])
    if spec["budget_fraction"] == 1.0:
      metrics_lib.save_image_grid(
          np.concatenate([r.images, truth]),
          os.path.join(workdir, f"ig_{res}px_{target}.png"), nrow=2,
          titles=[f"IG {steps} steps", "target"])
    return rec
  # Defences on one target.
  clean = done.get(_key({"kind": "finetune", "resolution": res,
                         "target": target, "prior": cfg.priors[0]}))
  if spec["defence"] == "gaussian" and spec["level"] == 0 and clean:
    # Noise of std 0 leaves the observation unchanged: the clean run.
    return {k: v for k, v in clean.items()
            if k not in ("spec", "load_average", "elapsed_s")} | {
                "reused": "clean finetune record"}
  if spec["defence"] == "gaussian":
    defence = inversion.GaussianNoise(std=spec["level"], relative=True)
  else:
    defence = inversion.DPClip(l2_norm_clip=cfg.dp_clip,
                               noise_multiplier=spec["level"])
  obs, truth = _observation(cfg, res, target, defence)
  rec, _ = _run("diffusion_finetune", obs, truth, prior=cfg.priors[0],
                log_every=cfg.log_every, **ft)
  return rec


def _write_report(cfg, workdir, records):
  # pylint: disable=g-import-not-at-top
  from jaxleak import metrics as metrics_lib
  from jaxleak import report
  # pylint: enable=g-import-not-at-top
  by = {_key(r["spec"]): r for r in records}
  rows = []
  for res in cfg.resolutions:
    for target in cfg.targets:
      row = {"resolution": res, "target": target}
      for prior in cfg.priors:
        r = by.get(_key({"kind": "finetune", "resolution": res,
                         "target": target, "prior": prior}))
        if r:
          row[f"ft[{prior}] PSNR"] = round(r["psnr"], 2)
          row[f"ft[{prior}] SSIM"] = round(r["ssim"], 3)
          row[f"ft[{prior}] s"] = round(r["s_per_step"] * r["steps"], 1)
      r = by.get(_key({"kind": "ig", "resolution": res, "target": target,
                       "budget_fraction": 1.0}))
      if r:
        row["IG PSNR"] = round(r["psnr"], 2)
        row["IG SSIM"] = round(r["ssim"], 3)
        row["IG steps"] = r["steps"]
        row["IG s"] = round(r["s_per_step"] * r["steps"], 1)
      rows.append(row)
  defence_rows = [
      {"defence": r["spec"]["defence"], "level": r["spec"]["level"],
       "PSNR": round(r["psnr"], 2), "SSIM": round(r["ssim"], 3)}
      for r in records if r["spec"]["kind"] == "defence"]
  # One figure per resolution; colour = target, solid = fine-tuning (its
  # snapshots), dashed with markers = IG at each budget fraction.
  figures = {}
  for res in cfg.resolutions:
    curves, styles = {}, {}
    for i, target in enumerate(cfg.targets):
      colour = f"C{i % 10}"
      r = by.get(_key({"kind": "finetune", "resolution": res,
                       "target": target, "prior": cfg.priors[0]}))
      if r and r.get("curve"):
        name = f"ft[{cfg.priors[0]}] {target}"
        curves[name] = ([p["seconds"] for p in r["curve"]],
                        [p["psnr"] for p in r["curve"]])
        styles[name] = f"{colour}-"
      pts = sorted(
          (q["s_per_step"] * q["steps"], q["psnr"]) for q in records
          if q["spec"]["kind"] == "ig" and q["spec"]["resolution"] == res
          and q["spec"]["target"] == target)
      if pts:
        name = f"IG {target}"
        curves[name] = ([p[0] for p in pts], [p[1] for p in pts])
        styles[name] = f"{colour}--o"
    if curves:
      figures[f"PSNR vs steady-state seconds, {res} px"] = (
          metrics_lib.save_curves(
              curves, os.path.join(workdir, f"psnr_vs_time_{res}px.png"),
              xlabel="steady-state seconds", ylabel="PSNR (dB)",
              title=f"diffusion_finetune vs Inverting Gradients, {res} px",
              styles=styles))
  for f in sorted(os.listdir(workdir)):
    if f.startswith(("strip_", "ig_")) and f.endswith(".png"):
      figures[f[:-4]] = os.path.join(workdir, f)
  report.write_report(
      workdir, cfg.title, summary={"records": len(records)},
      tables={"Resolution table": rows, "Defences": defence_rows},
      figures=figures, config=cfg.to_dict(), notes=cfg.description)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    for title, table in (("Resolution table", rows),
                         ("Defences", defence_rows)):
      if not table:
        continue
      cols = list(dict.fromkeys(k for t in table for k in t))
      f.write(f"## {title}\n\n| " + " | ".join(cols) + " |\n|"
              + "---|" * len(cols) + "\n")
      f.writelines("| " + " | ".join(str(t.get(c, "")) for c in cols)
                   + " |\n" for t in table)
      f.write("\n")


def main(argv):
  del argv
  cfg = _CONFIG.value
  workdir = launch.study_workdir(_WORKDIR.value)
  if cfg.get("compilation_cache_dir"):
    # Persistent XLA cache: a restarted (resumed) run skips recompiling.
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_compilation_cache_dir", cfg.compilation_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "results.jsonl")
  records = report.read_jsonl(path) if os.path.exists(path) else []
  done = {_key(r["spec"]): r for r in records}
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  options = inversion.FAST_COMPILE if cfg.get("fast_compile") else None
  if not _REPORT_ONLY.value:
    with inversion.compiler_options(options):
      _run_all(cfg, workdir, path, records, done)
  _write_report(cfg, workdir, records)
  _log(f"wrote {workdir}/report.md, results.md")


def _run_all(cfg, workdir, path, records, done):
  """Runs every record not in `done`, appending each to results.jsonl."""
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  for spec in _runs(cfg):
    if _key(spec) in done:
      continue
    _log(f"running {spec}")
    t0 = time.perf_counter()
    rec = _execute(cfg, spec, done, workdir)
    rec = {"spec": spec, **rec, "load_average": os.getloadavg()[0],
           "elapsed_s": time.perf_counter() - t0}
    report.append_jsonl(path, rec)
    records.append(rec)
    done[_key(spec)] = rec
    _log(f"  PSNR {rec['psnr']:.2f} dB SSIM {rec['ssim']:.3f} "
         f"({rec['elapsed_s']:.0f} s)")
    _write_report(cfg, workdir, records)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  launch.run(main)
