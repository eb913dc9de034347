"""Pixel-space diffusion UNet: a thin, pure wrapper over diffusers' Flax UNet.

This module is jaxleak's only boundary with diffusers. It builds a
`FlaxUNet2DConditionModel` from a small frozen `UNetSpec` and exposes the
network as a pure function

  eps = apply_fn(params, x_t, t, cond)

with NHWC images (the rest of jaxleak is NHWC; diffusers is NCHW), integer
class labels as the optional condition, and params as a plain pytree
``{"unet": <diffusers params>, "class_embedding": [num_classes + 1, D]}``.
The function works under `jax.jit`, `jax.grad` (with respect to `x_t` and to
`params`), `jax.vmap` and `jax.checkpoint`.

Class conditioning: the label's row of a learned
embedding table is the (length-1) cross-attention context of the UNet's
cross-attention blocks. The table has one extra, last row: the "null" class
used for classifier-free guidance.

Unconditional UNets use no cross-attention at all (down/up blocks without
attention and no mid block, i.e. ``mid_block_type=None``): with a constant
context a cross-attention layer can only add a constant, so it would be pure
cost. diffusers still requires an `encoder_hidden_states` argument; it gets a
zero context of width `cross_attention_dim`, which no layer reads.

The module also holds `FixedFlaxDDPMScheduler`, diffusers' DDPM scheduler with
its `step` repaired for jax >= 0.10 (see its docstring), so that diffusers
stays behind this one file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import dataclasses
import functools
import os
from typing import Any

import diffusers.utils.logging
import jax
import jax.numpy as jnp
import numpy as np

from jaxleak._src import matmul_conv
from jaxleak._src import tree_util
from jaxleak._src import validate

__all__ = (
    "UNetSpec",
    "UNetApply",
    "MIN_RESOLUTION",
    "MAX_RESOLUTION",
    "FLAX_WEIGHTS_NAME",
    "build_unet",
    "init_unet",
    "make_unet_apply",
    "param_count",
    "to_model_space",
    "to_image_space",
    "save_unet_diffusers",
    "load_unet_diffusers",
    "spec_from_diffusers_config",
    "FixedFlaxDDPMScheduler",
    "quiet_diffusers",
)

MIN_RESOLUTION = 16
MAX_RESOLUTION = 512
# diffusers' Flax weights file name inside a save_pretrained folder.
FLAX_WEIGHTS_NAME = "diffusion_flax_model.msgpack"
# diffusers hard-codes GroupNorm(num_groups=32) in every block.
_GROUPS = 32


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
  """Silences diffusers' logger inside the block only, then restores it.

  diffusers 0.35-0.39 log "Flax classes are deprecated" from every Flax
  module's ``setup`` (so on every trace of the UNet) and from every Flax
  scheduler's constructor (and from their class bodies on first import).
  jaxleak wraps its own diffusers calls in this
  context instead of lowering diffusers' verbosity for the whole process.
  Hub access is never attempted: loading passes ``local_files_only=True``.
  """
  previous = diffusers.utils.logging.get_verbosity()
  diffusers.utils.logging.set_verbosity_error()
  try:
    yield
  finally:
    diffusers.utils.logging.set_verbosity(previous)


# diffusers' Flax modules log the deprecation once more when their classes
# are defined, i.e. on first import.
with quiet_diffusers():
  from diffusers import FlaxDDPMScheduler
  from diffusers import FlaxUNet2DConditionModel

UNetApply = Callable[[Any, jax.Array, jax.Array, jax.Array | None],
                     jax.Array]
"""`eps = apply_fn(params, x_t, t, cond)`; NHWC in, NHWC out."""


@dataclasses.dataclass(frozen=True)
class UNetSpec:
  """Architecture of a pixel-space diffusion UNet (hashable, immutable).

  Attributes:
    resolution: image height = width, in [16, 512]; must be divisible by
      2 ** (len(block_out_channels) - 1).
    channels: image channels (1 greyscale, 3 RGB); in = out channels.
    block_out_channels: channels per resolution level; multiples of 32
      (diffusers uses 32 GroupNorm groups).
    attention: one bool per level (None: automatic, see below); True puts cross-attention on the class
      embedding in that level's down and up block. Cross-attention is about
      10x more expensive on CPU, so keep it at the lowest resolutions. An
      unconditional UNet normally has none (its context is all zeros); it
      is allowed so that foreign diffusers checkpoints load.
    layers_per_block: ResNet layers per down block (up blocks get one more).
    num_classes: 0 for an unconditional UNet, else the number of classes.
    cross_attention_dim: width of the class embedding (the context).
    attention_heads: heads per attention layer.
    mid_attention: a cross-attention mid block (False: no mid block).
      None (default) means automatic: conditional UNets get attention at the
      lowest-resolution level and in the mid block, unconditional ones none.
    self_attention: if False (default), the attention blocks of the down/up
      levels attend only to the class context (diffusers'
      `only_cross_attention`), skipping spatial self-attention, which
      dominates their cost on CPU. The mid block always has both.
  """

  resolution: int = 32
  channels: int = 1
  block_out_channels: tuple[int, ...] = (32, 64, 64)
  attention: tuple[bool, ...] | None = None
  layers_per_block: int = 1
  num_classes: int = 0
  cross_attention_dim: int = 64
  attention_heads: int = 4
  mid_attention: bool | None = None
  self_attention: bool = False

  def __post_init__(self):
    fn = "UNetSpec"
    object.__setattr__(self, "block_out_channels",
                       tuple(int(c) for c in self.block_out_channels))
    # None = automatic: class-conditional UNets attend to the class at the
    # lowest resolution and in the mid block; unconditional ones not at all.
    cond = bool(self.num_classes)
    attention = self.attention
    if attention is None:
      attention = [False] * len(self.block_out_channels)
      if cond and attention:
        attention[-1] = True
    object.__setattr__(self, "attention", tuple(bool(a) for a in attention))
    if self.mid_attention is None:
      object.__setattr__(self, "mid_attention", cond)
    for name, low, high in (("resolution", MIN_RESOLUTION, MAX_RESOLUTION),
                            ("channels", 1, 64), ("layers_per_block", 1, 16),
                            ("num_classes", 0, 1_000_000),
                            ("cross_attention_dim", 1, 8192),
                            ("attention_heads", 1, 1024)):
      validate.check_int(getattr(self, name), name, fn=fn, low=low, high=high)
    levels = len(self.block_out_channels)
    if levels < 1:
      raise ValueError(f"{fn}: argument 'block_out_channels' must be non-empty")
    for c in self.block_out_channels:
      if c <= 0 or c % _GROUPS:
        raise ValueError(
            f"{fn}: argument 'block_out_channels' must hold positive multiples "
            f"of {_GROUPS} (diffusers' GroupNorm groups), got "
            f"{self.block_out_channels}")
    if len(self.attention) != levels:
      raise ValueError(
          f"{fn}: argument 'attention' must have one bool per level "
          f"({levels}), got {self.attention}")
    factor = 2 ** (levels - 1)
    if self.resolution % factor:
      raise ValueError(
          f"{fn}: argument 'resolution' ({self.resolution}) must be divisible "
          f"by 2**(levels-1) = {factor} for {levels} levels")
    if any(self.attention) or self.mid_attention:
      for c in self.block_out_channels:
        if c % self.attention_heads:
          raise ValueError(
              f"{fn}: argument 'attention_heads' ({self.attention_heads}) must "
              f"divide every block width {self.block_out_channels}")
    if self.num_classes and not (any(self.attention) or self.mid_attention):
      raise ValueError(
          f"{fn}: a class-conditional UNet (num_classes={self.num_classes}) "
          "needs cross-attention somewhere: set argument 'attention' or "
          "'mid_attention'")

  @property
  def conditional(self) -> bool:
    return self.num_classes > 0

  @property
  def null_class(self) -> int:
    """Label of the "null" (unconditional) class row: `num_classes`."""
    return self.num_classes

  def diffusers_config(self) -> dict[str, Any]:
    """Keyword arguments of the equivalent `FlaxUNet2DConditionModel`."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D"
                 for a in self.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D"
               for a in reversed(self.attention))
    mid = "UNetMidBlock2DCrossAttn" if self.mid_attention else None
    return dict(
        sample_size=self.resolution,
        in_channels=self.channels,
        out_channels=self.channels,
        down_block_types=down,
        up_block_types=up,
        mid_block_type=mid,
        block_out_channels=self.block_out_channels,
        layers_per_block=self.layers_per_block,
        # diffusers' (mis)named argument: it is the number of heads.
        attention_head_dim=self.attention_heads,
        cross_attention_dim=self.cross_attention_dim,
        only_cross_attention=not self.self_attention,
        use_linear_projection=True,
        flip_sin_to_cos=True,
        freq_shift=0,
    )

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["block_out_channels"] = list(self.block_out_channels)
    d["attention"] = list(self.attention)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> UNetSpec:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"UNetSpec.from_dict: unknown field(s) {unknown}")
    d = dict(d)
    for k in ("block_out_channels", "attention"):
      if k in d:
        d[k] = tuple(d[k])
    return cls(**d)


@functools.lru_cache(maxsize=64)
def build_unet(spec: UNetSpec) -> FlaxUNet2DConditionModel:
  """Returns the (stateless) diffusers Flax module for `spec` (cached)."""
  return FlaxUNet2DConditionModel(**spec.diffusers_config())


def init_unet(spec: UNetSpec, key: jax.Array) -> dict[str, Any]:
  """Initialises UNet params (and the class-embedding table if conditional).

  Args:
    spec: the architecture.
    key: a PRNG key.

  Returns:
    ``{"unet": params}`` plus ``"class_embedding"`` (float32
    [num_classes + 1, cross_attention_dim], N(0, 1) rows; the last row is the
    null class) for class-conditional specs.
  """
  module = build_unet(spec)
  k_unet, k_emb = jax.random.split(key)
  # Jitted init is ~2x faster than eager init on CPU.
  with quiet_diffusers():
    unet_params = jax.jit(module.init_weights)(k_unet)
  params = {"unet": _unfreeze(unet_params)}
  if spec.conditional:
    params["class_embedding"] = jax.random.normal(
        k_emb, (spec.num_classes + 1, spec.cross_attention_dim), jnp.float32)
  return params


def _unfreeze(tree: Any) -> Any:
  # FrozenDicts flatten with different key types than dicts; keep plain dicts
  # so optax/orbax/jax.tree see one structure everywhere.
  if hasattr(tree, "items"):
    return {k: _unfreeze(v) for k, v in tree.items()}
  return tree


@functools.lru_cache(maxsize=64)
def make_unet_apply(spec: UNetSpec, fast_conv: bool = True) -> UNetApply:
  """Returns the pure `eps = apply_fn(params, x_t, t, cond)` for `spec`.

  The same function object is returned for equal specs, so `jax.jit` caches
  hit across calls.

  Args of the returned function:
    params: as returned by `init_unet`.
    x_t: NHWC float images in diffusion space, [B, R, R, C].
    t: diffusion timesteps, a scalar or [B] (int or float).
    cond: int labels [B] in [0, num_classes] (num_classes = null class) for
      a class-conditional UNet; must be None for an unconditional one.

  Returns of the returned function:
    The predicted noise, NHWC, same shape and dtype as `x_t`.
  """
  module = build_unet(spec)

  def apply_fn(params: Any, x_t: jax.Array, t: jax.Array,
               cond: jax.Array | None = None) -> jax.Array:
    x_t = jnp.asarray(x_t)
    batch = x_t.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
    if spec.conditional:
      if cond is None:
        # Missing labels mean "unconditional": the null class.
        cond = jnp.full((batch,), spec.null_class, jnp.int32)
      table = params["class_embedding"]
      # One-hot matmul rather than a gather: it shards along the batch and
      # its gradient is a dense matmul.
      onehot = jax.nn.one_hot(jnp.asarray(cond, jnp.int32), table.shape[0],
                              dtype=table.dtype)
      context = (onehot @ table)[:, None, :]
    else:
      if cond is not None:
        raise ValueError(
            "unet apply: argument 'cond' must be None for an unconditional "
            f"UNet, got an array of shape {jnp.shape(cond)}")
      context = jnp.zeros((batch, 1, spec.cross_attention_dim), x_t.dtype)
    # Per-tap kernel derivative: no im2col buffer at the UNet's sizes.
    with (matmul_conv.intercept("per_tap") if fast_conv else _nullcontext(),
          quiet_diffusers()):
      out = module.apply({"params": params["unet"]},
                         jnp.transpose(x_t, (0, 3, 1, 2)), t, context,
                         return_dict=False)[0]
    return jnp.transpose(out, (0, 2, 3, 1))

  return apply_fn


_nullcontext = contextlib.nullcontext


param_count = tree_util.param_count
"""Total number of scalars in a UNet params pytree (`jaxleak._src.tree_util`)."""


def to_model_space(images: jax.Array) -> jax.Array:
  """Maps images in [0, 1] to diffusion space [-1, 1]."""
  return jnp.asarray(images) * 2.0 - 1.0


def to_image_space(x: jax.Array, clip: bool = True) -> jax.Array:
  """Maps diffusion-space images [-1, 1] to [0, 1] (clipped by default)."""
  out = (jnp.asarray(x) + 1.0) * 0.5
  return jnp.clip(out, 0.0, 1.0) if clip else out


# -- diffusers format -----------------------------------------------------------


def save_unet_diffusers(spec: UNetSpec, unet_params: Any, path: str,
                        dtype: Any = None) -> None:
  """Writes `unet_params` with diffusers' `save_pretrained` (config + msgpack).

  Args:
    spec: the architecture (becomes diffusers' config.json).
    unet_params: the ``params["unet"]`` subtree.
    path: the output folder (created).
    dtype: optional storage dtype (e.g. float16 to halve the file).
  """
  if dtype is not None:
    unet_params = jax.tree.map(lambda x: np.asarray(x).astype(dtype),
                               unet_params)
  else:
    unet_params = jax.tree.map(np.asarray, unet_params)
  with quiet_diffusers():
    build_unet(spec).save_pretrained(path, params=unet_params)


def load_unet_diffusers(path: str) -> tuple[dict[str, Any], Any]:
  """Loads a diffusers-format Flax UNet folder, offline.

  Args:
    path: a local folder written by `save_pretrained` (config.json and
      diffusion_flax_model.msgpack).

  Returns:
    `(diffusers_config, params)` with params as float32 plain dicts.

  Raises:
    FileNotFoundError: `path` is not a folder or lacks the files.
    ValueError: the files are unreadable or not a Flax UNet2DCondition model.
  """
  if not os.path.isdir(path):
    # Never let diffusers treat a missing folder as a hub repo id.
    raise FileNotFoundError(
        f"load_unet_diffusers: argument 'path' {path!r} is not a local folder")
  for name in ("config.json", FLAX_WEIGHTS_NAME):
    if not os.path.isfile(os.path.join(path, name)):
      raise FileNotFoundError(
          f"load_unet_diffusers: folder {path!r} (argument 'path') has no "
          f"{name}; expected a diffusers Flax save_pretrained folder")
  try:
    with quiet_diffusers():
      module, params = FlaxUNet2DConditionModel.from_pretrained(
          path, local_files_only=True)
  except Exception as e:  # diffusers raises OSError/EnvironmentError/ValueError.
    raise ValueError(
        f"load_unet_diffusers: cannot read the diffusers UNet in {path!r} "
        f"(argument 'path'): {type(e).__name__}: {e}") from e
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _unfreeze(params))
  return dict(module.config), params


def spec_from_diffusers_config(config: dict[str, Any], num_classes: int = 0
                               ) -> UNetSpec:
  """Rebuilds a `UNetSpec` from a diffusers UNet config (where expressible).

  Raises:
    ValueError: the config uses features `UNetSpec` cannot express (e.g. a
      different in/out channel count, text-time embeddings, several
      transformer layers per block).
  """
  fn = "spec_from_diffusers_config"
  if config.get("in_channels") != config.get("out_channels"):
    raise ValueError(f"{fn}: in_channels != out_channels is not supported")
  if config.get("addition_embed_type") is not None:
    raise ValueError(f"{fn}: addition_embed_type is not supported")
  down = tuple(config["down_block_types"])
  attention = tuple(b.startswith("CrossAttn") for b in down)
  mid = config.get("mid_block_type")
  heads = config.get("attention_head_dim", 8)
  if not isinstance(heads, int):
    if len(set(heads)) != 1:
      raise ValueError(f"{fn}: per-level attention heads are not supported")
    heads = heads[0]
  only_cross = config.get("only_cross_attention", False)
  if not isinstance(only_cross, bool):
    if len(set(only_cross)) != 1:
      raise ValueError(f"{fn}: per-level only_cross_attention is not supported")
    only_cross = bool(only_cross[0])
  spec = UNetSpec(
      resolution=int(config["sample_size"]),
      channels=int(config["in_channels"]),
      block_out_channels=tuple(config["block_out_channels"]),
      attention=attention,
      layers_per_block=int(config["layers_per_block"]),
      num_classes=int(num_classes),
      cross_attention_dim=int(config["cross_attention_dim"]),
      attention_heads=int(heads),
      mid_attention=mid == "UNetMidBlock2DCrossAttn",
      self_attention=not only_cross,
  )
  # Everything else must match what UNetSpec builds, or the params would be
  # applied to a different network.
  rebuilt = spec.diffusers_config()
  for key, value in rebuilt.items():
    got = config.get(key, value)
    if key == "only_cross_attention" and not isinstance(got, bool):
      got = bool(got[0])
    if isinstance(got, list):
      got = tuple(got)
    if got != value:
      raise ValueError(
          f"{fn}: diffusers config field {key!r}={got!r} is not supported "
          f"(jaxleak builds {value!r})")
  return spec


# -- DDPM scheduler fix -----------------------------------------------------------


class FixedFlaxDDPMScheduler(FlaxDDPMScheduler):
  """diffusers' `FlaxDDPMScheduler` with a `step` that runs on jax >= 0.10.

  The parent computes the "fixed_small" variance with
  ``jnp.clip(variance, a_min=1e-20)``; jax 0.10 removed the `a_min` keyword,
  so every `step` with t > 0 raises a TypeError. This subclass computes the
  same floor with `jnp.maximum` and is otherwise unchanged.
  """

  def _get_variance(self, state, t, predicted_variance=None,
                    variance_type=None):
    variance_type = variance_type or self.config.variance_type
    if variance_type not in ("fixed_small", "fixed_small_log"):
      return super()._get_variance(state, t, predicted_variance, variance_type)
    ab = state.common.alphas_cumprod
    ab_t = ab[t]
    ab_prev = jnp.where(t > 0, ab[t - 1], jnp.array(1.0, dtype=self.dtype))
    variance = (1 - ab_prev) / (1 - ab_t) * state.common.betas[t]
    variance = jnp.maximum(variance, 1e-20)
    return jnp.log(variance) if variance_type == "fixed_small_log" else variance
