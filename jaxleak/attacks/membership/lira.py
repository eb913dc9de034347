"""LiRA, the likelihood-ratio attack of Carlini et al. (S&P 2022).

Shadow models are trained on random halves of a population so that every
example is IN (trained on) for half of them and OUT for the other half. For
each example the statistic phi = z_y - logsumexp_{c!=y} z_c (the logit-scaled
confidence, `signals.logit_scaled_confidence`) is modelled as Gaussian over
the IN and OUT shadows:

* online:  score = log N(phi_obs; mu_in, s_in^2) - log N(phi_obs; mu_out, s_out^2);
* offline: score = log P(Z <= phi_obs), Z ~ N(mu_out, s_out^2) (OUT models
  only, so they can be trained before the targets are known).

With few shadows a per-example variance is noisy; ``global_variance=True``
uses one variance per side pooled over all examples (Carlini et al. do this
below 64 shadows).

Shadow models are trained *in parallel*: their parameters are stacked along
a leading axis and one `jax.vmap`-ed optimiser step updates all of them, each
on a batch from its own IN set (`train_shadow_models`).
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxleak._src import validate
from jaxleak.attacks.membership import signals

__all__ = ("shadow_in_masks", "stack_params", "train_shadow_models",
           "shadow_statistics", "lira_online", "lira_offline")

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def shadow_in_masks(n: int, num_shadows: int, *, seed: int = 0) -> np.ndarray:
  """bool [S, n]: each example IN for exactly S/2 of the S shadows.

  Uses the construction of Carlini et al.: for every example, a random
  permutation of the shadows and the first half of it are IN.

  Raises:
    ValueError: S is not an even number >= 2.
  """
  fn = "shadow_in_masks"
  if isinstance(num_shadows, bool) or int(num_shadows) < 2 or num_shadows % 2:
    raise ValueError(
        f"{fn}: argument 'num_shadows' must be an even int >= 2 (every example "
        f"IN for exactly half), got {num_shadows!r}")
  if int(n) < 1:
    raise ValueError(f"{fn}: argument 'n' must be >= 1, got {n!r}")
  rng = np.random.default_rng(seed)
  ranks = rng.random((int(num_shadows), int(n))).argsort(axis=0)
  return ranks < num_shadows // 2


def stack_params(params_list: list[Any]) -> Any:
  """Stacks per-model pytrees along a new leading axis (for vmap)."""
  if not params_list:
    raise ValueError("stack_params: argument 'params_list' is empty")
  return jax.tree.map(lambda *xs: jnp.stack(xs), *params_list)


@functools.partial(jax.jit, static_argnames=("apply_fn", "optimizer"))
def _shadow_epoch(apply_fn, optimizer, params, opt_state, images, labels, idx,
                  mask):
  """One epoch for all shadows: scan over steps of a vmapped update."""

  def loss(p, x, y, m):
    losses = optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x), y)
    return jnp.sum(losses * m) / jnp.maximum(jnp.sum(m), 1.0)

  def one(p, s, i, m):
    g = jax.grad(loss)(p, images[i], labels[i], m)
    updates, s = optimizer.update(g, s, p)
    return optax.apply_updates(p, updates), s

  def step(carry, inputs):
    p, s = carry
    i, m = inputs                       # [S, B] each
    return jax.vmap(one)(p, s, i, m), None

  # Scan over steps: move the step axis of [S, steps, B] to the front.
  (params, opt_state), _ = jax.lax.scan(
      step, (params, opt_state), (jnp.swapaxes(idx, 0, 1),
                                  jnp.swapaxes(mask, 0, 1)))
  return params, opt_state


def train_shadow_models(apply_fn: ApplyFn, init_params: Any, images: Any,
                        labels: Any, in_masks: Any,
                        optimizer: optax.GradientTransformation, *,
                        epochs: int, batch_size: int, seed: int = 0,
                        progress: bool = False) -> Any:
  """Trains S shadow models in parallel, each on its own IN subset.

  Args:
    apply_fn: the (shared) architecture.
    init_params: stacked initial params, leading axis S (`stack_params`).
    images, labels: the population [n, ...], [n].
    in_masks: bool [S, n]; shadow s trains on the examples with
      in_masks[s] True.
    optimizer: an optax transformation (applied per shadow).
    epochs: epochs over each shadow's IN set.
    batch_size: minibatch size.
    seed: batch-order seed (shadow s, epoch e use rng([seed, s, e])).
    progress: show a tqdm bar over epochs.

  Returns:
    The stacked trained params.
  """
  fn = "train_shadow_models"
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  in_masks = np.asarray(in_masks, bool)
  s = jax.tree.leaves(init_params)[0].shape[0]
  validate.check_shape(in_masks, "in_masks", (s, len(labels)), fn=fn)
  if not in_masks.any(axis=1).all():
    raise ValueError(f"{fn}: argument 'in_masks' leaves a shadow with no data")
  sizes = in_masks.sum(axis=1)
  b = min(int(batch_size), int(sizes.min()))
  steps = -(-int(sizes.max()) // b)
  opt_state = jax.vmap(optimizer.init)(init_params)
  params = init_params
  x, y = jnp.asarray(images), jnp.asarray(labels)
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=epochs, desc=f"{s} shadows", unit="epoch",
               dynamic_ncols=True)
  for e in range(int(epochs)):
    idx = np.zeros((s, steps * b), np.int32)
    mask = np.zeros((s, steps * b), np.float32)
    for k in range(s):
      members = np.flatnonzero(in_masks[k])
      order = np.random.default_rng([seed, k, e]).permutation(members)
      idx[k, :order.size] = order
      mask[k, :order.size] = 1.0
    params, opt_state = _shadow_epoch(
        apply_fn, optimizer, params, opt_state, x, y,
        jnp.asarray(idx.reshape(s, steps, b)),
        jnp.asarray(mask.reshape(s, steps, b)))
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  return params


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _stats_chunk(apply_fn, stacked, x, y):
  def one(p):
    return signals.logit_scaled_confidence(apply_fn(p, x), y)
  return jax.vmap(one)(stacked)


def shadow_statistics(apply_fn: ApplyFn, stacked_params: Any, images: Any,
                      labels: Any, *, batch_size: int = 1000) -> np.ndarray:
  """phi of every (shadow, example): float [S, n] (vmap over the shadows)."""
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  n = len(labels)
  b = min(int(batch_size), n)
  out = []
  for start in range(0, n, b):
    x, y = images[start:start + b], labels[start:start + b]
    m = len(y)
    if m < b:
      x = np.concatenate([x, np.zeros((b - m,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.zeros((b - m,), y.dtype)])
    out.append(np.asarray(_stats_chunk(apply_fn, stacked_params, x, y))[:, :m])
  return np.concatenate(out, axis=1).astype(np.float64)


def _gaussians(stats: np.ndarray, masks: np.ndarray, global_variance: bool,
               fn: str) -> tuple[np.ndarray, np.ndarray]:
  counts = masks.sum(axis=0)
  if (counts == 0).any():
    raise ValueError(
        f"{fn}: {int((counts == 0).sum())} example(s) have no shadow model on "
        "the required side (IN/OUT); train more shadows or use in_masks from "
        "shadow_in_masks")
  mean = np.where(masks, stats, 0.0).sum(0) / counts
  dev2 = np.where(masks, (stats - mean) ** 2, 0.0)
  if global_variance:
    var = np.full_like(mean, dev2.sum() / max(counts.sum() - 1, 1))
  else:
    var = dev2.sum(0) / np.maximum(counts - 1, 1)
  return mean, np.sqrt(var) + 1e-30


def _check(target, shadow, masks, fn):
  target = np.asarray(target, np.float64)
  shadow = np.asarray(shadow, np.float64)
  masks = np.asarray(masks, bool)
  validate.check_rank(target, "target_stats", 1, fn=fn)
  validate.check_shape(shadow, "shadow_stats", (None, target.size), fn=fn)
  validate.check_shape(masks, "in_masks", shadow.shape, fn=fn)
  return target, shadow, masks


def lira_online(target_stats: Any, shadow_stats: Any, in_masks: Any, *,
                global_variance: bool = False) -> np.ndarray:
  """Online LiRA scores [n] (log-likelihood ratio IN vs OUT).

  Args:
    target_stats: [n] phi of the target model on the queried examples.
    shadow_stats: [S, n] phi of the shadows on the same examples.
    in_masks: bool [S, n], whether each shadow trained on each example.
    global_variance: pool the variances over examples.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  fn = "lira_online"
  target, shadow, masks = _check(target_stats, shadow_stats, in_masks, fn)
  mu_in, sd_in = _gaussians(shadow, masks, global_variance, fn)
  mu_out, sd_out = _gaussians(shadow, ~masks, global_variance, fn)
  return (stats.norm.logpdf(target, mu_in, sd_in)
          - stats.norm.logpdf(target, mu_out, sd_out))


def lira_offline(target_stats: Any, shadow_stats: Any, in_masks: Any, *,
                 global_variance: bool = False) -> np.ndarray:
  """Offline LiRA scores [n]: log P(Z <= phi_obs), Z ~ N(mu_out, s_out^2)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  fn = "lira_offline"
  target, shadow, masks = _check(target_stats, shadow_stats, in_masks, fn)
  mu_out, sd_out = _gaussians(shadow, ~masks, global_variance, fn)
  return stats.norm.logcdf(target, mu_out, sd_out)
