"""`jaxleak info`: versions of jaxleak and its stack, and the visible devices."""

from __future__ import annotations

import importlib.metadata
import platform

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex",
             "diffusers", "tensorflow-datasets", "dp-accounting", "dm-pix",
             "numpy", "scikit-learn", "scikit-image", "mlxtend")


def register(subparsers) -> None:
  p = subparsers.add_parser("info", help="print versions and devices")
  p.set_defaults(func=run, resumable=False)


def versions() -> dict[str, str]:
  out = {}
  for name in ("jaxleak",) + _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


def run(args) -> int:
  del args
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  print(f"python      {platform.python_version()} ({platform.machine()})")
  for name, version in versions().items():
    print(f"{name:<20}{version}")
  print(f"backend     {jax.default_backend()}")
  print(f"devices     {jax.device_count()} total, {jax.local_device_count()} local, "
        f"{jax.process_count()} process(es)")
  for d in jax.local_devices():
    print(f"  {d.id}: {d.device_kind} ({d.platform})")
  print(f"embedded datasets: {', '.join(data.EMBEDDED)}")
  return 0
