"""Theory utilities for gradient inversion under gradient noise.

The reconstruction-vulnerability measure of gradient-guided diffusion
attacks (Huang et al., arXiv 2411.03053; Meng et al., arXiv 2511.10423) is
the Frobenius norm of the victim's input-parameter mixed Jacobian,

    RV = max_x ‖J(x)‖_F,    J(x) = ∂/∂x ∂/∂θ L(f_θ(x), y)  ∈ R^{d_x × d_θ},

the sensitivity of the shared gradient ``A(x) = ∇_θ L`` to the input: a
larger RV means the gradient carries more information about x per unit of
gradient noise, so reconstruction degrades more slowly with noise. The max
over all x is replaced by a max over candidate inputs (data samples).

``‖J‖_F²`` is estimated matrix-free with Hutchinson probes through the
Jacobian products shared with I²F (`jaxleak._src.mixed_jacobian`): with
Rademacher probes ``v`` in parameter space, ``E ‖J v‖² = ‖J‖_F²`` and
``J v = ∇_x ⟨∇_θ L, v⟩`` is one forward-over-reverse product.

The spec writes the Jacobian of the network output F; its implementation
note (and the single-image threat model, whose observation is ``∇_θ L``)
uses the loss. Both are offered (``target="loss"`` is the default,
``target="logits"`` sums ``‖∂x∂θ F_c‖_F²`` over the classes c). The
absolute RV is not comparable across architectures when gradient noise is
set relative to the gradient's size, as it is in DP-style defences and in
our experiments (std = c · RMS(∇_θ L)): then the linearised floor below is
``c k / (√d_x · ‖J(x)‖_F / RMS(∇_θ L(x)))``, so `RVResult` also carries the
noise-relative RV ``‖J(x)‖_F / RMS(∇_θ L(x))`` per candidate.

The Frobenius norm is the sum of the eigenvalues of ``J J^T``, so it is
set by the best-observed input directions; the error floor is set by the
worst-observed ones. `linearized_posterior_rmse` keeps the whole spectrum:
with a Gaussian prior of variance v per pixel on x and the linearised
observation ``g̃ = A(x*) + J^T (x - x*) + n``, ``n ~ N(0, s² I)``, the
posterior covariance is ``(J J^T / s² + I / v)^{-1}``, and the minimum
expected per-pixel squared error of any estimator (the Bayesian MMSE of
this linear-Gaussian model) is ``mean_i 1 / (λ_i / s² + 1 / v)`` over the
eigenvalues λ_i of ``J J^T``. It needs d_x Gram products, so it is for
inputs of up to a few thousand values.

`linearized_error_bound` gives the shape of a noise-driven error floor:
linearising ``A`` at the private x*, any unbiased reconstruction from
``g̃ = A(x*) + n``, ``n ~ N(0, s² I)``, has ``E ‖x̂ - x*‖² ≥
s² tr((J J^T)^+) ≥ s² k² / ‖J‖_F²`` (Cramér-Rao for a linear Gaussian model,
then Cauchy-Schwarz on the k = rank(J) singular values), i.e. a per-pixel
RMSE of at least ``s k / (√d_x ‖J‖_F)``: linear in the noise and inversely
proportional to RV. This is our derivation of the bound's *shape* (the
papers' exact constants are not available to us), not the papers' bound.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxleak._src import mixed_jacobian as jacobian
from jaxleak._src import validate
from jaxleak.attacks.inversion import objectives
from jaxleak.attacks.inversion import threat_model

__all__ = (
    "RVResult",
    "reconstruction_vulnerability",
    "mixed_jacobian_frobenius_exact",
    "linearized_error_bound",
    "input_gram_eigenvalues",
    "linearized_posterior_rmse",
)


class RVResult(NamedTuple):
  """Reconstruction vulnerability over candidate inputs.

  Attributes:
    rv: ``max_i ‖J(x_i)‖_F`` (the RV measure).
    per_input: ``[N]`` the estimate of ``‖J(x_i)‖_F`` per candidate.
    argmax: index of the maximising candidate.
    num_probes: Hutchinson probes per candidate.
    num_params: d_θ (trainable parameters).
    input_size: d_x (values per input image).
    grad_rms: ``[N]`` RMS of the shared gradient ``∇_θ L(x_i)`` (the scale
      of gradient noise set relative to the gradient).
    relative: ``[N]`` noise-relative RV ``‖J(x_i)‖_F / RMS(∇_θ L(x_i))``.
    rv_relative: ``max_i relative[i]``.
    target: "loss" or "logits" (what J differentiates).
  """

  rv: float
  per_input: np.ndarray
  argmax: int
  num_probes: int
  num_params: int
  input_size: int
  grad_rms: np.ndarray
  relative: np.ndarray
  rv_relative: float
  target: str


def _loss_fn(apply_fn: Callable[..., jax.Array], params: Any,
             label: jax.Array) -> Callable[[Any, jax.Array], jax.Array]:
  """``loss(θ_trainable, x)``: the victim's mean CE on one labelled input."""

  def loss(theta, x):
    return objectives.victim_loss(
        apply_fn, objectives.with_trainable(params, theta), x, label)

  return loss


def _projected_logits_fn(apply_fn: Callable[..., jax.Array], params: Any,
                         direction: jax.Array
                         ) -> Callable[[Any, jax.Array], jax.Array]:
  """``⟨u, F(θ_trainable, x)⟩`` for an output-space direction u."""

  def projected(theta, x):
    logits = apply_fn(objectives.with_trainable(params, theta), x)
    return jnp.sum(direction * logits)

  return projected


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _frob_sq_hutchinson(apply_fn, params, x, label, key, num_probes, space,
                        target):
  theta = objectives.trainable(params)
  if target == "loss":
    loss = _loss_fn(apply_fn, params, label)
    return jacobian.frobenius_norm_sq_hutchinson(loss, theta, x, key,
                                                 num_probes, space=space)
  # Logits: a Rademacher u over the outputs per probe. E_u ‖∂x∂θ⟨u, F⟩‖_F²
  # = Σ_c ‖∂x∂θ F_c‖_F² (cross terms vanish as E[u_c u_c'] = δ_cc'), and
  # one inner probe per u keeps the whole estimate unbiased.
  out_shape = jax.eval_shape(apply_fn, params, x).shape

  def probe(k):
    ku, kv = jax.random.split(k)
    u = jax.random.rademacher(ku, out_shape, jnp.float32)
    return jacobian.frobenius_norm_sq_hutchinson(
        _projected_logits_fn(apply_fn, params, u), theta, x, kv, 1,
        space=space)

  return jnp.mean(jax.lax.map(probe, jax.random.split(key, num_probes)))


@functools.partial(jax.jit, static_argnums=0)
def _grad_rms(apply_fn, params, x, label):
  grad = jax.grad(_loss_fn(apply_fn, params, label))(
      objectives.trainable(params), x)
  return objectives.tree_rms(grad)


def reconstruction_vulnerability(apply_fn: Callable[..., jax.Array],
                                 params: Any, images: Any, labels: Any, *,
                                 key: Any, num_probes: int = 32,
                                 space: str = "params",
                                 target: str = "loss") -> RVResult:
  """RV = max over candidate inputs of ``‖∂/∂x ∂/∂θ L(f_θ(x), y)‖_F``.

  Also returns the noise-relative RV per candidate, ``‖J(x)‖_F / RMS(∇_θ
  L(x))``, the quantity that sets the linearised error floor when the
  gradient noise is a multiple of the gradient's RMS.

  Args:
    apply_fn: ``logits = apply_fn(params, x)`` (e.g. a `jaxleak.models`
      ModelFn).
    params: the victim's parameters (a Flax variables dict: only the
      trainable ``params["params"]`` are differentiated).
    images: ``[N, H, W, C]`` candidate inputs in [0, 1]; each is scored as a
      batch of one (the single-image threat model).
    labels: ``[N]`` int labels.
    key: PRNG key or int seed for the probes.
    num_probes: Hutchinson probes per candidate (relative std of the squared
      norm ≈ sqrt(2 / num_probes) at worst for Rademacher probes).
    space: "params" (probes v in θ-space, products ``J v = ∇_x⟨∇_θL, v⟩``,
      the spec's form) or "input" (products ``J^T u``); same expectation.
    target: "loss" (J of ``∇_θ L``, the shared gradient) or "logits" (J of
      the network output F, summed over classes: the spec's ``∇_x∇_W F``).

  Returns:
    An `RVResult`.
  """
  fn = "reconstruction_vulnerability"
  key = threat_model.canonical_key(key, fn)
  images = jnp.asarray(images, jnp.float32)
  validate.check_images(images, "images", fn=fn)
  labels = np.asarray(labels)
  validate.check_shape(labels, "labels", (images.shape[0],), fn=fn)
  validate.check_choice(space, "space", ("params", "input"), fn=fn)
  validate.check_choice(target, "target", ("loss", "logits"), fn=fn)
  validate.check_int(num_probes, "num_probes", fn=fn)
  out, rms = [], []
  for i in range(images.shape[0]):
    label = jnp.asarray(labels[i:i + 1], jnp.int32)
    sq = _frob_sq_hutchinson(apply_fn, params, images[i:i + 1], label,
                             jax.random.fold_in(key, i), int(num_probes),
                             space, target)
    out.append(float(jnp.sqrt(jnp.maximum(sq, 0.0))))
    rms.append(float(_grad_rms(apply_fn, params, images[i:i + 1], label)))
  per = np.asarray(out, np.float64)
  rms = np.asarray(rms, np.float64)
  # A zero gradient (a perfectly fitted input) carries no signal to scale
  # noise by: its relative RV is undefined, reported as NaN, not inf.
  with np.errstate(divide="ignore", invalid="ignore"):
    relative = np.where(rms > 0, per / rms, np.nan)
  theta = objectives.trainable(params)
  return RVResult(rv=float(per.max()), per_input=per,
                  argmax=int(per.argmax()), num_probes=int(num_probes),
                  num_params=objectives.tree_size(theta),
                  input_size=int(np.prod(images.shape[1:])),
                  grad_rms=rms, relative=relative,
                  rv_relative=float(np.nanmax(relative))
                  if np.isfinite(relative).any() else float("nan"),
                  target=target)


def mixed_jacobian_frobenius_exact(apply_fn: Callable[..., jax.Array],
                                   params: Any, image: Any, label: Any,
                                   target: str = "loss") -> float:
  """Exact ``‖∂/∂x ∂/∂θ L‖_F`` (or of F) for one input, by materialising J.

  ``jax.jacfwd`` over the input of the parameter gradient (or of the
  parameter Jacobian of the logits): d_x forward passes and memory
  d_x × d_θ (× classes), so only for tiny models (tests).

  Args:
    apply_fn: the victim.
    params: its parameters.
    image: ``[1, H, W, C]``.
    label: ``[1]`` int label (unused for ``target="logits"``).
    target: "loss" or "logits", as in `reconstruction_vulnerability`.

  Returns:
    The Frobenius norm.
  """
  validate.check_choice(target, "target", ("loss", "logits"),
                        fn="mixed_jacobian_frobenius_exact")
  image = jnp.asarray(image, jnp.float32)
  label = jnp.asarray(label, jnp.int32)
  theta = objectives.trainable(params)
  if target == "loss":
    inner = lambda x: jax.grad(_loss_fn(apply_fn, params, label))(theta, x)
  else:
    inner = lambda x: jax.jacrev(lambda th: apply_fn(  # pylint: disable=g-long-lambda
        objectives.with_trainable(params, th), x))(theta)
  jac = jax.jacfwd(inner)(image)
  return float(optax.tree_utils.tree_norm(jac))


def linearized_error_bound(noise_std: Any, rv: float, input_size: int,
                           num_params: int) -> np.ndarray:
  """Per-pixel RMSE floor ``s k / (√d_x RV)`` with ``k = min(d_x, d_θ)``.

  The shape of the noise-driven error bound (see the module docstring):
  linear in the gradient-noise std `s` and inversely proportional to RV.
  It assumes J has full rank k; a lower rank lowers the floor but leaves
  ``d_x - k`` directions unidentifiable.

  Args:
    noise_std: absolute std(s) of the Gaussian gradient noise.
    rv: ``‖J‖_F`` at the private input (or the RV measure).
    input_size: d_x.
    num_params: d_θ.

  Returns:
    The bound, shaped like `noise_std`.
  """
  validate.check_positive(rv, "rv", fn="linearized_error_bound")
  k = min(int(input_size), int(num_params))
  return np.asarray(noise_std, np.float64) * k / (np.sqrt(input_size) * rv)


@functools.partial(jax.jit, static_argnums=0)
def _gram_columns(apply_fn, params, x, label, basis):
  loss = _loss_fn(apply_fn, params, label)
  theta = objectives.trainable(params)

  def column(b):
    return jacobian.gram_vp(loss, theta, x, b.reshape(x.shape)).reshape(-1)

  return jax.vmap(column)(basis)


def input_gram_eigenvalues(apply_fn: Callable[..., jax.Array], params: Any,
                           image: Any, label: Any, *,
                           chunk_size: int = 128,
                           max_input_size: int = 16384) -> np.ndarray:
  """Eigenvalues of ``J J^T`` (d_x × d_x) at one input, ascending.

  J is the mixed Jacobian of the loss (module docstring). The Gram matrix is
  built column by column from matrix-free products ``J (J^T e_i)``,
  `chunk_size` columns per compiled call, then symmetrised and
  diagonalised in float64. Cost: d_x forward-over-reverse pairs.

  Args:
    apply_fn: the victim.
    params: its parameters.
    image: ``[1, H, W, C]``.
    label: ``[1]`` int label.
    chunk_size: Gram columns per call (memory: chunk_size × d_θ floats).
    max_input_size: refuse larger inputs (d_x² memory, d_x products).

  Returns:
    ``[d_x]`` float64 eigenvalues, clipped at 0.
  """
  fn = "input_gram_eigenvalues"
  image = jnp.asarray(image, jnp.float32)
  validate.check_images(image, "image", fn=fn)
  validate.check_shape(image, "image", (1, None, None, None), fn=fn)
  label = jnp.asarray(label, jnp.int32).reshape(1)
  validate.check_positive(chunk_size, "chunk_size", fn=fn)
  d = int(np.prod(image.shape))
  if d > max_input_size:
    raise ValueError(f"{fn}: argument 'image' has {d} values; the exact Gram "
                     f"matrix needs {d} products and {d}x{d} memory (limit "
                     f"'max_input_size' = {max_input_size})")
  eye = np.eye(d, dtype=np.float32)
  cols = []
  for start in range(0, d, int(chunk_size)):
    block = eye[start:start + int(chunk_size)]
    if block.shape[0] < chunk_size:  # one compiled shape for every chunk
      block = np.pad(block, ((0, int(chunk_size) - block.shape[0]), (0, 0)))
    out = np.asarray(_gram_columns(apply_fn, params, image, label,
                                   jnp.asarray(block)), np.float64)
    cols.append(out[:min(int(chunk_size), d - start)])
  gram = np.concatenate(cols)
  gram = 0.5 * (gram + gram.T)
  return np.clip(np.linalg.eigvalsh(gram), 0.0, None)


def linearized_posterior_rmse(eigenvalues: Any, noise_std: Any,
                              prior_variance: float) -> np.ndarray:
  """Per-pixel RMSE floor ``sqrt(mean_i 1 / (λ_i / s² + 1 / v))``.

  The minimum expected error of any estimator of x from the linearised
  noisy gradient under a N(x_0, v I) prior (module docstring). It falls to
  0 as the noise std s → 0 (if J J^T has full rank) and rises to ``√v``
  (the prior alone) as s → ∞.

  Args:
    eigenvalues: eigenvalues of ``J J^T`` (`input_gram_eigenvalues`).
    noise_std: absolute std(s) s of the Gaussian gradient noise.
    prior_variance: v, the prior variance per pixel (e.g. the data's pixel
      variance).

  Returns:
    The floor, shaped like `noise_std`.
  """
  fn = "linearized_posterior_rmse"
  validate.check_positive(prior_variance, "prior_variance", fn=fn)
  lam = np.asarray(eigenvalues, np.float64).reshape(-1)
  if lam.size == 0 or np.any(lam < 0) or not np.all(np.isfinite(lam)):
    raise ValueError(f"{fn}: argument 'eigenvalues' must be non-empty, "
                     "finite and non-negative")
  s = np.asarray(noise_std, np.float64)
  if np.any(s < 0) or not np.all(np.isfinite(s)):
    raise ValueError(f"{fn}: argument 'noise_std' must be finite and >= 0")
  s2 = s.reshape(-1, 1) ** 2
  with np.errstate(divide="ignore"):
    precision = np.where(s2 > 0, lam / np.where(s2 > 0, s2, 1.0), np.inf)
  mse = np.mean(1.0 / (precision + 1.0 / prior_variance), axis=1)
  return np.sqrt(mse).reshape(s.shape)
