"""User-level gradient inversion study: attack vs baselines, DP.

Thin launcher over `jaxleak.attacks.inversion.user_level_diffusion`,
`inverting_gradients` and `user_metrics`, with the set-up of
`jaxleak.cli.user_level` (victim and judge trained on data disjoint from the
users). For every setting (batch size, user mode, DP noise multiplier),
user and method it stores the representative image(s) under
``reps/`` and appends a record to ``results.jsonl``; a rerun of the same
command skips what is done (resumable). Methods:

* ``user_level_diffusion``: the attack (config ``attack``);
* ``ig_batch_mean``: Inverting Gradients reconstructing the whole batch,
  then the mean of the B reconstructions;
* ``ig_single``: Inverting Gradients optimising one image against the batch
  gradient (an observation of batch size 1, label recovered), no prior;
* ``prior_only``: the prior's unguided DDIM chain from random noise;
* ``prior_only_cond``: the same chain conditioned on the recovered
  majority label (with the conditional variant's guidance scale), no
  gradient guidance: the baseline of ``user_level_diffusion_cond``;
* ``user_level_diffusion_cond``: the attack with the class-conditional prior
  conditioned on the recovered majority label (a variant, not the paper's
  unconditional set-up: the label alone then steers the prior).

Both IG baselines get the attack's steady-state seconds per user: a
calibration record holds the attack's (``budget_method``) CPU seconds per
user and IG's CPU seconds per step at each batch size (compiled programs
reused; CPU time of this process, because on a shared CPU wall time mostly
measures the other jobs), and IG runs ``budget / s_per_step`` steps.

  nice -n 19 python experiments/user_level/run.py \\
      --config experiments/user_level/configs/default.py \\
      --workdir experiments/user_level/results/default
  python experiments/user_level/run.py --config ... --workdir ... --report_only
"""

import csv
import dataclasses
import os
import time

from absl import flags
import numpy as np

from jaxleak import launch

_CONFIG, _WORKDIR = launch.define_config_flags()
_REPORT_ONLY = flags.DEFINE_bool("report_only", False,
                                 "only summarise results.jsonl")

METRICS = ("attribute_accuracy", "representative_similarity",
           "identification_rate")


def _log(msg):
  print(time.strftime("%H:%M:%S"), msg, flush=True)


def _records(workdir):
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "results.jsonl")
  return report.read_jsonl(path) if os.path.exists(path) else []


def _append(workdir, record):
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  report.append_jsonl(os.path.join(workdir, "results.jsonl"), record)


def _settings(cfg):
  """(name, batch_size, mode, noise_multiplier or None, users, methods)."""
  out = [(f"B{b}_{m}", b, m, None, cfg.users, tuple(cfg.methods))
         for m in cfg.modes for b in cfg.batch_sizes]
  out += [(f"dp{nm:g}_B{cfg.dp_batch_size}_{cfg.dp_mode}", cfg.dp_batch_size,
           cfg.dp_mode, float(nm), cfg.dp_users, tuple(cfg.dp_methods))
          for nm in cfg.dp_noise_multipliers]
  return out


def _models_dir(cfg, workdir):
  """Victim and judge checkpoints: ``cfg.models_dir`` (shared by the
  studies; relative to the repository root) or ``<workdir>/models``."""
  if cfg.get("models_dir"):
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), cfg.models_dir)
  return os.path.join(workdir, "models")


def _rep_path(workdir, setting, method, user):
  return os.path.join(workdir, "reps", setting, method, f"user{user:02d}.npy")


def _single_image_observation(obs):
  """The batch gradient as if it came from one image, labelled with the
  majority label the attack recovers (iDLG's one-image rule does not hold
  for an averaged gradient)."""
  from jaxleak.attacks.inversion import user_level  # pylint: disable=g-import-not-at-top
  y = user_level.majority_label(obs)[0]
  return dataclasses.replace(obs, batch_size=1, labels=np.asarray([y]),
                             bn_stats=None)


def _run_method(method, obs, prior, cfg, key, steps_ig):
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks.inversion import user_level  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  if method.startswith("user_level_diffusion"):
    kw = dict(cfg.attack)
    if method == "user_level_diffusion_cond":
      kw["class_conditional"] = True  # The prior conditioned on ȳ.
      kw.update(dict(cfg.get("attack_cond", {})))
    res = inversion.user_level_diffusion(obs, key=key, prior=prior, **kw)
    rep, extra = res.images, {"majority_label": res.majority_label,
                              "final_loss": res.final_loss}
  elif method == "ig_batch_mean":
    res = inversion.inverting_gradients(obs, key=key, steps=steps_ig,
                                        **dict(cfg.ig))
    rep = res.images.mean(0, keepdims=True)
    extra = {"steps": steps_ig, "final_loss": res.final_loss}
  elif method == "ig_single":
    res = inversion.inverting_gradients(_single_image_observation(obs),
                                        key=key, steps=steps_ig,
                                        **dict(cfg.ig))
    rep = res.images
    extra = {"steps": steps_ig, "final_loss": res.final_loss,
             "majority_label": int(res.labels[0])}
  elif method == "prior_only":
    rep = user_level.prior_representative(
        prior, key, obs.image_shape, steps=cfg.attack.steps,
        num=cfg.attack.num_representatives)
    extra = {}
  elif method == "prior_only_cond":
    # The conditional variant's chain, conditioned on the recovered ȳ,
    # with no gradient guidance: what the label alone gives.
    y = user_level.majority_label(obs)[0]
    rep = user_level.prior_representative(
        prior, key, obs.image_shape, steps=cfg.attack.steps,
        num=cfg.attack.num_representatives, label=y,
        guidance_scale=cfg.get("attack_cond", {}).get("guidance_scale", 1.0))
    extra = {"majority_label": y}
  else:
    raise ValueError(f"unknown method {method!r}")
  return np.asarray(rep, np.float32), time.perf_counter() - t0, extra


def _calibrate(workdir, cfg, setup, prior, users_by_b):
  """Steady-state attack seconds per user and IG seconds per step."""
  from jaxleak.cli import user_level as ul  # pylint: disable=g-import-not-at-top
  recs = [r for r in _records(workdir) if r.get("kind") == "calibration"]
  if recs:
    return recs[-1]
  rec = {"kind": "calibration"}
  b0 = min(users_by_b)
  obs = ul.observe_user(setup, users_by_b[b0][0], key=0)
  if cfg.get("budget_s"):
    # A budget measured elsewhere (the attack's steady-state s/user).
    rec["attack_s_per_user"] = float(cfg.budget_s)
    rec["budget_from_config"] = True
  else:
    # CPU seconds of this process, not wall time: on a CPU shared with
    # other jobs the wall time mostly measures their load, which changes
    # between the calibration runs (CPU time = wall time on an idle box).
    method = cfg.get("budget_method", "user_level_diffusion")
    for _ in range(2):  # The second run reuses the compiled step.
      c0 = time.process_time()
      _, wall, _ = _run_method(method, obs, prior, cfg, 0, 0)
    rec["attack_s_per_user"] = time.process_time() - c0
    rec["attack_wall_s_per_user"] = wall
    rec["budget_method"] = method
  probe = 20
  for b, users in sorted(users_by_b.items()):
    obs = ul.observe_user(setup, users[0], key=0)
    for name in ("ig_batch_mean", "ig_single"):
      if name not in cfg.methods or (name == "ig_single" and b != b0):
        continue
      for _ in range(2):
        c0 = time.process_time()
        _run_method(name, obs, prior, cfg, 0, probe)
      rec[f"{name}_B{b}_s_per_step" if name == "ig_batch_mean"
          else "ig_single_s_per_step"] = (time.process_time() - c0) / probe
  _log(f"calibration {rec}")
  _append(workdir, rec)
  return rec


def _ig_steps(calib, method, b):
  key = (f"ig_batch_mean_B{b}_s_per_step" if method == "ig_batch_mean"
         else "ig_single_s_per_step")
  return max(1, int(calib["attack_s_per_user"] / calib[key]))


def run(cfg, workdir):
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  from jaxleak.cli import user_level as ul  # pylint: disable=g-import-not-at-top
  setup = ul.prepare(cfg.dataset, workdir=_models_dir(cfg, workdir),
                     victim_model=cfg.victim, seed=cfg.seed, progress=False)
  _log(f"victim accuracy on the user pool {setup.victim_accuracy:.3f}, "
       f"judge {setup.judge_accuracy:.3f}")
  _append(workdir, {"kind": "setup", "victim_accuracy": setup.victim_accuracy,
                    "judge_accuracy": setup.judge_accuracy,
                    "pool_size": len(setup.pool),
                    "judge_train_size": setup.judge_train_size})
  prior = diffusion.load_prior(cfg.prior)
  settings = _settings(cfg)
  users = {name: ul.make_users(setup.pool, n, b, mode, cfg.share, cfg.seed)
           for name, b, mode, _, n, _ in settings}
  by_b = {b: users[name] for name, b, _, nm, _, _ in settings if nm is None}
  calib = None
  if any(m.startswith("ig_") for *_, methods in settings for m in methods):
    calib = _calibrate(workdir, cfg, setup, prior, by_b)
  done = {(r["setting"], r["method"], r["user"]) for r in _records(workdir)
          if r.get("kind") == "user"}
  # User-major order (user 0 of every setting, then user 1, ...), so that a
  # run stopped early still covers every setting with the same users.
  order = [(i, st) for i in range(max(n for *_, n, _ in settings))
           for st in settings if i < st[4]]
  for i, (name, b, mode, nm, _, methods) in order:
    user = users[name][i]
    defence = (None if nm is None else inversion.DPClip(
        l2_norm_clip=cfg.dp_clip, noise_multiplier=nm))
    todo = [m for m in methods if (name, m, i) not in done]
    if not todo:
      continue
    obs = ul.observe_user(setup, user, key=cfg.seed * 1000 + i,
                          defence=defence)
    for method in todo:
      steps_ig = _ig_steps(calib, method, b) if method.startswith(
          "ig_") else 0
      c0 = time.process_time()
      rep, wall, extra = _run_method(method, obs, prior, cfg,
                                     cfg.seed * 100003 + i, steps_ig)
      extra["cpu_s"] = time.process_time() - c0
      path = _rep_path(workdir, name, method, i)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      np.save(path, rep)
      _append(workdir, {"kind": "user", "setting": name, "method": method,
                        "user": i, "batch_size": b, "mode": mode,
                        "noise_multiplier": nm,
                        "attribute": ul.attribute(user), "wall_s": wall,
                        **extra})
      _log(f"{name} {method} user {i}: {wall:.1f} s")
  return setup, users


def summarise(cfg, workdir, setup=None, users=None):
  """Scores every complete (setting, method) and writes the tables."""
  from jaxleak import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks.inversion import user_metrics  # pylint: disable=g-import-not-at-top
  from jaxleak.cli import user_level as ul  # pylint: disable=g-import-not-at-top
  if setup is None:
    setup = ul.prepare(cfg.dataset, workdir=_models_dir(cfg, workdir),
                       victim_model=cfg.victim, seed=cfg.seed, progress=False)
    users = {name: ul.make_users(setup.pool, n, b, mode, cfg.share, cfg.seed)
             for name, b, mode, _, n, _ in _settings(cfg)}
  recs = [r for r in _records(workdir) if r.get("kind") == "user"]
  calib = [r for r in _records(workdir) if r.get("kind") == "calibration"]
  rows = []
  for name, b, mode, nm, n, methods in _settings(cfg):
    for method in methods:
      mine = {r["user"]: r for r in recs
              if r["setting"] == name and r["method"] == method}
      have = [i for i in range(n) if i in mine
              and os.path.exists(_rep_path(workdir, name, method, i))]
      if len(have) < 2:
        continue
      reps = [np.load(_rep_path(workdir, name, method, i)) for i in have]
      batches = [np.asarray(users[name][i].images) for i in have]
      attrs = [ul.attribute(users[name][i]) for i in have]
      s = user_metrics.score_users(setup.judge_apply, setup.judge_params,
                                   reps, batches, attrs)
      pair = s["batch_pairwise_similarity"]
      rows.append({
          "setting": name, "batch_size": b, "mode": mode,
          "noise_multiplier": "" if nm is None else nm, "method": method,
          "users": len(have),
          **{m: round(s[m], 4) for m in METRICS},
          "batch_pairwise_mean": round(pair["batch_pairwise_mean"], 4),
          "batch_pairwise_range": (f"[{pair['batch_pairwise_min']:.3f}, "
                                   f"{pair['batch_pairwise_max']:.3f}]"),
          "s_per_user": round(float(np.mean([mine[i]["wall_s"]
                                             for i in have])), 2),
          "cpu_s_per_user": round(float(np.mean([mine[i].get("cpu_s", np.nan)
                                                 for i in have])), 2),
          "ig_steps": mine[have[0]].get("steps", "")})
      if nm is None:
        k = min(len(have), 10)
        cells = np.concatenate([np.concatenate([r[:1] for r in reps[:k]]),
                                np.stack([x[0] for x in batches[:k]]),
                                np.stack([x[1] for x in batches[:k]])])
        metrics_lib.save_image_grid(
            cells, os.path.join(workdir, "figures", f"{name}_{method}.png"),
            nrow=k, titles=[f"y={a}" for a in attrs[:k]] + [""] * (2 * k),
            row_labels=["representative", "batch", "batch"])
  if not rows:
    _log("nothing to summarise yet")
    return
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  setup_rec = [r for r in _records(workdir) if r.get("kind") == "setup"]
  report.write_json(os.path.join(workdir, "metrics.json"),
                    {"rows": rows, "calibration": calib[-1] if calib else None,
                     "setup": setup_rec[-1] if setup_rec else None,
                     "config": cfg.to_dict()})
  report.write_report(
      workdir, "User-level gradient inversion with a diffusion prior "
      f"({cfg.dataset}, {cfg.victim} victim)",
      summary={"victim_accuracy_on_user_pool": setup.victim_accuracy,
               "judge_accuracy_on_user_pool": setup.judge_accuracy,
               **({"calibration": calib[-1]} if calib else {})},
      tables={"Results": rows},
      figures={f"{r['setting']} {r['method']}": os.path.join(
          "figures", f"{r['setting']}_{r['method']}.png") for r in rows
          if r["noise_multiplier"] == ""},
      config=cfg.to_dict(),
      notes=("Labels hidden (majority label recovered from the gradient). "
             "IG baselines run for the attack's calibrated seconds per user "
             "(ig_steps). attribute_accuracy: the judge's prediction from "
             "the representative equals the user's majority label; "
             "representative_similarity: mean cosine similarity of judge "
             "embeddings between representative and batch images, next to "
             "the batch's own pairwise mean and range; identification_rate: "
             "representative closest to its own batch among all users."))
  _log(f"wrote {workdir}/report.md, results.csv, metrics.json")


def main(argv):
  del argv
  cfg = _CONFIG.value
  workdir = launch.study_workdir(_WORKDIR.value)
  if _REPORT_ONLY.value:
    summarise(cfg, workdir)
    return
  setup, users = run(cfg, workdir)
  summarise(cfg, workdir, setup, users)


if __name__ == "__main__":
  launch.run(main)
