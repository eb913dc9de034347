"""UNet forward and forward+input-gradient time at several sizes.

Times the shipped-prior UNet (`jaxleak.diffusion.load_prior`, default
"mnist") re-instantiated at each resolution (the UNet is fully
convolutional, so the same params apply at any size divisible by its
downsampling factor):

* forward: ``eps = apply_fn(params, x_t, t, cond)``;
* forward + input gradient: value and gradient with respect to x_t of a
  scalar of the Tweedie estimate x0_hat(x_t, eps), the quantity every
  gradient-guided sampling step needs.

Compilation and a warm-up call are excluded; each cell is the median of
--repeats timed calls (milliseconds). Usage:

  PYTHONPATH=. python benchmarks/unet_speed.py --resolutions 32 64 128 \\
      --batches 1 8
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp

from jaxleak import diffusion


def _time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm-up, not timed
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3


def bench(prior: diffusion.Prior, resolution: int, batch: int, repeats: int,
          fast_conv: bool) -> dict[str, float]:
  spec = dataclasses.replace(prior.spec, resolution=resolution)
  apply_fn = diffusion.make_unet_apply(spec, fast_conv)
  shape = (batch, resolution, resolution, spec.channels)
  x = jax.random.normal(jax.random.key(0), shape)
  t = jnp.full((batch,), 500)
  cond = jnp.arange(batch) % spec.num_classes if spec.conditional else None

  @jax.jit
  def forward(params, x):
    return apply_fn(params, x, t, cond)

  @jax.jit
  def forward_and_input_grad(params, x):
    def scalar(x):
      eps = apply_fn(params, x, t, cond)
      return jnp.sum(diffusion.x0_hat(prior.schedule, x, t, eps) ** 2)
    return jax.value_and_grad(scalar)(x)

  return {"forward_ms": _time(forward, prior.params, x, repeats=repeats),
          "fwd_grad_ms": _time(forward_and_input_grad, prior.params, x,
                               repeats=repeats)}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--prior", default="mnist", help="shipped prior or folder")
  p.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
  p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--fast-conv", action="store_true",
                 help="use jaxleak's matmul kernel-gradient convolution")
  args = p.parse_args(argv)

  prior = diffusion.load_prior(args.prior)
  print(f"prior {prior.name}: UNet {prior.spec.block_out_channels}, "
        f"{diffusion.param_count(prior.params):,} params, "
        f"{'conditional' if prior.conditional else 'unconditional'}; "
        f"{jax.devices()[0].platform} x{jax.device_count()}, "
        f"jax {jax.__version__}; median of {args.repeats} (ms)")
  header = f"| {'res':>4} | {'batch':>5} | {'forward':>9} | {'fwd+grad_x':>10} |"
  print(header)
  print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
  for res in args.resolutions:
    for b in args.batches:
      r = bench(prior, res, b, args.repeats, args.fast_conv)
      print(f"| {res:>4} | {b:>5} | {r['forward_ms']:>9.1f} | "
            f"{r['fwd_grad_ms']:>10.1f} |", flush=True)


if __name__ == "__main__":
  main()
