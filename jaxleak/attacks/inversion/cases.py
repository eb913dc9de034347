"""Cases: named threat-model configurations (model, data, protocol, defence).

A `Case` is breaching's "case": which model the server sends, which data
the victim holds, how it trains locally and how it defends. `simulate` turns
a case into one private batch and the attacker's `GradientObservation`, so
an experiment is ``simulate`` then ``run_attack`` per trial::

  batch = simulate("ig_convnet_mnist_batch4", seed=0, trial=3)
  result = run_attack("inverting_gradients", batch.observation, key=3,
                      ground_truth=batch.ground_truth)

The model is built once per case and its parameters re-drawn per trial with
`jaxleak.models.reinit`, so the model function (and every compiled attack
step) is shared across trials.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxleak._src import validate
from jaxleak._src.registry import Registry
from jaxleak.attacks.inversion import defences as defences_lib
from jaxleak.attacks.inversion import results
from jaxleak.attacks.inversion import threat_model

__all__ = ("Case", "CASES", "PrivateBatch", "register_case", "simulate",
           "available_cases")


@dataclasses.dataclass(frozen=True)
class Case:
  """A threat model: model, data, local training protocol and defence.

  Attributes:
    model: a `jaxleak.models` name.
    dataset: a `jaxleak.data` name.
    batch_size: private images per victim, B.
    resolution: resize images to this square size (None: native).
    split: dataset split the private batches come from.
    init: the models' initialisation scheme ("default" = the model's own,
      U(-0.5, 0.5) for lenet).
    model_kwargs: architecture options, e.g. ``(("norm", "batch"),)``.
    defence: a name in `defences.DEFENCES`.
    defence_kwargs: its parameters, e.g. ``(("std", 1e-3),)``.
    local_steps: local SGD steps K (1 = fedSGD).
    local_lr: local learning rate.
    local_batch_size: images per local step (None: all).
    reveal_labels: whether the attacker is given the labels.
    unique_labels: draw batches with distinct labels (breaching's
      "unique-class" partition) instead of uniformly at random.
    data_dir: tfds data_dir for non-embedded datasets.
  """

  model: str = "convnet"
  dataset: str = "mnist_subset"
  batch_size: int = 1
  resolution: int | None = None
  split: str = "train"
  init: str = "default"
  model_kwargs: tuple[tuple[str, Any], ...] = ()
  defence: str = "none"
  defence_kwargs: tuple[tuple[str, Any], ...] = ()
  local_steps: int = 1
  local_lr: float = 1e-3
  local_batch_size: int | None = None
  reveal_labels: bool = True
  unique_labels: bool = False
  data_dir: str | None = None

  def replace(self, **changes: Any) -> Case:
    """A copy with fields changed (dicts are accepted for the *_kwargs)."""
    for k in ("model_kwargs", "defence_kwargs"):
      if isinstance(changes.get(k), Mapping):
        changes[k] = tuple(sorted(changes[k].items()))
    return dataclasses.replace(self, **changes)


CASES: Registry[Case] = Registry("case", {
    # DLG's setting: sigmoid LeNet, U(-0.5, 0.5) weights, one image.
    "dlg_lenet_mnist": Case(model="lenet", dataset="mnist_subset",
                            init="uniform"),
    # Inverting Gradients' single-image ConvNet case on a natural image.
    "ig_convnet_sample_images": Case(model="convnet",
                                     dataset="sample_images", resolution=32),
    "ig_convnet_mnist_batch4": Case(model="convnet", dataset="mnist_subset",
                                    batch_size=4),
    # fedAvg: 4 local steps of one image each (breaching's local_updates).
    "fedavg_convnet_mnist": Case(model="convnet", dataset="mnist_subset",
                                 batch_size=4, local_steps=4,
                                 local_batch_size=1),
    # A BatchNorm ConvNet for GradInversion's BN prior.
    "bn_convnet_mnist_batch4": Case(model="convnet", dataset="mnist_subset",
                                    batch_size=4, unique_labels=True,
                                    model_kwargs=(("norm", "batch"),)),
    # Tiny and fast: 8x8 digits.
    "tiny_lenet_digits": Case(model="lenet", dataset="digits"),
}, check=lambda case: isinstance(case, Case), requirement="a Case")
"""Named cases; `register_case` (``CASES.register``) adds more."""


def available_cases() -> list[str]:
  """Registered case names, sorted (``CASES.available()``)."""
  return CASES.available()


def register_case(name: str, case: Case, *, overwrite: bool = False) -> None:
  """``CASES.register(name, case, overwrite=)`` (ValueError if taken)."""
  CASES.register(name, case, overwrite=overwrite)


class PrivateBatch(NamedTuple):
  """One simulated victim.

  Attributes:
    observation: what the attacker sees.
    ground_truth: the private ``(images, labels)``, for scoring only.
    indices: the batch's indices in the dataset split.
  """

  observation: threat_model.GradientObservation
  ground_truth: results.GroundTruth
  indices: np.ndarray


@functools.lru_cache(maxsize=32)
def _dataset(name, split, resolution, data_dir):
  from jaxleak import data  # pylint: disable=g-import-not-at-top
  return data.load(name, split, data_dir, resolution=resolution)


@functools.lru_cache(maxsize=32)
def _model(name, num_classes, image_shape, model_kwargs):
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  return models.create(name, num_classes, image_shape, jax.random.key(0),
                       **dict(model_kwargs))


def _batch_indices(labels: np.ndarray, b: int, unique: bool,
                   rng: np.random.Generator) -> np.ndarray:
  n = labels.shape[0]
  if b > n:
    raise ValueError(f"simulate: argument 'batch_size' ({b}) exceeds the "
                     f"dataset split size ({n})")
  if not unique:
    return np.sort(rng.choice(n, b, replace=False))
  classes = np.unique(labels)
  if b > classes.size:
    raise ValueError(f"simulate: unique_labels needs batch_size <= the number "
                     f"of classes ({classes.size}), got {b}")
  chosen = rng.choice(classes, b, replace=False)
  return np.sort([rng.choice(np.flatnonzero(labels == c)) for c in chosen])


def simulate(case: str | Case, *, seed: int = 0, trial: int = 0,
             defence: Any = None) -> PrivateBatch:
  """Draws trial `trial`'s private batch and model, and observes the victim.

  The model parameters, the batch and the defence's randomness are all
  functions of ``(seed, trial)``, so trial t is the same in every run.

  Args:
    case: a name in `CASES` or a `Case`.
    seed: experiment seed.
    trial: trial index (>= 0).
    defence: overrides the case's defence (anything `make_defence` takes).

  Returns:
    A `PrivateBatch`.
  """
  fn = "simulate"
  if isinstance(case, str):
    validate.check_choice(case, "case", available_cases(), fn=fn)
    case = CASES[case]
  if not isinstance(case, Case):
    raise TypeError(f"{fn}: argument 'case' must be a name or a Case, got "
                    f"{case!r}")
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  ds = _dataset(case.dataset, case.split, case.resolution, case.data_dir)
  apply_fn, params = _model(case.model, ds.num_classes, ds.image_shape,
                            tuple(sorted(case.model_kwargs)))
  key = jax.random.fold_in(jax.random.key(seed), trial)
  k_model, k_obs = jax.random.split(key)
  scheme = (models.MODELS[case.model].default_init if case.init == "default"
            else case.init)
  params = models.reinit(params, scheme, k_model)
  rng = np.random.default_rng([seed, trial])
  idx = _batch_indices(np.asarray(ds.labels), case.batch_size,
                       case.unique_labels, rng)
  images = np.asarray(ds.images[idx], np.float32)
  labels = np.asarray(ds.labels[idx], np.int32)
  if defence is None:
    defence = defences_lib.make_defence(case.defence,
                                        **dict(case.defence_kwargs))
  obs = threat_model.observe(
      apply_fn, params, images, labels, key=k_obs, defence=defence,
      local_steps=case.local_steps, local_lr=case.local_lr,
      local_batch_size=case.local_batch_size,
      reveal_labels=case.reveal_labels)
  return PrivateBatch(obs, results.GroundTruth(images, labels), idx)
