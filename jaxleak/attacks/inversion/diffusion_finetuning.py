"""Gradient-guided fine-tuning of a diffusion model's weights.

Meng, Huang, Chen and Li, "Is Diffusion Model Safe? Severe Data Leakage via
Gradient-Guided Diffusion Model" (arXiv 2406.09484) steal high-resolution
images (up to 512x512) from a leaked gradient by *fine-tuning a pretrained
diffusion model* until the image it generates from a fixed noise input
produces victim gradients aligned with the leaked ones. No code was
published and the paper's loss, schedule and tuned weights could not be
read, so this module implements the mechanism the abstract describes with
every unknown a documented option:

    x_T ~ N(0, I) fixed;  φ ← φ_0
    repeat K times:
      x̂₀(φ) = DDIM_S(φ, x_T)            deterministic (η = 0), S UNet calls
      L(φ) = D(A(img(x̂₀)), g*) + α_TV TV(img(x̂₀)) + λ ‖φ - φ_0‖²
      φ ← Adam(φ, ∇_φ L)
    return img(DDIM_S(φ, x_T))           the lowest-L iterate

where ``A(x) = ∇_θ ℓ(f_θ(x), y)`` is the victim's gradient operator
(`GradientObservation.operator`), ``img(x) = (x + 1) / 2`` maps diffusion
space to the victim's [0, 1] images and ``D`` is the cosine distance of
Inverting Gradients, the L2 distance relative to ``‖g*‖²``, or their sum.

What is reconstructed here, and what is a choice:

* **The optimised variable is φ, not the image.** The image is the output of
  a fixed, deterministic map ``x_T -> x̂₀`` whose weights move; the network's
  architecture acts as the image prior (as in deep image prior), and a
  pretrained φ_0 starts it from natural-image statistics.
* **Which weights move** (`trainable`): "all" UNet weights; "up", the last
  `up_blocks` up-sampling blocks plus the output norm and convolution (the
  full-resolution end of the UNet); or "lora", low-rank adapters on every
  convolution kernel, ``W = W_0 + reshape(A B)`` with ``A`` [kh·kw·c_in, r]
  drawn N(0, 1/(kh·kw·c_in)) and ``B`` [r, c_out] zero (so ``W = W_0`` at
  the start, Hu et al. 2021), the memory-saving choice at 512 px.
* **Memory.** Every UNet call of the chain is wrapped in `jax.checkpoint`, so
  the backward pass stores only the S intermediate images and recomputes one
  UNet's activations at a time: memory stays bounded in S
  (`benchmarks/finetune_memory.py` measures it).
* **Starting prior at any resolution.** The UNet is convolutional, so the
  32x32 priors shipped with jaxleak (or any diffusers-format folder) start
  the fine-tuning at the victim's resolution, which must be divisible by the
  UNet's down-sampling factor ``2**(levels - 1)``. A prior with other
  channels than the victim is lifted: a greyscale prior's input kernel is
  split evenly over the RGB channels and its output convolution copied to
  each (so it generates the same grey image until fine-tuning adds colour).
  A lifted greyscale prior starts from grey noise (one x_T channel repeated;
  `initial_noise`): it cannot denoise colour it does not see.
  ``prior="random"`` is the ablation: the same architecture as the shipped
  ``lfw_faces`` prior with freshly initialised weights.
* **Loop.** The S-step chain is unrolled in Python inside the jitted
  fine-tuning step (``loop="unrolled"``, default; XLA:CPU runs convolutions
  slower inside a while loop) or run as a `lax.scan` (``loop="scan"``: one
  UNet in the program, faster compilation at large S).

Each fine-tuning step is one jitted function (the chain, the victim's
gradient, the distance, its gradient with respect to the trainable weights
and the Adam update); the learning rate and loss weights are traced values,
so changing them does not recompile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import contextlib
import dataclasses
import time
from typing import Any, NamedTuple

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxleak._src import matmul_conv as matmul_conv_lib
from jaxleak._src import validate
from jaxleak.attacks.inversion import _compile
from jaxleak.attacks.inversion import labels as labels_lib
from jaxleak.attacks.inversion import objectives
from jaxleak.attacks.inversion import registry
from jaxleak.attacks.inversion import results
from jaxleak.attacks.inversion import threat_model

__all__ = (
  "DISTANCES",
  "LOOPS",
  "RANDOM_PRIOR",
  "TRAINABLE_SUBSETS",
  "FinetuneInversionResult",
  "FinetuneProblem",
  "FinetuneSetup",
  "check_prior_resolution",
  "check_resolution",
  "ddim_chain",
  "diffusion_finetune",
  "initial_noise",
  "downsampling_factor",
  "finetune_step",
  "lift_prior",
  "merge_trainable",
  "prepare",
  "resolve_prior",
  "split_trainable",
  "step_memory",
)

Array = jax.Array
PyTree = Any

TRAINABLE_SUBSETS = ("all", "up", "lora")
DISTANCES = ("cosine", "l2", "cosine+l2")
LOOPS = ("unrolled", "scan")
RANDOM_PRIOR = "random"
# The architecture of the ablation's randomly initialised UNet: the shipped
# `lfw_faces` prior's (channels (32, 32, 64), one layer per block).
_RANDOM_BLOCKS = (32, 32, 64)
_SEP = "/"


@dataclasses.dataclass(frozen=True, eq=False)
class FinetuneInversionResult(results.InversionResult):
  """An `InversionResult` plus the generated image along the fine-tuning.

  Attributes:
    snapshots: ``[n, B, H, W, C]`` float32 in [0, 1]: the generated images
      after ``snapshot_steps[i]`` fine-tuning updates (0 = the starting
      prior's DDIM sample from the fixed x_T).
    snapshot_steps: ``[n]`` the update counts of the snapshots.
    step_memory_bytes: XLA's memory analysis of the compiled fine-tuning
      step (arguments + outputs + temporaries - aliased), or None.
  """

  snapshots: np.ndarray | None = None
  snapshot_steps: np.ndarray | None = None
  step_memory_bytes: int | None = None


# ----------------------------------------------------------------------------
# The starting prior: resolution, channels, random init.


def downsampling_factor(spec: Any) -> int:
  """The UNet's total down-sampling factor, ``2**(levels - 1)``."""
  return 2 ** (len(spec.block_out_channels) - 1)


def check_resolution(spec: Any, image_shape: Sequence[int], fn: str) -> int:
  """The square side of `image_shape`, checked against the UNet `spec`.

  Raises:
    ValueError: non-square images, or a side the UNet cannot down-sample
      (not divisible by `downsampling_factor`, or outside [16, 512]).
  """
  from jaxleak.diffusion import unet as unet_lib  # pylint: disable=g-import-not-at-top
  h, w = int(image_shape[0]), int(image_shape[1])
  if h != w:
    raise ValueError(f"{fn}: the victim's images must be square to be "
                     f"generated by the UNet, got {h}x{w}")
  factor = downsampling_factor(spec)
  if h % factor:
    raise ValueError(
        f"{fn}: argument 'resolution' ({h}) must be divisible by the UNet's "
        f"down-sampling factor {factor} ({len(spec.block_out_channels)} "
        f"levels); e.g. {max(factor, (h // factor) * factor)} or "
        f"{(h // factor + 1) * factor}")
  if not unet_lib.MIN_RESOLUTION <= h <= unet_lib.MAX_RESOLUTION:
    raise ValueError(
        f"{fn}: argument 'resolution' ({h}) must be in "
        f"[{unet_lib.MIN_RESOLUTION}, {unet_lib.MAX_RESOLUTION}]")
  return h


def check_prior_resolution(prior: Any, resolution: int,
                           fn: str = "diffusion_finetune") -> None:
  """Checks `resolution` against a prior's UNet before any data is loaded.

  Args:
    prior: as `resolve_prior` takes it ("random" uses the ablation's UNet).
    resolution: the victim's image side.
    fn: the caller's name for errors.

  Raises:
    ValueError: as `check_resolution`.
  """
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  if isinstance(prior, str) and prior == RANDOM_PRIOR:
    spec = diffusion.UNetSpec(block_out_channels=_RANDOM_BLOCKS)
  elif isinstance(prior, diffusion.Prior):
    spec = prior.spec
  else:
    spec = diffusion.load_prior(prior).spec
  check_resolution(spec, (resolution, resolution), fn)


def lift_prior(spec: Any, params: PyTree, resolution: int, channels: int
               ) -> tuple[Any, PyTree]:
  """The same UNet weights at another resolution and channel count.

  The resolution only changes the spec (the UNet is convolutional). For
  channels, a C-channel input kernel feeding C' channels is averaged over
  the old channels and repeated over the new ones (a grey image repeated
  over RGB gives the same features), and the output convolution's per-
  channel kernels and biases are averaged and repeated likewise.

  Returns:
    ``(spec', params')``.
  """
  new_spec = dataclasses.replace(spec, resolution=int(resolution),
                                 channels=int(channels))
  if channels == spec.channels:
    return new_spec, params
  unet = dict(params["unet"])

  def lift(kernel: Array, axis: int, divide: bool) -> Array:
    m = jnp.mean(kernel, axis=axis, keepdims=True)
    if divide:  # input channels: spread the summed response evenly
      m = m * spec.channels / channels
    reps = [1] * kernel.ndim
    reps[axis] = channels
    return jnp.tile(m, reps)

  conv_in = dict(unet["conv_in"])
  conv_in["kernel"] = lift(conv_in["kernel"], 2, True)
  conv_out = dict(unet["conv_out"])
  conv_out["kernel"] = lift(conv_out["kernel"], 3, False)
  conv_out["bias"] = lift(conv_out["bias"], 0, False)
  unet["conv_in"], unet["conv_out"] = conv_in, conv_out
  return new_spec, {**params, "unet": unet}


def resolve_prior(prior: Any, image_shape: Sequence[int], key: Array,
                  fn: str = "diffusion_finetune"):
  """A starting `diffusion.Prior` at the victim's image shape.

  Args:
    prior: a `diffusion.Prior`, a shipped prior name ("lfw_faces",
      "mnist"), a prior or diffusers-format folder, or "random" (the
      ablation: ``lfw_faces``'s architecture, fresh weights from `key`,
      the linear T=1000 schedule).
    image_shape: the victim's ``(H, W, C)``.
    key: PRNG key for the random UNet.
    fn: the caller's name for errors.

  Returns:
    A `Prior` whose spec has the victim's resolution and channels; its name
    says where the weights came from.
  """
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  channels = int(image_shape[2])
  if isinstance(prior, str) and prior == RANDOM_PRIOR:
    spec = diffusion.UNetSpec(resolution=32, channels=channels,
                              block_out_channels=_RANDOM_BLOCKS)
    res = check_resolution(spec, image_shape, fn)
    spec = dataclasses.replace(spec, resolution=res)
    params = diffusion.init_unet(spec, key)
    return diffusion.Prior(RANDOM_PRIOR, spec, params,
                           diffusion.linear_schedule(1000),
                           info={"source": "random initialisation"})
  if prior is None:
    raise ValueError(f"{fn}: argument 'prior' is required (a Prior, a shipped "
                     "prior name such as 'lfw_faces', a folder, or 'random')")
  if not isinstance(prior, diffusion.Prior):
    prior = diffusion.load_prior(prior)
  res = check_resolution(prior.spec, image_shape, fn)
  spec, params = lift_prior(prior.spec, prior.params, res, channels)
  info = {**prior.info, "trained_resolution": prior.resolution,
          "trained_channels": prior.channels}
  return dataclasses.replace(prior, spec=spec, params=params, info=info)


# ----------------------------------------------------------------------------
# Trainable subsets: a flat {path: leaf} dict of what moves, the rest frozen.


def _flat(tree: PyTree) -> dict[str, Array]:
  return flax.traverse_util.flatten_dict(tree, sep=_SEP)


def _up_prefixes(unet: PyTree, up_blocks: int, fn: str) -> tuple[str, ...]:
  ups = sorted((k for k in unet if k.startswith("up_blocks_")),
               key=lambda k: int(k.rsplit("_", 1)[1]))
  if not ups:
    raise ValueError(f"{fn}: the UNet has no up_blocks_* parameters")
  if not 1 <= up_blocks <= len(ups):
    raise ValueError(f"{fn}: argument 'up_blocks' must be in "
                     f"[1, {len(ups)}] for this UNet, got {up_blocks}")
  # up_blocks_{n-1} is the full-resolution end of a diffusers UNet.
  return tuple(ups[-up_blocks:]) + ("conv_norm_out", "conv_out")


def split_trainable(params: PyTree, trainable: str = "all", *, rank: int = 4,
                    up_blocks: int = 1, key: Array | None = None,
                    fn: str = "split_trainable") -> dict[str, Any]:
  """The trainable part of UNet `params` as a flat ``{path: leaf}`` dict.

  Args:
    params: UNet params ``{"unet": ..., ["class_embedding": ...]}``.
    trainable: "all", "up" or "lora" (see the module docstring).
    rank: LoRA rank r >= 0 (0: empty adapters; the UNet is unchanged).
    up_blocks: how many of the last up-blocks "up" trains.
    key: PRNG key for the LoRA ``A`` matrices.
    fn: the caller's name for errors.

  Returns:
    For "all"/"up" the selected leaves of ``params["unet"]`` by path; for
    "lora" ``{path: {"a": [kh·kw·c_in, r], "b": [r, c_out]}}`` for every
    4-D convolution kernel.

  Raises:
    ValueError: an unknown subset name, a negative rank, or an `up_blocks`
      outside the UNet's up-blocks.
  """
  validate.check_choice(trainable, "trainable", TRAINABLE_SUBSETS, fn=fn)
  flat = _flat(params["unet"])
  if trainable == "all":
    return dict(flat)
  if trainable == "up":
    prefixes = _up_prefixes(params["unet"], int(up_blocks), fn)
    return {p: v for p, v in flat.items() if p.split(_SEP, 1)[0] in prefixes}
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or (
      rank < 0):
    raise ValueError(f"{fn}: argument 'rank' must be an int >= 0, got "
                     f"{rank!r}")
  if key is None:
    key = jax.random.key(0)
  kernels = sorted(p for p, v in flat.items()
                   if p.endswith("kernel") and v.ndim == 4)
  out = {}
  for i, p in enumerate(kernels):
    kh, kw, cin, cout = flat[p].shape
    fan_in = kh * kw * cin
    a = jax.random.normal(jax.random.fold_in(key, i), (fan_in, int(rank)),
                          jnp.float32) / np.sqrt(fan_in)
    out[p] = {"a": a, "b": jnp.zeros((int(rank), cout), jnp.float32)}
  return out


def merge_trainable(params: PyTree, theta: dict[str, Any], trainable: str
                    ) -> PyTree:
  """The UNet params with the trainable part `theta` put back.

  For "lora" every adapted kernel becomes ``W_0 + reshape(A B)``.
  """
  flat = dict(_flat(params["unet"]))
  if trainable == "lora":
    for p, ab in theta.items():
      w = flat[p]
      flat[p] = w + (ab["a"] @ ab["b"]).reshape(w.shape).astype(w.dtype)
  else:
    flat.update(theta)
  return {**params, "unet": flax.traverse_util.unflatten_dict(flat, sep=_SEP)}


# ----------------------------------------------------------------------------
# The deterministic DDIM chain and the fine-tuning problem.


def ddim_chain(unet_apply: Callable[..., Array], params: PyTree, schedule: Any,
               x_T: Array, timesteps: Array, cond: Array | None = None, *,
               clip_x0: bool = True, remat: bool = True,
               loop: str = "unrolled") -> Array:
  """Deterministic DDIM (η = 0) from `x_T` through ``len(timesteps)`` UNet calls.

  Step i goes from ``timesteps[i]`` to ``timesteps[i + 1]`` (the last to
  -1, the clean image), exactly as `diffusion.ddim_sample` with ``eta=0``;
  differentiable in `params` and `x_T`.

  Args:
    unet_apply: ``eps = unet_apply(params, x_t, t, cond)``.
    params: UNet params.
    schedule: the `NoiseSchedule`.
    x_T: ``[B, R, R, C]`` starting noise.
    timesteps: int ``[S]`` strictly decreasing (``diffusion.ddim_timesteps``).
    cond: labels or None.
    clip_x0: clip each Tweedie estimate to [-1, 1] (as `ddim_sample`).
    remat: `jax.checkpoint` each UNet call (memory bounded in S).
    loop: "unrolled" (S copies in the program) or "scan".

  Returns:
    x̂₀ in diffusion space, shaped like `x_T`.
  """
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  eps_fn = jax.checkpoint(unet_apply) if remat else unet_apply
  ts = jnp.asarray(timesteps, jnp.int32)
  t_prev = jnp.concatenate([ts[1:], jnp.array([-1], jnp.int32)])

  def step(x, t, tp):
    eps = eps_fn(params, x, t, cond)
    return diffusion.ddim_step(schedule, x, t, tp, eps, eta=0.0,
                               clip_x0=clip_x0).x_prev

  if loop == "scan":
    x, _ = jax.lax.scan(lambda x, tt: (step(x, *tt), None), x_T, (ts, t_prev))
    return x
  x = x_T
  for i in range(ts.shape[0]):
    x = step(x, ts[i], t_prev[i])
  return x


@dataclasses.dataclass(frozen=True)
class FinetuneProblem:
  """Static description of the fine-tuning objective (hashable).

  Arrays (frozen UNet params, trainable weights, x_T, timesteps, victim
  params, target gradient, labels, loss weights) travel as arguments, so one
  compiled step serves every target, seed and weight.

  Attributes:
    unet_apply: ``eps = unet_apply(params, x_t, t, cond)``.
    victim_apply: ``logits = victim_apply(params, x)``.
    trainable: "all", "up" or "lora".
    distance: "cosine", "l2" (squared, relative to ‖g*‖²) or "cosine+l2".
    clip_x0: clip the Tweedie estimates inside the chain.
    remat: checkpoint each UNet call.
    loop: "unrolled" or "scan".
    local_steps, local_lr, local_batch_size: the victim's protocol.
    matmul_conv: victim convolutions with matrix-product kernel derivatives.
  """

  unet_apply: Callable[..., Array]
  victim_apply: Callable[..., Array]
  trainable: str = "all"
  distance: str = "cosine"
  clip_x0: bool = False
  remat: bool = True
  loop: str = "unrolled"
  local_steps: int = 1
  local_lr: float = 1e-3
  local_batch_size: int | None = None
  matmul_conv: bool = True

  def images(self, theta: dict[str, Any], consts: dict[str, Any]) -> Array:
    """The generated victim-space images ``img(DDIM_S(φ, x_T))``, unclipped."""
    params = merge_trainable(consts["frozen"], theta, self.trainable)
    x0 = ddim_chain(self.unet_apply, params, consts["schedule"],
                    consts["x_T"], consts["timesteps"], consts["cond"],
                    clip_x0=self.clip_x0, remat=self.remat, loop=self.loop)
    return (x0 + 1.0) * 0.5

  def gradient_distance(self, images: Array, consts: dict[str, Any]) -> Array:
    with (matmul_conv_lib.intercept() if self.matmul_conv
          else contextlib.nullcontext()):
      grads = objectives.local_update_gradient(
          self.victim_apply, consts["victim"], images, consts["labels"],
          local_steps=self.local_steps, local_lr=self.local_lr,
          local_batch_size=self.local_batch_size)
    target = consts["target"]
    d = jnp.zeros((), jnp.float32)
    if self.distance in ("cosine", "cosine+l2"):
      d = d + objectives.cosine_distance(grads, target)
    if self.distance in ("l2", "cosine+l2"):
      d = d + objectives.l2_distance(grads, target) / jnp.maximum(
          objectives.tree_sq_norm(target), 1e-30)
    return d

  def loss(self, theta: dict[str, Any], consts: dict[str, Any]
           ) -> tuple[Array, Array]:
    """``(L(φ), images)``: distance + α_TV TV + λ ‖φ - φ_0‖²."""
    hp = consts["hp"]
    images = self.images(theta, consts)
    loss = self.gradient_distance(images, consts)
    loss = loss + hp["tv"] * objectives.total_variation(images)
    prox = jax.tree.map(lambda a, b: jnp.sum(jnp.square(a - b)), theta,
                        consts["theta0"])
    loss = loss + hp["proximity"] * sum(jax.tree.leaves(prox), 0.0)
    return loss, images


def _optimizer() -> optax.GradientTransformation:
  # The learning rate is state, not a constant: changing it never recompiles.
  return optax.inject_hyperparams(optax.adam)(learning_rate=0.0)


@_compile.jit(static_argnums=0)
def finetune_step(problem: FinetuneProblem, theta, opt_state, consts):
  """One jitted update: ``(theta', opt_state', loss, images)``."""
  (loss, images), grads = jax.value_and_grad(problem.loss, has_aux=True)(
      theta, consts)
  updates, opt_state = _optimizer().update(grads, opt_state, theta)
  return optax.apply_updates(theta, updates), opt_state, loss, images


@_compile.jit(static_argnums=0)
def _evaluate(problem: FinetuneProblem, theta, consts):
  return problem.loss(theta, consts)


class FinetuneSetup(NamedTuple):
  """Everything one fine-tuning step needs (see `prepare`)."""

  problem: FinetuneProblem
  theta: dict[str, Any]
  opt_state: Any
  consts: dict[str, Any]
  prior: Any
  labels: labels_lib.LabelRecovery


def prepare(observation: threat_model.GradientObservation, *, key: Array,
            prior: Any = "lfw_faces", lr: float = 1e-4,
            sampling_steps: int = 10, trainable: str = "all", rank: int = 4,
            up_blocks: int = 1, distance: str = "cosine", tv: float = 0.0,
            proximity: float = 0.0, clip_x0: bool = False, remat: bool = True,
            loop: str = "unrolled", label_strategy: str = "auto",
            matmul_conv: bool = True, fn: str = "prepare") -> FinetuneSetup:
  """Starting prior, trainable weights, Adam state and constants.

  Arguments as `diffusion_finetune` (`key` a typed PRNG key). `finetune_step`
  applied to ``(setup.problem, setup.theta, setup.opt_state,
  setup.consts)`` is one fine-tuning update.
  """
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  k_noise, k_lora, k_prior = jax.random.split(key, 3)
  prior = resolve_prior(prior, observation.image_shape, k_prior, fn)
  validate.check_in_range(sampling_steps, "sampling_steps", 1,
                          prior.schedule.num_timesteps, fn=fn)
  theta = split_trainable(prior.params, trainable, rank=rank,
                          up_blocks=up_blocks, key=k_lora, fn=fn)
  rec = labels_lib.recover_labels(observation, label_strategy)
  problem = FinetuneProblem(
      unet_apply=prior.apply_fn, victim_apply=observation.apply_fn,
      trainable=trainable, distance=distance, clip_x0=bool(clip_x0),
      remat=bool(remat), loop=loop, local_steps=observation.local_steps,
      local_lr=observation.local_lr,
      local_batch_size=observation.local_batch_size,
      matmul_conv=bool(matmul_conv))
  batch = observation.batch_size
  consts = {
      "frozen": prior.params, "theta0": theta,
      "x_T": initial_noise(prior, batch, k_noise),
      "timesteps": jnp.asarray(diffusion.ddim_timesteps(
          prior.schedule.num_timesteps, sampling_steps), jnp.int32),
      "cond": None, "schedule": prior.schedule,
      "victim": observation.params, "target": observation.gradient,
      "labels": jnp.asarray(rec.labels, jnp.int32),
      "hp": {"tv": jnp.float32(tv), "proximity": jnp.float32(proximity)}}
  opt_state = _optimizer().init(theta)
  opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
  return FinetuneSetup(problem, theta, opt_state, consts, prior, rec)


def initial_noise(prior: Any, batch: int, key: Array) -> Array:
  """The fixed ``x_T`` ``[batch, R, R, C]`` of the chain.

  N(0, I), except for a greyscale prior lifted to C > 1 channels
  (`lift_prior`): the lifted UNet sees only the channel mean, so it cannot
  remove noise that differs between channels, and independent per-channel
  x_T ends the chain as saturated colour noise (measured: 4.7 dB at step 0
  on a 64 px sample image with ``lfw_faces``). Its x_T is one N(0, I)
  channel repeated C times, so the chain starts as the prior's own grey
  sample; colour comes from the fine-tuning.
  """
  shape = (int(batch),) + tuple(prior.image_shape)
  trained = prior.info.get("trained_channels", prior.channels)
  if trained == 1 and prior.channels > 1:
    grey = jax.random.normal(key, shape[:-1] + (1,), jnp.float32)
    return jnp.repeat(grey, prior.channels, axis=-1)
  return jax.random.normal(key, shape, jnp.float32)


def step_memory(setup: FinetuneSetup) -> dict[str, int]:
  """XLA's memory analysis of the compiled fine-tuning step, in bytes.

  ``total_bytes`` = arguments + outputs + temporaries - aliased: what the
  step holds at its peak on the device (host memory on CPU), compilation
  excluded. Empty if the backend has no memory analysis.
  """
  try:
    stats = finetune_step.lower(setup.problem, setup.theta, setup.opt_state,
                                setup.consts).compile().memory_analysis()
  except (AttributeError, NotImplementedError):
    return {}
  if stats is None:
    return {}
  out = {k: int(getattr(stats, f"{k}_size_in_bytes"))
         for k in ("argument", "output", "temp", "alias", "generated_code")}
  out["total_bytes"] = (out["argument"] + out["output"] + out["temp"]
                        - out["alias"])
  return out


def _snapshot_steps(steps: int, n: int) -> list[int]:
  return sorted(set(np.linspace(0, steps, max(n, 2)).round().astype(int)))


def diffusion_finetune(
    observation: threat_model.GradientObservation, *, key: Any,
    ground_truth: Any = None, callback: Any = None,
    prior: Any = "lfw_faces", steps: int = 200, lr: float = 1e-4,
    sampling_steps: int = 10, trainable: str = "all", rank: int = 4,
    up_blocks: int = 1, distance: str = "cosine", tv: float = 0.0,
    proximity: float = 0.0, clip_x0: bool = False, remat: bool = True,
    loop: str = "unrolled", label_strategy: str = "auto",
    matmul_conv: bool = True, snapshots: int = 6, log_every: int = 10,
    measure_memory: bool = False) -> FinetuneInversionResult:
  """Gradient-guided diffusion fine-tuning (Meng et al., arXiv 2406.09484).

  Fine-tunes the (trainable part of the) UNet φ of a diffusion prior with
  Adam so that the deterministic S-step DDIM sample from a fixed x_T,
  ``x̂₀(φ) = DDIM_S(φ, x_T)``, produces victim gradients matching the leaked
  ``g*``; the image is never a free variable. See the module docstring for
  the objective and what is reconstructed. Batch B gets B fixed noises.

  Args:
    observation: the attacker's view (`observe`).
    key: PRNG key or int seed (x_T, LoRA initialisation, random prior).
    ground_truth: private images, or ``(images, labels)``, for metrics only.
    callback: ``callback(0, step, loss)`` every `log_every` updates.
    prior: starting weights: a `diffusion.Prior`, a shipped name
      ("lfw_faces", default; "mnist"), a prior or diffusers-format folder,
      or "random" (the randomly initialised ablation).
    steps: fine-tuning updates K.
    lr: Adam learning rate.
    sampling_steps: DDIM steps S of the chain.
    trainable: "all", "up" or "lora".
    rank: LoRA rank (trainable="lora"; 0 leaves the UNet unchanged).
    up_blocks: trained up-blocks (trainable="up").
    distance: "cosine" (Inverting Gradients), "l2" (relative squared) or
      "cosine+l2".
    tv: total-variation weight α_TV on the generated image.
    proximity: λ of the L2 proximity ``‖φ - φ_0‖²`` (for "lora" on the
      adapter factors).
    clip_x0: clip the Tweedie estimates in the chain, as DDIM sampling
      does. Off by default: where x̂₀ saturates, DDIM's clipped step no
      longer depends on the UNet's output, so the fine-tuning gradient of
      those pixels vanishes (with a random UNet, nearly all of them).
    remat: `jax.checkpoint` each UNet call.
    loop: "unrolled" or "scan".
    label_strategy: "auto", "known", "idlg", "analytic" or "yin".
    matmul_conv: victim convolutions with matrix-product kernel derivatives.
    snapshots: how many generated images along the fine-tuning to keep
      (evenly spaced, step 0 and the last included).
    log_every: updates between callbacks.
    measure_memory: record XLA's memory analysis of the compiled step.

  Returns:
    A `FinetuneInversionResult`: the lowest-loss iterate's images,
    ``loss_history`` (K + 1 values: before each update and after the last),
    and the snapshots.

  Raises:
    ValueError: an unknown `trainable`/`distance`/`loop`, a resolution the
      UNet cannot down-sample, negative weights or rank, or bad step counts.
  """
  fn = "diffusion_finetune"
  t0 = time.perf_counter()
  from jaxleak.attacks.inversion import attacks as attacks_lib  # pylint: disable=g-import-not-at-top
  attacks_lib._check_observation(observation, fn)  # pylint: disable=protected-access
  key = validate.canonical_key(key, fn)
  steps = validate.check_int(steps, "steps", fn=fn)
  sampling_steps = validate.check_int(sampling_steps, "sampling_steps", fn=fn)
  log_every = validate.check_int(log_every, "log_every", fn=fn)
  snapshots = validate.check_int(snapshots, "snapshots", fn=fn)
  validate.check_choice(trainable, "trainable", TRAINABLE_SUBSETS, fn=fn)
  validate.check_choice(distance, "distance", DISTANCES, fn=fn)
  validate.check_choice(loop, "loop", LOOPS, fn=fn)
  validate.check_positive(lr, "lr", fn=fn, allow_zero=True)
  validate.check_positive(tv, "tv", fn=fn, allow_zero=True)
  validate.check_positive(proximity, "proximity", fn=fn, allow_zero=True)
  gt_images, gt_labels = attacks_lib._split_ground_truth(  # pylint: disable=protected-access
      ground_truth, observation, fn)
  setup = prepare(
      observation, key=key, prior=prior, lr=lr, sampling_steps=sampling_steps,
      trainable=trainable, rank=rank, up_blocks=up_blocks, distance=distance,
      tv=tv, proximity=proximity, clip_x0=clip_x0, remat=remat, loop=loop,
      label_strategy=label_strategy, matmul_conv=matmul_conv, fn=fn)
  problem, theta, opt_state, consts, prior, rec = setup
  memory = (step_memory(setup).get("total_bytes") if measure_memory
            else None)

  keep = set(_snapshot_steps(steps, snapshots))
  snaps, snap_steps, losses = [], [], []
  best_loss, best_images = np.inf, None
  for k in range(steps + 1):
    if k < steps:
      theta_next, opt_state, loss, images = finetune_step(
          problem, theta, opt_state, consts)
    else:
      loss, images = _evaluate(problem, theta, consts)
    loss = float(loss)
    losses.append(loss)
    if np.isfinite(loss) and loss < best_loss:
      best_loss, best_images = loss, images
    if k in keep:
      snaps.append(np.asarray(jnp.clip(images, 0.0, 1.0), np.float32))
      snap_steps.append(k)
    if k < steps:
      theta = theta_next
      if callback is not None and ((k + 1) % log_every == 0 or k + 1 == steps):
        callback(0, k + 1, loss)
  if best_images is None:  # every iterate diverged: report the last
    best_images = images
  out = np.asarray(jnp.clip(best_images, 0.0, 1.0), np.float32)
  wall = time.perf_counter() - t0
  metrics = None
  if gt_images is not None:
    metrics = results.evaluate(out, np.asarray(rec.labels), gt_images,
                               gt_labels)
  history = np.asarray(losses, np.float64)
  finite = np.isfinite(history)
  hyper = {
      "prior": prior.name,
      "prior_trained_resolution": prior.info.get("trained_resolution"),
      "resolution": prior.resolution, "steps": steps, "lr": float(lr),
      "sampling_steps": sampling_steps, "trainable": trainable,
      "trainable_params": int(sum(np.size(x)
                                  for x in jax.tree.leaves(theta))),
      "distance": distance, "tv": float(tv), "proximity": float(proximity),
      "clip_x0": bool(clip_x0), "remat": bool(remat), "loop": loop,
      "label_strategy": rec.strategy, "matmul_conv": bool(matmul_conv),
      "best_step": (int(np.argmin(np.where(finite, history, np.inf)))
                    if finite.any() else None)}
  if trainable == "lora":
    hyper["rank"] = int(rank)
  if trainable == "up":
    hyper["up_blocks"] = int(up_blocks)
  return FinetuneInversionResult(
      attack=fn, images=out, labels=np.asarray(rec.labels, np.int32),
      loss_history=history, wall_time_s=wall, metrics=metrics,
      label_confidence=rec.confidence, restart_losses=(float(best_loss),),
      hyperparams=hyper, snapshots=np.stack(snaps),
      snapshot_steps=np.asarray(snap_steps, np.int32),
      step_memory_bytes=memory)


registry.register_attack("diffusion_finetune", diffusion_finetune)
