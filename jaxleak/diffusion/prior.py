"""Diffusion priors: a trained UNet with its schedule, saved, loaded by name.

A `Prior` bundles everything an attack needs to run a pretrained diffusion
model: the architecture (`UNetSpec`), params, noise schedule, resolution,
channels and classes. Priors are stored in one of two folder formats:

* ``"diffusers"``: diffusers' own `save_pretrained` files (``config.json``,
  ``diffusion_flax_model.msgpack``) plus ``jaxleak_prior.json`` with the
  schedule, class names, class-embedding table and training record. Any
  diffusers Flax UNet2DCondition folder without the jaxleak file also loads,
  as an unconditional prior with the DDPM linear schedule.
* ``"orbax"``: ``jaxleak_prior.json`` plus an orbax checkpoint
  (``checkpoint/``) of the whole params pytree, written through
  `jaxleak.checkpoint.Checkpointer` (checksummed).

jaxleak ships small priors trained with ``jaxleak train-prior`` as package
assets (``jaxleak/assets/priors/<name>``); `load_prior("mnist")` loads one by
name and `available_priors()` lists them. Named priors live in `PRIORS`, the
same `Registry` as every other jaxleak registry: ``PRIORS.register("mine",
"/path/to/prior")`` makes ``load_prior("mine")`` (and every attack's
``prior="mine"``) load that folder. Loading never touches the network.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak import checkpoint as checkpoint_lib
from jaxleak._src import validate
from jaxleak._src.registry import Registry
from jaxleak.diffusion import sampling
from jaxleak.diffusion import schedule as schedule_lib
from jaxleak.diffusion import unet as unet_lib
from jaxleak.diffusion.schedule import NoiseSchedule
from jaxleak.diffusion.unet import UNetSpec

__all__ = (
    "Prior",
    "PriorError",
    "FORMATS",
    "PRIOR_FILE",
    "PRIORS",
    "assets_dir",
    "available_priors",
    "load_prior",
    "random_prior",
    "save_prior",
    "generate",
)

FORMATS = ("diffusers", "orbax")
PRIOR_FILE = "jaxleak_prior.json"
_FORMAT_VERSION = 1
_ALIASES = {"mnist": "mnist_subset", "lfw": "lfw_faces", "faces": "lfw_faces"}


class PriorError(ValueError):
  """A prior folder exists but is incomplete, corrupt or inconsistent."""


@dataclasses.dataclass(frozen=True, eq=False)
class Prior:
  """A trained pixel-space diffusion model.

  Attributes:
    name: a short identifier (e.g. "mnist_subset").
    spec: the UNet architecture.
    params: the UNet params pytree (``{"unet": ..., "class_embedding": ...}``),
      normally the EMA params of training.
    schedule: the noise schedule it was trained with.
    class_names: one name per class of a class-conditional prior, else ().
    info: free-form JSON record (training command, steps, wall time, ...).
  """

  name: str
  spec: UNetSpec
  params: Any
  schedule: NoiseSchedule
  class_names: tuple[str, ...] = ()
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def resolution(self) -> int:
    return self.spec.resolution

  @property
  def channels(self) -> int:
    return self.spec.channels

  @property
  def num_classes(self) -> int:
    return self.spec.num_classes

  @property
  def conditional(self) -> bool:
    return self.spec.conditional

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.resolution, self.resolution, self.channels)

  @property
  def apply_fn(self) -> unet_lib.UNetApply:
    """The pure `eps = apply_fn(params, x_t, t, cond)`."""
    return unet_lib.make_unet_apply(self.spec)

  def eps(self, x_t: jax.Array, t: jax.Array,
          cond: jax.Array | None = None) -> jax.Array:
    """Predicted noise with this prior's params (see `apply_fn`)."""
    return self.apply_fn(self.params, x_t, t, cond)

  def __repr__(self) -> str:
    return (f"Prior(name={self.name!r}, resolution={self.resolution}, "
            f"channels={self.channels}, num_classes={self.num_classes}, "
            f"params={unet_lib.param_count(self.params)}, "
            f"T={self.schedule.num_timesteps})")


def assets_dir() -> pathlib.Path:
  """The folder of the priors shipped inside the jaxleak package."""
  return pathlib.Path(__file__).resolve().parent.parent / "assets" / "priors"


def _is_folder_path(entry: Any) -> bool:
  return isinstance(entry, (str, os.PathLike))


def _shipped() -> dict[str, pathlib.Path]:
  root = assets_dir()
  if not root.is_dir():
    return {}
  return {p.name: p for p in sorted(root.iterdir())
          if (p / PRIOR_FILE).is_file()}


PRIORS: Registry[str | os.PathLike] = Registry(
    "prior", _shipped(), check=_is_folder_path,
    requirement="a prior folder path (str or os.PathLike)")
"""Named prior folders (`available()`, `get(name)`, `register(name, path)`);
the shipped priors are registered under their folder names."""


def available_priors() -> tuple[str, ...]:
  """Names of the registered priors (``PRIORS.available()``), sorted."""
  return tuple(PRIORS.available())


def _resolve(name_or_path: str | os.PathLike) -> pathlib.Path:
  fn = "load_prior"
  if not isinstance(name_or_path, (str, os.PathLike)):
    raise TypeError(
        f"{fn}: argument 'name_or_path' must be a prior name or a folder "
        f"path, got {type(name_or_path).__name__}")
  path = pathlib.Path(os.fspath(name_or_path)).expanduser()
  if path.is_dir():
    return path
  name = _ALIASES.get(str(name_or_path), str(name_or_path))
  if name in PRIORS:
    return pathlib.Path(os.fspath(PRIORS.get(name))).expanduser()
  names = ", ".join(repr(n) for n in available_priors()) or "(none installed)"
  aliases = ", ".join(f"{a!r} -> {t!r}" for a, t in sorted(_ALIASES.items()))
  raise FileNotFoundError(
      f"{fn}: argument 'name_or_path'={os.fspath(name_or_path)!r} is neither "
      f"a registered prior nor a folder. Available priors: {names} (aliases: "
      f"{aliases}); or pass a folder written by save_prior or diffusers' "
      "save_pretrained.")


# -- schedule <-> json ---------------------------------------------------------


def _schedule_to_json(s: NoiseSchedule) -> dict[str, Any]:
  # Exact: float32 -> Python float (float64) -> JSON repr round-trips.
  return {"num_timesteps": s.num_timesteps,
          "betas": [float(b) for b in np.asarray(s.betas)]}


def _schedule_from_json(d: dict[str, Any]) -> NoiseSchedule:
  betas = np.asarray(d["betas"], np.float64)
  if betas.ndim != 1 or betas.size < 2 or not np.all(
      (betas > 0) & (betas < 1)):
    raise PriorError("schedule betas must be a list of >= 2 values in (0, 1)")
  return schedule_lib._from_betas(betas)  # pylint: disable=protected-access


# -- save ----------------------------------------------------------------------


def save_prior(prior: Prior, path: str | os.PathLike, *,
               format: str = "diffusers",  # pylint: disable=redefined-builtin
               dtype: Any = None) -> str:
  """Writes `prior` to the folder `path` (created; existing files replaced).

  Args:
    prior: the prior.
    path: the output folder.
    format: "diffusers" (diffusers save_pretrained files + jaxleak json) or
      "orbax" (jaxleak json + a checksummed orbax checkpoint).
    dtype: storage dtype for the diffusers weights (e.g. np.float16 to halve
      the file); loading always returns float32. Ignored for orbax.

  Returns:
    The folder path.
  """
  fn = "save_prior"
  validate.check_choice(format, "format", FORMATS, fn=fn)
  if not isinstance(prior, Prior):
    raise TypeError(f"{fn}: argument 'prior' must be a Prior, got "
                    f"{type(prior).__name__}")
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  record = {
      "format_version": _FORMAT_VERSION,
      "format": format,
      "name": prior.name,
      "spec": prior.spec.to_dict(),
      "class_names": list(prior.class_names),
      "schedule": _schedule_to_json(prior.schedule),
      "info": prior.info,
  }
  if format == "diffusers":
    unet_lib.save_unet_diffusers(prior.spec, prior.params["unet"], path,
                                 dtype=dtype)
    if "class_embedding" in prior.params:
      table = np.asarray(prior.params["class_embedding"], np.float32)
      record["class_embedding"] = table.tolist()
  else:
    with checkpoint_lib.Checkpointer(os.path.join(path, "checkpoint")) as ck:
      ck.save(0, jax.tree.map(np.asarray, prior.params), {"name": prior.name})
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  report.write_json(os.path.join(path, PRIOR_FILE), record)
  return path


# -- load ----------------------------------------------------------------------


def load_prior(name_or_path: str | os.PathLike) -> Prior:
  """Loads a shipped prior by name, or a prior folder from disk (offline).

  Args:
    name_or_path: a registered prior name (see `available_priors()`;
      aliases "mnist" and "faces" work), or a folder written by `save_prior`, or a
      diffusers Flax `save_pretrained` UNet folder.

  Returns:
    The `Prior`, params as float32 jax arrays.

  Raises:
    FileNotFoundError: unknown name (the message lists the available ones).
    PriorError: the folder is incomplete, corrupt, or its params do not fit
      its architecture.
  """
  path = _resolve(name_or_path)
  return _load_cached(str(path.resolve()), _mtime(path))


def _mtime(path: pathlib.Path) -> float:
  # Part of the cache key so that a re-saved folder is re-read.
  try:
    return max(p.stat().st_mtime for p in path.iterdir())
  except ValueError:
    return 0.0


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> Prior:
  del mtime
  record_path = os.path.join(path, PRIOR_FILE)
  if not os.path.isfile(record_path):
    if os.path.isfile(os.path.join(path, "config.json")):
      return _load_foreign_diffusers(path)
    raise PriorError(
        f"load_prior: folder {path!r} is not a prior: it has neither "
        f"{PRIOR_FILE} nor a diffusers config.json")
  try:
    with open(record_path) as f:
      record = json.load(f)
    fmt = record["format"]
    spec = UNetSpec.from_dict(record["spec"])
    schedule = _schedule_from_json(record["schedule"])
    name = str(record["name"])
    class_names = tuple(record.get("class_names", ()))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise PriorError(
        f"load_prior: {record_path} is unreadable or incomplete: "
        f"{type(e).__name__}: {e}") from e
  if fmt not in FORMATS:
    raise PriorError(f"load_prior: {record_path} has unknown format {fmt!r}")
  expected = _abstract_params(spec)
  if fmt == "diffusers":
    try:
      config, unet_params = unet_lib.load_unet_diffusers(path)
    except (FileNotFoundError, ValueError) as e:
      raise PriorError(f"load_prior: {e}") from e
    params = {"unet": unet_params}
    if spec.conditional:
      if "class_embedding" not in record:
        raise PriorError(
            f"load_prior: {record_path} lacks the class_embedding table of a "
            f"class-conditional prior ({spec.num_classes} classes)")
      params["class_embedding"] = jnp.asarray(record["class_embedding"],
                                              jnp.float32)
    del config
  else:
    try:
      with checkpoint_lib.Checkpointer(os.path.join(path, "checkpoint")) as ck:
        params, _ = ck.restore(target=jax.tree.map(
            lambda s: np.zeros(s.shape, s.dtype), expected))
    except (FileNotFoundError, checkpoint_lib.CheckpointError) as e:
      raise PriorError(f"load_prior: orbax params of {path!r}: {e}") from e
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  _check_params_fit(params, expected, f"{path!r} ({PRIOR_FILE})")
  return Prior(name=name, spec=spec, params=params, schedule=schedule,
               class_names=class_names, info=dict(record.get("info", {})))


def _load_foreign_diffusers(path: str) -> Prior:
  try:
    config, unet_params = unet_lib.load_unet_diffusers(path)
    spec = unet_lib.spec_from_diffusers_config(config)
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise PriorError(f"load_prior: {e}") from e
  params = {"unet": unet_params}
  _check_params_fit(params, _abstract_params(spec), f"{path!r} (config.json)")
  return Prior(name=os.path.basename(os.path.normpath(path)), spec=spec,
               params=params, schedule=schedule_lib.linear_schedule(1000),
               info={"source": "diffusers folder without jaxleak metadata; "
                               "assumed the DDPM linear schedule, T=1000"})


def _check_params_fit(params: Any, expected: Any, where: str) -> None:
  """Raises PriorError naming the first param that does not fit the spec."""
  def shapes(tree):
    return {jax.tree_util.keystr(k): tuple(np.shape(v))
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  got, want = shapes(params), shapes(expected)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
  if not (missing or extra or wrong):
    return
  parts = []
  if wrong:
    k = wrong[0]
    parts.append(f"{len(wrong)} param(s) with the wrong shape, e.g. {k} has "
                 f"shape {got[k]}, the architecture needs {want[k]}")
  if missing:
    parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
  if extra:
    parts.append(f"{len(extra)} unexpected, e.g. {extra[0]}")
  raise PriorError(
      f"load_prior: the params in {where} do not fit its architecture: "
      + "; ".join(parts))


@functools.lru_cache(maxsize=16)
def _abstract_params(spec: UNetSpec) -> Any:
  shapes = jax.eval_shape(lambda k: unet_lib.init_unet(spec, k),
                          jax.random.key(0))
  return shapes


# -- sampling --------------------------------------------------------------------


def random_prior(spec: UNetSpec, *, name: str = "random", seed: int = 0,
                 std: float = 0.05,
                 schedule: NoiseSchedule | None = None) -> Prior:
  """An untrained prior: `spec`'s UNet with i.i.d. ``N(0, std^2)`` weights.

  No parameter is initialised by the network's own initialisers: each leaf,
  in tree order, takes the next ``std * standard_normal`` draws of
  ``numpy.random.default_rng(seed)``, so the weights are the same on every
  backend. Cheap stand-ins for tests, benchmarks and compile-time scaling.

  Args:
    spec: the architecture.
    name: the prior's name.
    seed: numpy seed of the weights.
    std: weight standard deviation.
    schedule: the noise schedule (default: DDPM linear, T = 1000).
  """
  shapes = jax.eval_shape(lambda k: unet_lib.init_unet(spec, k),
                          jax.random.key(0))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
      lambda s: jnp.asarray(std * rng.standard_normal(s.shape), s.dtype),
      shapes)
  return Prior(name, spec, params,
               schedule if schedule is not None
               else schedule_lib.linear_schedule(1000))


def generate(prior: Prior, key: jax.Array, num_samples: int, *,
             labels: Sequence[int] | jax.Array | None = None,
             num_steps: int = 50, eta: float = 0.0,
             guidance_scale: float = 1.0, batch_size: int = 64,
             params: Any = None) -> np.ndarray:
  """Draws samples from a prior with DDIM; returns images in [0, 1].

  Args:
    prior: the prior.
    key: PRNG key (starting noise and, for eta > 0, step noise).
    num_samples: how many images.
    labels: class labels [num_samples] for a class-conditional prior; None
      samples unconditionally (the null class) or, for an unconditional
      prior, is required.
    num_steps: DDIM steps in [1, T].
    eta: DDIM stochasticity (0 = deterministic).
    guidance_scale: classifier-free guidance weight (1 = none).
    batch_size: images per jitted call.
    params: override the prior's params (e.g. fine-tuned ones).

  Returns:
    float32 NHWC array [num_samples, R, R, C] in [0, 1].
  """
  fn = "generate"
  validate.check_positive(num_samples, "num_samples", fn=fn)
  validate.check_in_range(num_steps, "num_steps", 1,
                          prior.schedule.num_timesteps, fn=fn)
  validate.check_positive(batch_size, "batch_size", fn=fn)
  validate.check_positive(eta, "eta", fn=fn, allow_zero=True)
  validate.check_finite_number(guidance_scale, "guidance_scale", fn=fn)
  n = int(num_samples)
  if labels is not None:
    if not prior.conditional:
      raise ValueError(f"{fn}: argument 'labels' given but prior "
                       f"{prior.name!r} is unconditional")
    labels = np.asarray(labels, np.int32)
    validate.check_shape(labels, "labels", (n,), fn=fn)
    if labels.min() < 0 or labels.max() > prior.num_classes:
      raise ValueError(
          f"{fn}: argument 'labels' must be in [0, {prior.num_classes}] "
          f"({prior.num_classes} = null class), got {labels.min()}.."
          f"{labels.max()}")
  elif prior.conditional:
    labels = np.full((n,), prior.spec.null_class, np.int32)
  params = prior.params if params is None else params
  k_noise, k_steps = jax.random.split(key)
  x_T = jax.random.normal(k_noise, (n,) + prior.image_shape, jnp.float32)
  out = []
  for i, s in enumerate(range(0, n, int(batch_size))):
    xb = x_T[s:s + batch_size]
    cond = null = None
    gs = 1.0
    if labels is not None:
      cond = jnp.asarray(labels[s:s + batch_size])
      if guidance_scale != 1.0:
        gs = float(guidance_scale)
        null = jnp.full(cond.shape, prior.spec.null_class, jnp.int32)
    x0 = sampling.ddim_sample(prior.apply_fn, params, prior.schedule, xb, cond,
                              num_steps=int(num_steps), eta=float(eta),
                              key=jax.random.fold_in(k_steps, i),
                              guidance_scale=gs, null_cond=null)
    out.append(np.asarray(unet_lib.to_image_space(x0)))
  return np.concatenate(out, axis=0)
