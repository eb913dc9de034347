"""How close can a non-replaying unlearner get to retraining? (a study of the unlearning sweep)

The sweep's target for Mini-Unlearning at a 30% forget ratio asks for a
smaller ``||w - w_retrain||`` than DeltaGrad's. This study measures, for one
(seed, ratio) cell of a sweep config (default: the logistic-regression
setting), the distances that bound what any method of Mini-Unlearning's kind
can reach, i.e. a method that starts from w* and sees gradients of the
retained objective but does not replay the original minibatch sequence:

* ``retrain, other batch order``: retraining with the same recipe but a
  different shuffle seed. The retrained reference itself depends on the
  batch order; this is the floor for anything that ignores that order.
* ``deltagrad``: the baseline, which does replay the batch order.
* ``mini_unlearning k``: the contraction iterates k = 0 .. `--steps` (k = 0 is
  w*) for several proximal strengths rho (in units of 1 / tau, tau = sum of
  the recipe's learning rates), i.e. how fast the iteration approaches its
  fixed point and how good the fixed point is.
* ``GD-filter limit, k HVPs``: the best linearised answer: Lanczos
  (`jaxleak.influence.lanczos`) on the retained Hessian at w* (k
  Hessian-vector products, by forward secant
  differences of retained gradients) applied to the exact early-stopping
  filter of the recipe, ``f(h) = (1 - prod_t (1 - eta_t h)) / h``, on the
  forget-induced gradient change. For a quadratic loss and full-batch GD this
  *is* retraining's displacement from w*; what remains is nonlinearity and
  minibatch noise.

  python experiments/unlearning/distance_study.py \\
      --config experiments/unlearning/configs/logreg.py \\
      --sweep_dir experiments/unlearning/results/logreg \\
      --workdir experiments/unlearning/results/logreg/distance_study/seed0

``--config`` is the sweep's config. Uses the sweep's stored training history
(``--sweep_dir/seed<s>``); writes
``distance_study.json``, ``distance_study.md`` and ``distance_study.png``.
"""

from __future__ import annotations

import os
import time

from absl import flags

from jaxleak import launch

_SWEEP_DIR = flags.DEFINE_string(
    "sweep_dir", None, "the sweep's --workdir (its seed<s> histories are reused)")
_CONFIG, _WORKDIR = launch.define_config_flags(config_help="the sweep's get_config() file")
_SEED = flags.DEFINE_integer("seed", 0, "the sweep seed to study")
_RATIO = flags.DEFINE_float("ratio", 0.3, "the sweep forget ratio to study")
_STEPS = flags.DEFINE_integer("steps", 16, "contraction iterates k")
_HVPS = flags.DEFINE_integer("hvps", 12, "Lanczos Hessian-vector products")
_OTHER_ORDERS = flags.DEFINE_integer(
    "other_orders", 2, "retrainings with another batch order")


def krylov_filter_estimate(matvec, rhs, filters, num_iters):
  """``f(A) rhs`` for each f in `filters`, from `num_iters` Lanczos steps.

  With Ritz pairs (theta_i, v_i) of A in the Krylov space of `rhs`
  (`jaxleak.influence.lanczos`), ``f(A) rhs ~ sum_i f(theta_i) <v_i, rhs>
  v_i``, exact when the space is invariant.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxleak import influence  # pylint: disable=g-import-not-at-top
  theta, vectors = influence.lanczos(matvec, rhs, num_iters)
  theta = np.asarray(theta, np.float64)
  coeff = vectors @ rhs
  return {name: (f(theta) * coeff) @ vectors for name, f in filters.items()}


def main(argv) -> int:
  del argv
  cfg, workdir = _CONFIG.value, launch.study_workdir(_WORKDIR.value)
  seed, ratio = _SEED.value, _RATIO.value
  steps, hvps, other_orders = _STEPS.value, _HVPS.value, _OTHER_ORDERS.value

  import jax  # pylint: disable=g-import-not-at-top
  from jax.flatten_util import ravel_pytree  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak import unlearning as ul  # pylint: disable=g-import-not-at-top
  from jaxleak.metrics import figures  # pylint: disable=g-import-not-at-top
  from jaxleak.unlearning import base  # pylint: disable=g-import-not-at-top

  train = data.load(cfg.dataset, "train")
  kwargs = dict(cfg.model_kwargs)
  if "hidden" in kwargs:
    kwargs["hidden"] = tuple(kwargs["hidden"])
  apply_fn, params0 = models.create(cfg.model, train.num_classes,
                                    train.image_shape,
                                    jax.random.key(seed), **kwargs)
  recipe = ul.sgd_recipe(cfg.epochs, cfg.batch_size, cfg.learning_rate,
                         schedule=cfg.schedule, l2=cfg.l2, seed=seed)
  history = ul.train_with_history(
      apply_fn, params0, train, recipe, snapshots=cfg.snapshots,
      workdir=os.path.join(_SWEEP_DIR.value, f"seed{seed}"),
      on_budget="stride")
  model = ul.Model(apply_fn, history.final_params)
  n = len(train)
  # The sweep's forget set for this (seed, ratio).
  forget = ul.random_forget_set(n, ratio, seed, stream=int(round(ratio * 1e4)))
  r = len(forget)

  def flat(params):
    return ravel_pytree(params)[0]

  w_star = flat(history.final_params)
  w_rt = flat(ul.retrain(model, history, forget, train))

  def dist(w):
    return float(jnp.linalg.norm(jnp.asarray(w) - w_rt))

  t0 = time.perf_counter()
  res = {"config": cfg.name, "seed": seed, "ratio": ratio,
         "num_params": int(w_star.size), "sgd_steps": history.num_steps,
         "original": dist(w_star)}
  res["retrain_other_order"] = [
      dist(flat(ul.retrain(model, history._replace(
          recipe=recipe._replace(seed=1000 + k)), forget, train)))
      for k in range(other_orders)]
  dg_kw = dict(cfg.methods.get("deltagrad", {}))
  res["deltagrad"] = dist(flat(ul.deltagrad(model, history, forget, train,
                                            **dg_kw)))
  mini_kw = {k: v for k, v in cfg.methods.get("mini_unlearning", {}).items()
             if k != "steps"}
  tau = ul.mini.learning_time(recipe, n)
  res["tau"] = tau
  res["mini_default_steps"] = cfg.methods.get("mini_unlearning", {}).get(
      "steps")
  res["mini_iterates"] = {}
  for rho_tau in (0.5, 1.0, 2.0):
    trace = ul.contraction_unlearning(
        model, history, forget, train, steps=steps,
        prox=rho_tau / tau, keep_iterates=True, **mini_kw)
    res["mini_iterates"][f"{rho_tau:g}"] = [dist(w) for w in trace.iterates]

  # GD-filter limit: Lanczos on the retained Hessian at w* (secant products).
  prob = base.prepare(model, history, forget, train, "distance_study")
  retained = ul.SubsetGradient(prob.apply_fn, prob.unravel,
                                   prob.images[prob.keep],
                                   prob.labels[prob.keep])
  forget_grad = ul.SubsetGradient(prob.apply_fn, prob.unravel,
                                      prob.images[prob.forget],
                                      prob.labels[prob.forget])
  full = jnp.asarray(history.full_grad)
  lam = recipe.l2

  def retained_grad(w):
    return retained(w) / (n - r) + lam * w

  g_star = retained_grad(w_star)
  # Forget-induced change of the regularised gradient at w* (exactly
  # (n full - forget) / (n - r) - full, computed from the forget set only).
  shift = (n * full - forget_grad(w_star)) / (n - r) - full
  h = 1e-2  # secant step (weights have norm ~6; float32 keeps ~5 digits)
  matvec = lambda v: (retained_grad(w_star + h * v) - g_star) / h
  etas = np.asarray(ul.step_learning_rates(recipe, n), np.float64)

  def gd_filter(theta):
    prod = np.ones_like(theta)
    for e in etas:
      prod = prod * (1.0 - e * theta)
    return (1.0 - prod) / theta

  filters = {"gd_filter": gd_filter,
             "ridge_1_over_tau": lambda th: 1.0 / (th + 1.0 / tau)}
  estimates = [krylov_filter_estimate(matvec, shift, filters, k)
               for k in range(1, hvps + 1)]
  res["gd_filter_limit"] = [dist(w_star - e["gd_filter"]) for e in estimates]
  res["ridge_limit"] = [dist(w_star - e["ridge_1_over_tau"])
                        for e in estimates]
  res["wall_s"] = time.perf_counter() - t0
  report.write_json(os.path.join(workdir, "distance_study.json"), res)

  # Table and figure.
  lines = [f"# Distance to retraining: what bounds a non-replaying unlearner "
           f"({cfg.name}, seed {seed}, ratio {ratio})", "",
           "| reference | ||w - w_retrain|| |", "|---|---|",
           f"| original model w* | {res['original']:.4f} |"]
  for k, d in enumerate(res["retrain_other_order"]):
    lines.append(f"| retrain, other batch order #{k + 1} | {d:.4f} |")
  lines.append(f"| deltagrad ({dg_kw}) | {res['deltagrad']:.4f} |")
  k0 = res["mini_default_steps"]
  for rho_tau, its in res["mini_iterates"].items():
    best = int(np.argmin(its))
    lines.append(
        f"| mini_unlearning, rho = {rho_tau}/tau: k = {k0} (sweep default) / "
        f"k = {len(its) - 1} / best k = {best} | {its[k0]:.4f} / "
        f"{its[-1]:.4f} / {its[best]:.4f} |")
  lines.append(f"| GD-filter limit at w*, {hvps} HVPs (best over k) | "
               f"{min(res['gd_filter_limit']):.4f} |")
  lines.append(f"| ridge 1/tau limit at w*, {hvps} HVPs | "
               f"{res['ridge_limit'][-1]:.4f} |")
  with open(os.path.join(workdir, "distance_study.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  fig = figures.new_figure((6.5, 4), 120)
  ax = fig.subplots()
  for rho_tau, its in res["mini_iterates"].items():
    ax.plot(range(len(its)), its, marker=".",
            label=f"mini_unlearning, rho = {rho_tau}/tau")
  ax.plot(range(1, hvps + 1), res["gd_filter_limit"], marker="x",
          label="GD-filter limit (k HVPs)")
  ax.axhline(res["deltagrad"], color="k", ls="--", label="deltagrad")
  ax.axhline(float(np.mean(res["retrain_other_order"])), color="grey",
             ls=":", label="retrain, other batch order")
  ax.set_xlabel("k (contraction steps / Hessian-vector products)")
  ax.set_ylabel("||w - w_retrain||")
  ax.set_ylim(0, 1.2 * res["original"])
  ax.legend(fontsize=7)
  ax.set_title(f"{cfg.name}, ratio {ratio}, seed {seed}")
  fig.tight_layout()
  figures.save_figure(fig, os.path.join(workdir, "distance_study.png"), 120)
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  launch.run(main, required=("config", "sweep_dir", "workdir"))
