"""The end-to-end privacy audit: train, attack, measure, unlearn, report.

`run_audit` composes what jaxleak already has and adds no attack of its own:

1. **models**: the target trained non-privately (`jaxleak.training`) and
   with DP at several epsilons (`dp_psasc` and DP-SGD), or a user's
   checkpoint from `jaxleak train` in place of the non-private one;
2. **reconstruction**: Inverting Gradients and the diffusion-guided DSG
   attack on what each training regime releases at its first step (the
   gradient of a private example at the initial parameters, where inversion
   is strongest; DP runs release the weighted gradient plus noise at their
   noise multiplier); I²F ranks training images by predicted risk there;
3. **membership**: loss-threshold and offline-LiRA attacks on every model
   (training members against held-out non-members);
4. **empirical epsilon**: a gradient-canary audit of each DP model's
   mechanism (`jaxleak.auditing`, when installed) next to the accountant;
5. **unlearning**: Mini-Unlearning of a share of the training set against
   retraining, judged by the forget-set membership attack.

Every stage writes ``stages/<name>.json`` (and long stages a JSONL of their
finished units), and models resume from their own checkpoints, so an
interrupted audit resumes where it stopped. Results are pure data; the
report is written from them by `jaxleak.privacy_audit.report`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import time
from typing import Any

import numpy as np

from jaxleak import report as report_lib
from jaxleak._src import validate

__all__ = ("AuditConfig", "STAGES", "run_audit", "stage_path")

# Shipped diffusion priors for the datasets they were trained on.
PRIORS = {"mnist_subset": "mnist"}


@dataclasses.dataclass(frozen=True)
class AuditConfig:
  """What the audit trains and attacks (all JSON-serialisable).

  `quick()` and `full()` are the two presets of `jaxleak audit`; every field
  can be changed on its own.
  """
  dataset: str = "mnist_subset"
  model: str = "cnn_mnist"
  data_dir: str | None = None
  seed: int = 0
  checkpoint: str | None = None  # a `jaxleak train` workdir to audit
  # 1. models
  epochs: int = 20
  batch_size: int = 64
  learning_rate: float = 2e-3
  dp_rules: tuple[str, ...] = ("psasc", "clip")
  dp_epsilons: tuple[float, ...] = (1.0, 2.0, 8.0)
  dp_delta: float = 1e-5
  dp_epochs: float = 15.0
  dp_batch_size: int = 256
  dp_learning_rate: float = 1.0  # the DP study's x0.5 step for both rules
  dp_clip: float = 1.0
  # 2. reconstruction
  attack_examples: int = 3
  ig_steps: int = 1000
  dsg_steps: int = 100
  attack_dp_models: str = "all"  # "all" or "weakest" (largest epsilon)
  i2f_images: int = 32
  i2f_noise_var: float = 1e-3
  i2f_eps: float = 1e-3
  # 3. membership
  mia_members: int = 1000
  lira_shadows: int = 16
  shadow_epochs: int = 10
  # 4. empirical epsilon
  canaries: int = 1000
  # 5. unlearning
  unlearn_ratio: float = 0.1
  unlearn_epochs: int = 20

  @classmethod
  def quick(cls, **overrides) -> AuditConfig:
    base = dict(epochs=4, dp_epsilons=(2.0, 8.0), dp_epochs=4.0,
                attack_examples=1, ig_steps=300, dsg_steps=50,
                attack_dp_models="weakest", i2f_images=16, mia_members=500,
                lira_shadows=4, shadow_epochs=4, canaries=500,
                unlearn_epochs=5)
    return cls(**{**base, **overrides})

  @classmethod
  def full(cls, **overrides) -> AuditConfig:
    return cls(**overrides)

  def validate(self) -> None:
    fn = "AuditConfig"
    for name in ("epochs", "batch_size", "dp_batch_size", "attack_examples",
                 "ig_steps", "dsg_steps", "i2f_images", "mia_members",
                 "lira_shadows", "shadow_epochs", "canaries",
                 "unlearn_epochs"):
      validate.check_positive(getattr(self, name), name, fn=fn)
    for name in ("learning_rate", "dp_epochs", "dp_learning_rate", "dp_clip",
                 "i2f_noise_var", "i2f_eps"):
      validate.check_positive(getattr(self, name), name, fn=fn)
    validate.check_in_range(self.dp_delta, "dp_delta", 0.0, 1.0, fn=fn,
                            inclusive=(False, False))
    validate.check_in_range(self.unlearn_ratio, "unlearn_ratio", 0.0, 1.0,
                            fn=fn, inclusive=(False, False))
    if not self.dp_epsilons:
      raise ValueError(f"{fn}: argument 'dp_epsilons' is empty")
    for eps in self.dp_epsilons:
      validate.check_positive(eps, "dp_epsilons", fn=fn)
    if self.unlearn_epochs < 2:
      raise ValueError(f"{fn}: argument 'unlearn_epochs' must be >= 2 (the "
                       "unlearning history keeps an epoch-end snapshot), got "
                       f"{self.unlearn_epochs}")
    if self.lira_shadows < 2 or self.lira_shadows % 2:
      raise ValueError(f"{fn}: argument 'lira_shadows' must be an even number "
                       f">= 2 (half of them hold out each example), got "
                       f"{self.lira_shadows}")
    validate.check_choice(self.attack_dp_models, "attack_dp_models",
                          ("all", "weakest"), fn=fn)

  def identity(self) -> str:
    blob = json.dumps(report_lib.to_jsonable(dataclasses.asdict(self)),
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Target:
  """One audited model: its parameters and how it was trained."""
  name: str
  params: Any
  info: dict[str, Any]


@dataclasses.dataclass
class Context:
  config: AuditConfig
  workdir: str
  train: Any
  test: Any
  apply_fn: Callable[..., Any]
  init_params: Any
  progress: bool
  targets: dict[str, Target] = dataclasses.field(default_factory=dict)
  results: dict[str, Any] = dataclasses.field(default_factory=dict)

  def dir(self, *parts: str) -> str:
    """A folder under the workdir (created)."""
    p = os.path.join(self.workdir, *parts)
    os.makedirs(p, exist_ok=True)
    return p

  def file(self, *parts: str) -> str:
    """A file path under the workdir (its folder created)."""
    return os.path.join(self.dir(*parts[:-1]), parts[-1])


def stage_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, "stages", f"{name}.json")


def _bar(ctx: Context, total: int, desc: str):
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, desc=desc, unit="item", leave=False,
                   dynamic_ncols=True, disable=not ctx.progress)


# --------------------------------------------------------------------------
# 1. models


def _dp_name(rule: str, eps: float) -> str:
  return f"dp_{rule}_eps{eps:g}"


def stage_models(ctx: Context) -> dict[str, Any]:
  """Trains (or restores) the non-private model and every DP model."""
  from jaxleak import dp_training  # pylint: disable=g-import-not-at-top
  from jaxleak import sharding  # pylint: disable=g-import-not-at-top
  from jaxleak import training  # pylint: disable=g-import-not-at-top

  cfg = ctx.config
  rows = []
  if cfg.checkpoint:
    params, info = load_trained_checkpoint(cfg.checkpoint, ctx.init_params)
    acc = float(training.evaluate(ctx.apply_fn, params, ctx.test)["accuracy"])
    ctx.targets["non_private"] = Target(
        "non_private", params, {"kind": "non-private (given checkpoint)",
                                "epsilon": math.inf, "test_accuracy": acc,
                                "checkpoint": cfg.checkpoint, **info})
  else:
    tc = training.TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size,
                              learning_rate=cfg.learning_rate, seed=cfg.seed)
    res = training.train_classifier(
        ctx.apply_fn, ctx.init_params, ctx.train, ctx.test, tc,
        workdir=ctx.dir("models", "non_private"),
        progress=ctx.progress,
        run_info={"model": cfg.model, "dataset": cfg.dataset})
    ctx.targets["non_private"] = Target(
        "non_private", res.params,
        {"kind": "non-private", "epsilon": math.inf,
         "test_accuracy": res.test_accuracy, "steps": res.steps})
  mesh = sharding.data_mesh(None)
  for rule in cfg.dp_rules:
    for eps in cfg.dp_epsilons:
      name = _dp_name(rule, eps)
      dc = dp_training.DPTrainConfig(
          rule=rule, l2_norm_clip=cfg.dp_clip, target_epsilon=eps,
          delta=cfg.dp_delta, epochs=cfg.dp_epochs,
          expected_batch_size=cfg.dp_batch_size,
          learning_rate=cfg.dp_learning_rate, momentum=None, seed=cfg.seed)
      res = dp_training.train_dp_classifier(
          ctx.apply_fn, ctx.init_params, ctx.train, ctx.test, dc, mesh=mesh,
          workdir=ctx.dir("models", name), progress=ctx.progress,
          run_info={"model": cfg.model, "dataset": cfg.dataset})
      ctx.targets[name] = Target(name, res.params, {
          "kind": f"DP ({rule})", "rule": rule, "epsilon": float(res.epsilon),
          "target_epsilon": eps, "noise_multiplier": float(
              res.noise_multiplier), "test_accuracy": res.test_accuracy,
          "steps": res.steps, "sample_rate": dc.sample_rate(len(ctx.train)),
          "l2_norm_clip": cfg.dp_clip, "delta": cfg.dp_delta})
  for t in ctx.targets.values():
    rows.append({"model": t.name, **{k: v for k, v in t.info.items()
                                     if not isinstance(v, dict)}})
  return {"models": rows}


def load_trained_checkpoint(path: str, params_like: Any
                            ) -> tuple[Any, dict[str, Any]]:
  """Parameters of a `jaxleak train` workdir (its newest good checkpoint).

  Raises:
    FileNotFoundError: no checkpoint under `path`.
    ValueError: the checkpoint holds another architecture.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import checkpoint  # pylint: disable=g-import-not-at-top
  ckdir = os.path.join(path, "checkpoints")
  if not os.path.isdir(ckdir):
    raise FileNotFoundError(
        f"audit: argument '--checkpoint' {path!r} holds no checkpoints/ "
        "folder (give the --workdir of a `jaxleak train` run)")
  with checkpoint.Checkpointer(ckdir) as ckpt:
    # Restored as plain containers: only the params are needed, whatever
    # optimiser the run used.
    restored = ckpt.restore_latest(None)
  if restored is None or "params" not in restored[0]:
    raise FileNotFoundError(
        f"audit: argument '--checkpoint' {path!r} holds no readable "
        "checkpoint of a `jaxleak train` run")
  state, meta, step = restored
  params = state["params"]
  want = jax.tree.map(np.shape, params_like)
  got = jax.tree.map(np.shape, params)
  if (jax.tree.structure(want) != jax.tree.structure(got)
      or jax.tree.leaves(want) != jax.tree.leaves(got)):
    raise ValueError(
        f"audit: argument '--checkpoint' {path!r} holds another architecture "
        "than --model (or another --dataset's input shape / classes)")
  params = jax.tree.map(lambda a, b: np.asarray(a, np.asarray(b).dtype),
                        params, params_like)
  return params, {"checkpoint_step": int(step),
                  "identity": meta.get("identity", {})}


# --------------------------------------------------------------------------
# 2. reconstruction risk


def _attacked_targets(ctx: Context) -> list[Target]:
  cfg = ctx.config
  out = [ctx.targets["non_private"]]
  for rule in cfg.dp_rules:
    eps_list = (cfg.dp_epsilons if cfg.attack_dp_models == "all"
                else (max(cfg.dp_epsilons),))
    out += [ctx.targets[_dp_name(rule, e)] for e in eps_list]
  return out


def _defence(target: Target):
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  if "rule" not in target.info:
    return None
  return inversion.DPClip(l2_norm_clip=target.info["l2_norm_clip"],
                          noise_multiplier=target.info["noise_multiplier"],
                          rule=target.info["rule"])


def attack_plan(ctx: Context) -> list[dict[str, Any]]:
  cfg = ctx.config
  attacks = [("inverting_gradients", {"steps": cfg.ig_steps})]
  prior = PRIORS.get(cfg.dataset)
  if prior is not None and importlib.util.find_spec("diffusers") is not None:
    attacks.append(("diffusion_dsg", {"steps": cfg.dsg_steps,
                                      "prior": prior}))
  plan = []
  for t in _attacked_targets(ctx):
    for e in range(cfg.attack_examples):
      for name, kwargs in attacks:
        plan.append({"model": t.name, "example": e, "attack": name,
                     "kwargs": kwargs})
  return plan


def private_examples(ctx: Context) -> np.ndarray:
  """Indices of the attacked training examples (one per class, then more)."""
  rng = np.random.default_rng([ctx.config.seed, 11])
  labels = np.asarray(ctx.train.labels)
  picks = []
  for c in rng.permutation(np.unique(labels)):
    picks.append(int(rng.choice(np.flatnonzero(labels == c))))
  return np.asarray(picks[:ctx.config.attack_examples])


def stage_reconstruction(ctx: Context) -> dict[str, Any]:
  """Attacks each model's (defended) gradient of single private examples."""
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top

  plan = attack_plan(ctx)
  log = ctx.file("stages", "reconstruction.jsonl")
  done = {(r["model"], r["example"], r["attack"]): r
          for r in report_lib.read_jsonl(log)}
  idx = private_examples(ctx)
  bar = _bar(ctx, len(plan), "reconstruction")
  bar.update(sum(1 for p in plan if (p["model"], p["example"], p["attack"])
                 in done))
  for p in plan:
    k = (p["model"], p["example"], p["attack"])
    if k in done:
      continue
    target = ctx.targets[p["model"]]
    i = int(idx[p["example"]])
    x = np.asarray(ctx.train.images[i:i + 1])
    y = np.asarray(ctx.train.labels[i:i + 1])
    # The first training step's release: gradient inversion is strongest
    # at initialisation, and every DP step, the first included, is noised.
    obs = inversion.observe(ctx.apply_fn, ctx.init_params, x, y,
                            key=ctx.config.seed + i, defence=_defence(target))
    res = inversion.run_attack(p["attack"], obs, key=ctx.config.seed + i,
                               ground_truth=(x, y), **p["kwargs"])
    arr = ctx.file("stages", "reconstructions",
                   f"{p['model']}__{p['attack']}__{p['example']}.npy")
    np.save(arr, np.asarray(res.images[0], np.float32))
    row = {"model": p["model"], "example": p["example"], "index": i,
           "attack": p["attack"], "psnr": float(res.metrics["psnr"]),
           "ssim": float(res.metrics["ssim"]),
           "label_acc": float(res.metrics.get("label_acc", float("nan"))),
           "wall_time_s": float(res.wall_time_s), "array": arr}
    report_lib.append_jsonl(log, row)
    done[k] = row
    bar.update(1)
    bar.set_postfix(model=p["model"], psnr=f"{row['psnr']:.1f}")
  bar.close()
  rows = [done[(p["model"], p["example"], p["attack"])] for p in plan]
  return {"attacks": rows, "examples": idx.tolist(),
          "summary": _mean_by(rows, ("model", "attack"), ("psnr", "ssim"))}


def _mean_by(rows: Sequence[Mapping[str, Any]], keys: Sequence[str],
             values: Sequence[str]) -> list[dict[str, Any]]:
  groups: dict[tuple, list] = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in keys), []).append(r)
  out = []
  for g, rs in groups.items():
    row = dict(zip(keys, g))
    for v in values:
      row[f"{v}_mean"] = float(np.mean([r[v] for r in rs]))
    row["n"] = len(rs)
    out.append(row)
  return out


def stage_i2f(ctx: Context) -> dict[str, Any]:
  """Ranks training images by I²F-predicted reconstruction error.

  At the initial parameters, like the reconstruction stage: the gradient of
  the first training step.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak.influence import audit  # pylint: disable=g-import-not-at-top
  cfg = ctx.config
  idx = audit.stratified_indices(ctx.train.labels, cfg.i2f_images, cfg.seed)
  std = math.sqrt(cfg.i2f_noise_var)
  d_x = float(np.prod(ctx.train.image_shape))
  rows = []
  bar = _bar(ctx, len(idx), "I²F")
  for pos, i in enumerate(idx):
    i = int(i)
    x = np.asarray(ctx.train.images[i:i + 1])
    y = np.asarray(ctx.train.labels[i:i + 1])
    delta = audit.gaussian_perturbation(
        ctx.init_params, std,
        jax.random.fold_in(jax.random.key(cfg.seed), pos))
    pred = audit.predict(ctx.apply_fn, ctx.init_params, x, y, delta,
                         eps_values=(cfg.i2f_eps,), lower_bound=False)
    rows.append({"index": i, "label": int(y[0]),
                 "predicted_rmse": pred["i2f"] / math.sqrt(d_x)})
    bar.update(1)
  bar.close()
  rows.sort(key=lambda r: r["predicted_rmse"])
  for rank, r in enumerate(rows):
    r["rank"] = rank + 1
  return {"ranking": rows, "noise_var": cfg.i2f_noise_var, "eps": cfg.i2f_eps}


# --------------------------------------------------------------------------
# 3. membership risk


def _mia_split(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
  """Member indices (into train) and non-member indices (into test)."""
  m = min(ctx.config.mia_members, len(ctx.train), len(ctx.test))
  rng = np.random.default_rng([ctx.config.seed, 13])
  members = np.sort(rng.choice(len(ctx.train), m, replace=False))
  nonmembers = np.sort(rng.choice(len(ctx.test), m, replace=False))
  return members, nonmembers


def _shadows(ctx: Context, pool_x, pool_y):
  """Offline-LiRA shadow models on random halves of the pool (checkpointed)."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from jaxleak import checkpoint  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks import membership as mia  # pylint: disable=g-import-not-at-top
  cfg = ctx.config
  s = cfg.lira_shadows
  masks = mia.shadow_in_masks(len(pool_y), s, seed=cfg.seed + 1)
  inits = mia.stack_params([models.create(
      cfg.model, ctx.train.num_classes, ctx.train.image_shape,
      jax.random.key(1000 + k))[1] for k in range(s)])
  ident = {"config": cfg.identity(), "shadows": s}
  with checkpoint.Checkpointer(ctx.dir("stages", "shadows")) as ck:
    found = ck.restore_latest({"params": inits})
    if found is not None and found[1].get("identity") == ident:
      return found[0]["params"], masks
    steps = -(-int(masks[0].sum()) // cfg.batch_size) * cfg.shadow_epochs
    opt = optax.adam(optax.cosine_decay_schedule(cfg.learning_rate, steps))
    params = mia.train_shadow_models(
        ctx.apply_fn, inits, pool_x, pool_y, masks, opt,
        epochs=cfg.shadow_epochs, batch_size=cfg.batch_size, seed=cfg.seed,
        progress=ctx.progress)
    ck.save(0, {"params": params}, {"identity": ident})
  return params, masks


def stage_membership(ctx: Context) -> dict[str, Any]:
  """Loss and offline-LiRA membership inference on every model."""
  from jaxleak.attacks import membership as mia  # pylint: disable=g-import-not-at-top
  members, nonmembers = _mia_split(ctx)
  pool_x = np.concatenate([np.asarray(ctx.train.images)[members],
                           np.asarray(ctx.test.images)[nonmembers]])
  pool_y = np.concatenate([np.asarray(ctx.train.labels)[members],
                           np.asarray(ctx.test.labels)[nonmembers]])
  is_member = np.arange(len(pool_y)) < len(members)
  shadow_params, masks = _shadows(ctx, pool_x, pool_y)
  shadow_stats = mia.shadow_statistics(ctx.apply_fn, shadow_params, pool_x,
                                       pool_y)
  rows, curves = [], {}
  for t in ctx.targets.values():
    logits = np.asarray(mia.model_logits(ctx.apply_fn, t.params, pool_x))
    loss_res = mia.threshold_attack("loss", logits[is_member],
                                    pool_y[is_member], logits[~is_member],
                                    pool_y[~is_member])
    phi = np.asarray(mia.logit_scaled_confidence(logits, pool_y))
    scores = mia.lira_offline(phi, shadow_stats, masks, global_variance=True)
    lira_res = mia.attack_metrics(scores[is_member], scores[~is_member])
    rows.append({"model": t.name, "epsilon": t.info["epsilon"],
                 "loss_auc": loss_res.auc,
                 "loss_tpr@1%fpr": loss_res.tpr_at_1pct_fpr,
                 "loss_tpr@0.1%fpr": loss_res.tpr_at_0_1pct_fpr,
                 "lira_auc": lira_res.auc,
                 "lira_tpr@1%fpr": lira_res.tpr_at_1pct_fpr,
                 "lira_tpr@0.1%fpr": lira_res.tpr_at_0_1pct_fpr})
    curves[f"{t.name} LiRA"] = (lira_res.fpr, lira_res.tpr)
    if t.name == "non_private":
      curves[f"{t.name} loss"] = (loss_res.fpr, loss_res.tpr)
  return {"attacks": rows, "members": int(is_member.sum()),
          "nonmembers": int((~is_member).sum()),
          "shadows": ctx.config.lira_shadows,
          "roc": {k: [np.asarray(v[0]).tolist(), np.asarray(v[1]).tolist()]
                  for k, v in curves.items()}}


# --------------------------------------------------------------------------
# 4. empirical epsilon


def stage_empirical_epsilon(ctx: Context) -> dict[str, Any]:
  """Gradient-canary lower bounds on each DP model's mechanism.

  White-box, one run (Steinke, Nasr and Jagielski 2023): `config.canaries`
  gradient canaries, each included with probability 1/2, go through the
  same weight rule, noise multiplier, Poisson rate and number of steps as
  the audited DP run (`jaxleak.auditing.gradient_canaries`, through the
  library's own `dp_aggregate`), next to real per-example gradients of the
  model; the bound holds with 95% confidence.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import dp_training  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("jax_privacy") is None:
    return {"available": False,
            "reason": "the [audit] extra (jax-privacy) is not installed"}
  from jaxleak.auditing import estimators  # pylint: disable=g-import-not-at-top
  from jaxleak.auditing import gradient_canaries as gc  # pylint: disable=g-import-not-at-top
  cfg = ctx.config
  dp_targets = [t for t in ctx.targets.values() if "rule" in t.info]
  background = gc.background_gradients(
      ctx.apply_fn, ctx.init_params, np.asarray(ctx.train.images[:32]),
      np.asarray(ctx.train.labels[:32]))
  num_canaries = min(cfg.canaries, background.grads.shape[1])
  rows = []
  bar = _bar(ctx, len(dp_targets), "empirical epsilon")
  for t in dp_targets:
    rule = dp_training.make_weight_rule(t.info["rule"],
                                        l2_norm_clip=t.info["l2_norm_clip"])
    audit_cfg = gc.GradientAuditConfig(steps=int(t.info["steps"]),
                                       sample_rate=float(t.info["sample_rate"]))
    ins, outs = gc.simulate_one_run(
        rule, float(t.info["noise_multiplier"]), background,
        num_canaries=num_canaries,
        key=jax.random.fold_in(jax.random.key(cfg.seed), len(rows)),
        config=audit_cfg)
    bound = estimators.epsilon_lower_bound(
        ins, outs, method="one_run", delta=t.info["delta"], confidence=0.95)
    eps = float(t.info["epsilon"])
    rows.append({"model": t.name, "epsilon_theory": eps,
                 "epsilon_lower_bound": float(bound),
                 "tightness": float(bound) / eps,
                 "attack_auroc": float(estimators.attack_auroc(ins, outs)),
                 "canaries": num_canaries, "steps": int(t.info["steps"]),
                 "sample_rate": float(t.info["sample_rate"]),
                 "method": "one_run", "confidence": 0.95,
                 "consistent": bool(bound <= eps)})
    bar.update(1)
  bar.close()
  return {"available": True, "audits": rows}


# --------------------------------------------------------------------------
# 5. unlearning


def stage_unlearning(ctx: Context) -> dict[str, Any]:
  """Mini-Unlearning of a random share against retraining, with the MIA."""
  from jaxleak import sharding  # pylint: disable=g-import-not-at-top
  from jaxleak import unlearning as ul  # pylint: disable=g-import-not-at-top
  from jaxleak.unlearning import evaluation  # pylint: disable=g-import-not-at-top
  cfg = ctx.config
  recipe = ul.sgd_recipe(cfg.unlearn_epochs, 128, 0.2, schedule="step",
                         l2=5e-4, seed=cfg.seed)
  history = ul.train_with_history(
      ctx.apply_fn, ctx.init_params, ctx.train, recipe,
      snapshots=max(1, min(2, cfg.unlearn_epochs - 1)),
      workdir=ctx.dir("stages", "unlearning_history"),
      progress=ctx.progress)
  forget = ul.random_forget_set(len(ctx.train), cfg.unlearn_ratio, cfg.seed)
  r = len(forget)
  unlearners = {"mini_unlearning": ul.get("mini_unlearning",
                                          mesh=sharding.data_mesh(None))}
  res = evaluation.evaluate_unlearning(
      ul.Model(ctx.apply_fn, history.final_params), history, forget,
      ctx.train, ctx.test, unlearners, seed=cfg.seed)
  keep = ("test_accuracy", "forget_accuracy", "distance_to_retrain",
          "mia_loss_auc", "wall_time_s", "run_time_s", "speedup_vs_retrain",
          "speedup_end_to_end")
  rows = [{"model": name, **{k: m.metrics.get(k) for k in keep}}
          for name, m in res.items()]
  roc = {name: [np.asarray(m.roc["loss"].fpr).tolist(),
                np.asarray(m.roc["loss"].tpr).tolist()]
         for name, m in res.items() if "loss" in m.roc}
  return {"forget_size": r, "ratio": cfg.unlearn_ratio, "models": rows,
          "roc": roc}


# --------------------------------------------------------------------------
# Driver

# name -> (function, rough cost weight for the overall ETA bar)
STAGES: dict[str, tuple[Callable[[Context], dict[str, Any]], float]] = {
    "models": (stage_models, 3.0),
    "reconstruction": (stage_reconstruction, 3.0),
    "i2f": (stage_i2f, 0.5),
    "membership": (stage_membership, 2.0),
    "empirical_epsilon": (stage_empirical_epsilon, 1.0),
    "unlearning": (stage_unlearning, 2.0),
}


def run_audit(config: AuditConfig, workdir: str | os.PathLike, *,
              progress: bool = True, rerun: Sequence[str] = (),
              on_stage: Callable[[str, float], None] | None = None
              ) -> dict[str, Any]:
  """Runs (or resumes) every stage and returns {stage: result}.

  Args:
    config: what to train and attack.
    workdir: output folder; finished stages found there are reused when the
      configuration is the same.
    progress: progress bars (one per stage and one with the whole run's ETA).
    rerun: stages to recompute even when a finished result is stored.
    on_stage: called with (stage name, seconds) after each stage.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top

  config.validate()
  for name in rerun:
    validate.check_choice(name, "rerun", tuple(STAGES), fn="run_audit")
  workdir = os.fspath(workdir)
  os.makedirs(os.path.join(workdir, "stages"), exist_ok=True)
  train = data.load(config.dataset, "train", config.data_dir)
  test = data.load(config.dataset, "test", config.data_dir)
  if train.num_classes < 2:
    raise ValueError(
        f"audit: argument '--dataset' {config.dataset!r} has "
        f"{train.num_classes} class; a classifier audit needs at least 2")
  apply_fn, init_params = models.create(
      config.model, train.num_classes, train.image_shape,
      jax.random.key(config.seed))
  ctx = Context(config, workdir, train, test, apply_fn, init_params, progress)
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  weights = {k: w for k, (_, w) in STAGES.items()}
  overall = tqdm.tqdm(total=sum(weights.values()), desc="audit", unit="",
                      bar_format="{l_bar}{bar}| {elapsed}<{remaining}",
                      disable=not progress, dynamic_ncols=True, position=0)
  ident = config.identity()
  for name, (fn, weight) in STAGES.items():
    path = stage_path(workdir, name)
    overall.set_description(f"audit: {name}")
    t0 = time.perf_counter()
    cached = _read_stage(path, ident)
    if name in rerun:
      cached = None
      for stale in (path, stage_path(workdir, name)[:-5] + ".jsonl"):
        if os.path.exists(stale):
          os.remove(stale)
    # Models are always restored (cheap): later stages need their params.
    if cached is not None and name != "models":
      result = cached
    else:
      result = fn(ctx)
      result["wall_time_s"] = time.perf_counter() - t0
      report_lib.write_json(path, {"identity": ident, "result": result})
    ctx.results[name] = result
    overall.update(weight)
    if on_stage is not None:
      on_stage(name, time.perf_counter() - t0)
  overall.close()
  return ctx.results


def _read_stage(path: str, ident: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      blob = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None  # a stage killed mid-write is simply rerun
  if blob.get("identity") != ident:
    from jaxleak import runloop  # pylint: disable=g-import-not-at-top
    where = runloop.describe_workdir(os.path.dirname(os.path.dirname(path)))
    raise ValueError(
        f"audit: {where} holds a different run (an audit with another "
        f"configuration, {path}); use a new workdir or the same flags, or "
        "delete this one to start over")
  return blob["result"]
