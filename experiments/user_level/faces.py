"""User-level inversion on faces: lfw_faces users, the faces prior.

Thin launcher over `jaxleak.attacks.inversion.user_level_diffusion`,
`user_level.prior_representative` and `user_metrics.score_users` (see
``configs/faces.py`` for the set-up). Per user it stores the representative
under ``reps/``, appends a record to ``results.jsonl`` (a rerun skips what
is done) and writes ``users/<method>_user<i>.png`` (the user's batch with
its representative, the paper's Figure 1 layout); the summary goes to
``metrics.json``, ``report.md`` and ``figures/representatives.png``.

  nice -n 19 python experiments/user_level/faces.py \\
      --config experiments/user_level/configs/faces.py \\
      --workdir experiments/user_level/results/faces
"""

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


def _records(workdir):
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "results.jsonl")
  return report.read_jsonl(path) if os.path.exists(path) else []


def _mirrored(ds, name):
  from jaxleak import data  # pylint: disable=g-import-not-at-top
  return data.Dataset(np.concatenate([ds.images, ds.images[:, :, ::-1]]),
                      np.concatenate([ds.labels, ds.labels]), ds.class_names,
                      name)


def _train(name, apply_fn, params, train, test, cfg, seed, workdir):
  from jaxleak import training  # pylint: disable=g-import-not-at-top
  config = training.TrainConfig(epochs=cfg.train_epochs, batch_size=16,
                                learning_rate=2e-3, seed=seed,
                                checkpoint_every=1000)
  res = training.train_classifier(
      apply_fn, params, train, test, config, workdir=workdir, progress=False,
      run_info={"role": name, "dataset": train.name})
  return res.params


def setup_faces(cfg, workdir):
  """Users, and the victim and judge trained on the crops left over."""
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  from jaxleak import training  # pylint: disable=g-import-not-at-top
  from jaxleak.cli import user_level as ul  # pylint: disable=g-import-not-at-top
  full = data.load(cfg.dataset, "all")
  users = data.partition_users(full, cfg.users, "label",
                               batch_size=cfg.batch_size, seed=cfg.seed)
  used = {im.tobytes() for u in users for im in np.asarray(u.images)}
  rest_idx = [i for i, im in enumerate(np.asarray(full.images))
              if im.tobytes() not in used]
  rest = _mirrored(full.subset(rest_idx), f"{cfg.dataset}/left-over")
  train_faces = {im.tobytes() for im, y in zip(
      np.asarray(data.load(cfg.dataset, "train").images),
      data.load(cfg.dataset, "train").labels) if y == 1}
  pool = data.Dataset(np.concatenate([u.images for u in users]),
                      np.concatenate([u.labels for u in users]),
                      full.class_names, f"{cfg.dataset}/users")
  v_apply, v_params = models.create(cfg.victim, full.num_classes,
                                    full.image_shape,
                                    jax.random.key(cfg.seed))
  v_params = _train("victim", v_apply, v_params, rest, pool, cfg, cfg.seed,
                    os.path.join(workdir, "models", "victim"))
  j_apply, j_params = models.create("mlp", full.num_classes, full.image_shape,
                                    jax.random.key(cfg.seed + 1),
                                    hidden=(256,))
  j_params = _train("judge", j_apply, j_params, rest, pool, cfg,
                    cfg.seed + 1, os.path.join(workdir, "models", "judge"))
  info = {
      "victim_accuracy_on_users": training.evaluate(v_apply, v_params,
                                                    pool)["accuracy"],
      "judge_accuracy_on_users": training.evaluate(j_apply, j_params,
                                                   pool)["accuracy"],
      "left_over_images": len(rest_idx),
      "users": len(users), "face_users": sum(ul.attribute(u) == 1
                                             for u in users),
      "face_user_images_in_prior_training_set": int(sum(
          im.tobytes() in train_faces for u in users
          for im in np.asarray(u.images)))}
  setup = ul.Setup(v_apply, v_params, info["victim_accuracy_on_users"],
                   j_apply, j_params, info["judge_accuracy_on_users"], pool,
                   len(rest))
  return setup, users, info


def _rep_path(workdir, method, user):
  return os.path.join(workdir, "reps", method, f"user{user:02d}.npy")


def run(cfg, workdir):
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks.inversion import user_level  # pylint: disable=g-import-not-at-top
  from jaxleak.cli import user_level as ul  # pylint: disable=g-import-not-at-top
  setup, users, info = setup_faces(cfg, workdir)
  _log(f"setup {info}")
  report.append_jsonl(os.path.join(workdir, "results.jsonl"),
                      {"kind": "setup", **info})
  prior = diffusion.load_prior(cfg.prior)
  done = {(r["method"], r["user"]) for r in _records(workdir)
          if r.get("kind") == "user"}
  for i, user in enumerate(users):
    obs = ul.observe_user(setup, user, key=cfg.seed * 1000 + i)
    for method in cfg.methods:
      if (method, i) in done:
        continue
      key = cfg.seed * 100003 + i
      t0 = time.perf_counter()
      extra = {}
      if method == "user_level_diffusion":
        res = inversion.user_level_diffusion(obs, key=key, prior=prior,
                                             **dict(cfg.attack))
        rep = res.images
        extra = {"majority_label": res.majority_label,
                 "final_loss": res.final_loss}
      elif method == "prior_only":
        import jax  # pylint: disable=g-import-not-at-top
        rep = user_level.prior_representative(
            prior, jax.random.key(key), obs.image_shape,
            steps=cfg.attack.steps, num=cfg.attack.num_representatives)
      else:
        raise ValueError(f"unknown method {method!r}")
      wall = time.perf_counter() - t0
      rep = np.asarray(rep, np.float32)
      path = _rep_path(workdir, method, i)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      np.save(path, rep)
      ul.save_user_figure(
          np.asarray(user.images), rep,
          os.path.join(workdir, "users", f"{method}_user{i:02d}.png"),
          title=f"{method}, user {i}: "
                f"{user.class_names[ul.attribute(user)]}")
      report.append_jsonl(os.path.join(workdir, "results.jsonl"), {
          "kind": "user", "method": method, "user": i,
          "attribute": ul.attribute(user), "wall_s": wall, **extra})
      _log(f"{method} user {i}: {wall:.1f} s")
  return setup, users


def summarise(cfg, workdir, setup=None, users=None):
  from jaxleak import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks.inversion import user_metrics  # pylint: disable=g-import-not-at-top
  from jaxleak.cli import user_level as ul  # pylint: disable=g-import-not-at-top
  if setup is None:
    setup, users, _ = setup_faces(cfg, workdir)
  recs = [r for r in _records(workdir) if r.get("kind") == "user"]
  setup_rec = [r for r in _records(workdir) if r.get("kind") == "setup"]
  rows, figures = [], {}
  for method in cfg.methods:
    mine = {r["user"]: r for r in recs if r["method"] == method}
    have = [i for i in range(len(users)) if i in mine]
    if len(have) < 2:
      continue
    reps = [np.load(_rep_path(workdir, method, i)) for i in have]
    batches = [np.asarray(users[i].images) for i in have]
    attrs = [ul.attribute(users[i]) for i in have]
    row = {"method": method, "users": len(have)}
    for group, keep in (("all users", have),
                        ("face users", [i for i in have
                                        if ul.attribute(users[i]) == 1])):
      sel = [have.index(i) for i in keep]
      if len(sel) < 2:
        continue
      s = user_metrics.score_users(
          setup.judge_apply, setup.judge_params, [reps[j] for j in sel],
          [batches[j] for j in sel], [attrs[j] for j in sel])
      tag = "" if group == "all users" else "face_users_"
      row.update({
          f"{tag}attribute_accuracy": round(s["attribute_accuracy"], 4),
          f"{tag}representative_similarity": round(
              s["representative_similarity"], 4),
          f"{tag}identification_rate": round(s["identification_rate"], 4),
          f"{tag}batch_pairwise_mean": round(
              s["batch_pairwise_similarity"]["batch_pairwise_mean"], 4)})
      if not tag:
        row["predicted"] = str(s["predicted"])
        row["attributes"] = str(attrs)
    row["s_per_user"] = round(float(np.mean([mine[i]["wall_s"]
                                             for i in have])), 2)
    rows.append(row)
    k = len(have)
    cells = np.concatenate([np.stack([r[0] for r in reps]),
                            np.stack([b[0] for b in batches]),
                            np.stack([b[1] for b in batches]),
                            np.stack([b[2] for b in batches])])
    path = metrics_lib.save_image_grid(
        cells, os.path.join(workdir, "figures", f"{method}.png"), nrow=k,
        titles=[users[i].class_names[a] for i, a in zip(have, attrs)]
        + [""] * (3 * k),
        row_labels=["representative", "batch", "batch", "batch"])
    figures[method] = os.path.relpath(path, workdir)
  if not rows:
    _log("nothing to summarise yet")
    return
  report.write_json(os.path.join(workdir, "metrics.json"),
                    {"rows": rows,
                     "setup": setup_rec[-1] if setup_rec else None,
                     "config": cfg.to_dict()})
  report.write_report(
      workdir, "User-level inversion on faces (lfw_faces, faces prior, "
      f"{cfg.victim} victim, B = {cfg.batch_size})",
      summary=setup_rec[-1] if setup_rec else {}, tables={"Results": rows},
      figures=figures, config=cfg.to_dict(),
      notes=("Attribute = face (1) or non-face (0). Labels hidden. The "
             "judge (MLP) and the victim are trained on the crops no user "
             "holds. identification_rate: the representative's judge "
             "embedding is closer to its own batch than to any other "
             "user's; face_users_* restrict the scoring to the face users."))
  _log(f"wrote {workdir}/report.md, metrics.json")


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
