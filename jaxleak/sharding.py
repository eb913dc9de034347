"""Data-parallel meshes and placement helpers (jax.sharding, no pmap).

jaxleak's data parallelism is one mesh axis, ``"data"``, over devices. Batches
are split along their leading axis over it; parameters and optimiser state are
replicated. Per-device code is written with `jax.shard_map`, pmap's successor,
and reductions across devices are explicit collectives (``lax.psum``). On a
multi-host pod call ``jax.distributed.initialize()`` first; the mesh then spans
every process's devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

__all__ = ("DATA_AXIS", "data_mesh", "shard_batch", "replicate",
           "check_divisible", "device_varying", "to_local")

DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D ``("data",)`` mesh over `num_devices` (default: all) devices.

  The one data mesh of the library. It spans ``jax.devices()``, the global
  device list, not ``jax.local_devices()``: in a multi-process (multi-host)
  run every process must build the same mesh over all processes' devices for
  one SPMD program, and each process then supplies its local shard; a mesh
  of local devices would give each host a different, disconnected program.
  On one host both lists are the same.
  """
  if devices is None:
    all_devices = jax.devices()
    n = len(all_devices) if num_devices is None else int(num_devices)
    if not 1 <= n <= len(all_devices):
      raise ValueError(
          f"data_mesh: argument 'num_devices'={num_devices} must be between 1 "
          f"and the {len(all_devices)} available devices")
    devices = all_devices[:n]
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(AxisType.Explicit,), devices=list(devices))


def check_divisible(batch_size: int, mesh: Mesh, name: str = "batch_size",
                    fn: str | None = None) -> None:
  n = mesh.shape[DATA_AXIS]
  if batch_size % n:
    where = f"{fn}: " if fn else ""
    raise ValueError(
        f"{where}argument '{name}'={batch_size} must be divisible by the "
        f"{n} devices of the data mesh")


def shard_batch(mesh: Mesh, tree: Any) -> Any:
  """Places every leaf split along its leading axis over the data axis."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def replicate(mesh: Mesh, tree: Any) -> Any:
  """Places every leaf fully replicated on the mesh.

  Across processes (`jax.distributed`), every process must pass the same
  values; each builds its own devices' copies from its host copy, since CPU
  backends have no cross-host device transfers.
  """
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
      sharding, np.asarray(x)), tree)


def to_local(x: jax.Array, like: Any = None) -> jax.Array:
  """A replicated mesh array as a single-device array of this process.

  Placed like `like` (an array whose sharding to copy) if given; off a
  multi-process mesh through this process's own replica, with no transfer
  between hosts.
  """
  if jax.process_count() > 1 and not x.is_fully_addressable:
    x = x.addressable_data(0)
  home = getattr(like, "sharding", None)
  return x if home is None else jax.device_put(x, home)


def device_varying(tree: Any, axis: str = DATA_AXIS) -> Any:
  """Marks replicated values as device-varying inside `jax.shard_map`.

  Inside shard_map, the gradient with respect to a replicated (unvarying)
  input is implicitly summed over devices: the transpose of the implicit
  broadcast to varying values is a ``psum``. Per-example gradients taken with
  respect to replicated params would thus silently become sums over all
  devices' examples. Casting params to varying first keeps every gradient
  local, and the caller reduces explicitly with ``lax.psum``.
  """
  cast = getattr(jax.lax, "pcast", None)
  if cast is not None:
    return jax.tree.map(lambda x: cast(x, axis, to="varying"), tree)
  return jax.tree.map(lambda x: jax.lax.pvary(x, axis), tree)  # older jax
