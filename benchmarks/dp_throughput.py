"""Per-sample DP step throughput and peak memory: jaxleak vs optax.contrib vs Opacus.

Every configuration (model x batch x method) runs in its own subprocess, so
the reported peak RSS is that method's own high-water mark (framework runtime
included, for every method alike). Throughput is samples per second of a full
training step (forward, per-sample work, noise, update), measured after
compilation/warm-up, over at least `--min-time` seconds.

Models: the two DP-SGD CNNs, resnet18 (GroupNorm, 32 px), a small ViT (32 px,
patch 4) and a small text transformer (64 tokens of a 256-word vocabulary),
each with a PyTorch twin of the same layers for Opacus.

Methods:
  jaxleak_psasc_auto       dp_psasc train step, path="auto" (the default):
                           layerwise on the CNNs, mixed (book-keeping for
                           Dense/Conv/Embed, per-example gradients for norm
                           scales, class token, positional embeddings) on
                           resnet18 and the transformers
  jaxleak_psasc_mesh       the same step data-parallel over a mesh of
                           `--mesh-devices` CPU devices (default: one per
                           core; XLA_FLAGS=--xla_force_host_platform_device_count),
                           each device running its share of the batch
  jaxleak_readme           the README's first DP example as written: dp_psasc
                           with tx.update(None, state, params, loss_fn=...,
                           batch=...) under jax.jit, no train-step builder
  jaxleak_psasc_layerwise  dp_psasc step, layerwise path (one backward pass
                           with taps on Dense/Conv outputs; per-example norms
                           from layer inputs x output gradients; CNNs only)
  jaxleak_psasc_two_pass   dp_psasc step, two-pass path (norms, then one
                           weighted backward pass; no B x params buffer)
  jaxleak_psasc_vmap       dp_psasc step, vmap(grad) per-example gradients
  jaxleak_nonprivate       plain jitted SGD step (the cost floor)
  optax_contrib            vmap(grad) + optax.contrib.differentially_private_aggregate
  opacus                   Opacus 1.6 GradSampleModule + DPOptimizer (bench extra)
  opacus_ghost             Opacus ghost clipping (PrivacyEngine, grad_sample_mode
                           "ghost"); an ERROR row where it does not support the
                           model
  torch_nonprivate         plain PyTorch SGD step (reference)

On a GPU (JAX's default backend and torch.cuda), every method runs on the
GPU, steps are synchronised before the clock is read, the float32 matrix
products of both frameworks use TF32 (XLA's default on the GPU; PyTorch is set
to "high" to match), and memory is the device's peak (`peak_device_mb`: JAX's
peak_bytes_in_use, torch.cuda.max_memory_allocated) rather than host RSS.
`jaxleak_psasc_auto / jaxleak_nonprivate` there is the DP step's throughput
as a share of the non-private step.

Before timing, `--check` (on by default) verifies on cnn_mnist that jaxleak and
Opacus produce the same parameters after one noiseless clipped step from the
same weights, so both sides compute the same thing.

Usage:
  python benchmarks/dp_throughput.py                      # full grid
  python benchmarks/dp_throughput.py --models cnn_mnist --batches 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

JAX_METHODS = ("jaxleak_psasc_auto", "jaxleak_psasc_mesh", "jaxleak_readme",
               "jaxleak_psasc_layerwise", "jaxleak_psasc_two_pass",
               "jaxleak_psasc_vmap",
               "jaxleak_nonprivate", "optax_contrib")
TORCH_METHODS = ("opacus", "opacus_ghost", "torch_nonprivate")
SHAPES = {"cnn_mnist": (28, 28, 1), "cnn_cifar": (32, 32, 3),
          "resnet18": (32, 32, 3), "vit": (32, 32, 3),
          "text_transformer": (64,)}
CNNS = ("cnn_mnist", "cnn_cifar")  # the models layerwise alone covers
VOCAB = 256
DEFAULT_JAX = "jaxleak_psasc_auto"


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timeit(step, state, min_time, min_steps=3):
  """Runs `state = step(state)` after 2 warm-up calls; returns seconds/step."""
  for _ in range(2):
    state = step(state)
  n, start = 0, time.perf_counter()
  while n < min_steps or time.perf_counter() - start < min_time:
    state = step(state)
    n += 1
  return (time.perf_counter() - start) / n


# ----------------------------------------------------------------------------- JAX
def jax_setup(model: str, batch: int):
  """``apply_fn, params, loss_fn, (x, y, mask)``: a model and a random batch."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxleak import models  # pylint: disable=g-import-not-at-top

  shape = SHAPES[model]
  apply_fn, params = models.create(model, 10, shape, jax.random.key(0))
  rng = np.random.default_rng(0)
  if model == "text_transformer":
    x = jnp.asarray(rng.integers(0, VOCAB, (batch,) + shape), jnp.int32)
  else:
    x = jnp.asarray(rng.random((batch,) + shape, np.float32))
  y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)

  def loss_fn(p, b):
    return models.cross_entropy_loss(apply_fn(p, b[0]), b[1])

  return apply_fn, params, loss_fn, (x, y, jnp.ones(batch, bool))


def run_jax(model: str, batch: int, method: str, min_time: float) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from jaxleak import dp  # pylint: disable=g-import-not-at-top
  from jaxleak import dp_training  # pylint: disable=g-import-not-at-top
  from jaxleak import sharding  # pylint: disable=g-import-not-at-top

  apply_fn, params, loss_fn, (x, y, mask) = jax_setup(model, batch)
  if method.startswith("jaxleak_psasc"):
    path = method[len("jaxleak_psasc_"):]
    mesh = None
    if path == "mesh":
      path, mesh = "auto", sharding.data_mesh()
    rule = dp.psasc(1.0, 0.1, 1.0)
    plan = dp.per_example.layerwise.plan(lambda p, b: (loss_fn(p, b), None),
                                         params, (x, y))
    if path == "layerwise" and not plan.applicable:
      raise ValueError("layerwise does not cover this model (auto: mixed)")
    if path == "auto":  # layerwise on the CNNs, mixed elsewhere
      assert plan.applicable == (model in CNNS), plan.uncovered
    opt = dp_training.make_dp_optimizer(rule, 1.0, jax.random.key(1),
                                        expected_batch_size=batch,
                                        learning_rate=0.1, momentum=0.9)
    train_step = dp_training.make_dp_train_step(apply_fn, rule, opt, path=path,
                                                mesh=mesh)
    state = (params, opt.init(params))
    if mesh is not None:
      x, y, mask = sharding.shard_batch(mesh, (x, y, mask))
      state = sharding.replicate(mesh, state)
    def step(state):
      p, s = state
      p, s, m = train_step(p, s, x, y, mask)
      m.loss.block_until_ready()
      return p, s
  elif method == "jaxleak_readme":
    tx = dp.dp_psasc(learning_rate=0.1, noise_multiplier=1.0,
                     key=jax.random.key(1), expected_batch_size=batch,
                     momentum=0.9)
    @jax.jit
    def readme_step(p, s, batch, mask):
      u, s = tx.update(None, s, p, loss_fn=loss_fn, batch=batch, mask=mask)
      return optax.apply_updates(p, u), s
    def step(state):
      p, s = readme_step(*state, (x, y), mask)
      jax.tree.leaves(p)[0].block_until_ready()
      return p, s
    state = (params, tx.init(params))
  elif method == "jaxleak_nonprivate":
    opt = optax.sgd(0.1, momentum=0.9)
    @jax.jit
    def sgd_step(p, s):
      g = jax.grad(loss_fn)(p, (x, y))
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    def step(state):
      p, s = sgd_step(*state)
      jax.tree.leaves(p)[0].block_until_ready()
      return p, s
    state = (params, opt.init(params))
  elif method == "optax_contrib":
    opt = optax.chain(
        optax.contrib.differentially_private_aggregate(1.0, 1.0, key=1),
        optax.sgd(0.1, momentum=0.9))
    @jax.jit
    def contrib_step(p, s):
      g = dp.per_example_grads(loss_fn, p, (x, y))
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    def step(state):
      p, s = contrib_step(*state)
      jax.tree.leaves(p)[0].block_until_ready()
      return p, s
    state = (params, opt.init(params))
  else:
    raise ValueError(f"unknown JAX method {method!r}")
  sec = _timeit(step, state, min_time)
  row = {"samples_per_s": batch / sec, "step_ms": sec * 1e3,
         "peak_rss_mb": peak_rss_mb(), "device": jax.devices()[0].device_kind}
  if jax.default_backend() != "cpu":
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      row["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
  return row


# --------------------------------------------------------------------------- torch
def torch_model(model: str):
  """PyTorch twins of jaxleak's models (NCHW, same layers and widths)."""
  import torch.nn as nn  # pylint: disable=g-import-not-at-top
  if model in ("resnet18", "vit", "text_transformer"):
    return _torch_twins()[model]()
  if model == "cnn_mnist":
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, stride=2, padding=3), nn.Tanh(),
        nn.MaxPool2d(2, stride=1),
        nn.Conv2d(16, 32, 4, stride=2), nn.Tanh(), nn.MaxPool2d(2, stride=1),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, 10))
  layers, c_in = [], 3
  for c in (32, 64, 128):  # jaxleak's cnn_cifar default pool is "max"
    layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.Tanh(),
               nn.Conv2d(c, c, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2)]
    c_in = c
  return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 128),
                       nn.Tanh(), nn.Linear(128, 10))


def _torch_twins():
  """Builders of resnet18 (GroupNorm), the ViT and the text transformer."""
  import math  # pylint: disable=g-import-not-at-top

  from opacus.grad_sample import register_grad_sampler  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn as nn  # pylint: disable=g-import-not-at-top

  def norm(c):
    return nn.GroupNorm(math.gcd(32, c), c)

  class Block(nn.Module):
    def __init__(self, c_in, c, stride):
      super().__init__()
      self.conv0 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
      self.norm0 = norm(c)
      self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
      self.norm1 = norm(c)
      self.short = None
      if stride != 1 or c_in != c:
        self.short = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False),
                                   norm(c))

    def forward(self, x):
      y = torch.relu(self.norm0(self.conv0(x)))
      y = self.norm1(self.conv1(y))
      return torch.relu((x if self.short is None else self.short(x)) + y)

  def resnet18(w=64):
    layers, c_in = [nn.Conv2d(3, w, 3, 1, 1, bias=False), norm(w), nn.ReLU()], w
    for mult, stride in zip((1, 2, 4, 8), (1, 2, 2, 2)):
      for block in range(2):
        layers.append(Block(c_in, w * mult, stride if block == 0 else 1))
        c_in = w * mult
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10)]
    return nn.Sequential(*layers)

  class Tokens(nn.Module):
    """Class token (optional) and positional embedding: Opacus has no
    sampler for bare parameters, so this module registers its own."""
    def __init__(self, t, dim, cls):
      super().__init__()
      self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if cls else None
      self.pos = nn.Parameter(0.02 * torch.randn(1, t + int(cls), dim))

    def forward(self, x):
      if self.cls is not None:
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
      return x + self.pos

  @register_grad_sampler(Tokens)
  def _tokens_grad_sample(layer, activations, backprops):
    del activations
    out = {layer.pos: backprops}
    if layer.cls is not None:
      out[layer.cls] = backprops[:, :1]
    return out

  class Attention(nn.Module):
    def __init__(self, dim, heads):
      super().__init__()
      self.heads = heads
      self.qkv = nn.Linear(dim, 3 * dim)
      self.out = nn.Linear(dim, dim)

    def forward(self, x):
      b, t, d = x.shape
      q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).unbind(2)
      # jaxleak.models.transformers.attention's form (softmax normalised
      # after the value product); measured no different from softmax here.
      logits = torch.einsum("bthd,bshd->bhts", q / math.sqrt(d // self.heads), k)
      e = torch.exp(logits - logits.amax(-1, keepdim=True).detach())
      out = torch.einsum("bhts,bshd->bthd", e, v) / e.sum(-1).transpose(1, 2)[..., None]
      return self.out(out.reshape(b, t, d))

  class EncoderBlock(nn.Module):
    def __init__(self, dim=64, heads=4, mlp=128):
      super().__init__()
      self.norm0, self.norm1 = nn.LayerNorm(dim), nn.LayerNorm(dim)
      self.attention = Attention(dim, heads)
      self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(approximate="tanh"),
                               nn.Linear(mlp, dim))

    def forward(self, x):
      x = x + self.attention(self.norm0(x))
      return x + self.mlp(self.norm1(x))

  class ViT(nn.Module):
    def __init__(self, dim=64, depth=2, patch=4, size=32):
      super().__init__()
      self.embed = nn.Conv2d(3, dim, patch, patch)
      self.tokens = Tokens((size // patch) ** 2, dim, cls=True)
      self.blocks = nn.Sequential(*[EncoderBlock(dim) for _ in range(depth)])
      self.norm = nn.LayerNorm(dim)
      self.head = nn.Linear(dim, 10)

    def forward(self, x):
      x = self.embed(x).flatten(2).transpose(1, 2)
      return self.head(self.norm(self.blocks(self.tokens(x)))[:, 0])

  class Text(nn.Module):
    def __init__(self, dim=64, depth=2, length=SHAPES["text_transformer"][0]):
      super().__init__()
      self.embed = nn.Embedding(VOCAB, dim)
      self.tokens = Tokens(length, dim, cls=False)
      self.blocks = nn.Sequential(*[EncoderBlock(dim) for _ in range(depth)])
      self.norm = nn.LayerNorm(dim)
      self.head = nn.Linear(dim, 10)

    def forward(self, x):
      return self.head(self.norm(self.blocks(self.tokens(self.embed(x)))).mean(1))

  return {"resnet18": resnet18, "vit": ViT, "text_transformer": Text}


def run_torch(model: str, batch: int, method: str, min_time: float) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  if cuda:  # TF32 matrix products, as XLA does by default on the GPU
    torch.set_float32_matmul_precision("high")
  if model == "text_transformer":
    x = torch.randint(0, VOCAB, (batch,) + SHAPES[model])
  else:
    h, w, c = SHAPES[model]
    x = torch.rand(batch, c, h, w).contiguous()  # NCHW (Opacus needs contiguous)
  y = torch.randint(0, 10, (batch,))
  x, y = x.to(device), y.to(device)
  net = torch_model(model).to(device)
  criterion = F.cross_entropy
  if method == "opacus_ghost":
    from opacus import PrivacyEngine  # pylint: disable=g-import-not-at-top
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch)
    net, opt, criterion, _ = PrivacyEngine().make_private(
        module=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1,
                                              momentum=0.9),
        data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
        criterion=torch.nn.CrossEntropyLoss(), grad_sample_mode="ghost",
        poisson_sampling=False)
  elif method == "opacus":
    from opacus import GradSampleModule  # pylint: disable=g-import-not-at-top
    from opacus.optimizers import DPOptimizer  # pylint: disable=g-import-not-at-top
    net = GradSampleModule(net)
    opt = DPOptimizer(torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
                      noise_multiplier=1.0, max_grad_norm=1.0,
                      expected_batch_size=batch)
  else:
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
  def step(state):
    opt.zero_grad(set_to_none=True)
    criterion(net(x), y).backward()
    opt.step()
    if cuda:  # like the JAX steps, which block on their result
      torch.cuda.synchronize()
    return state
  sec = _timeit(step, None, min_time)
  row = {"samples_per_s": batch / sec, "step_ms": sec * 1e3,
         "peak_rss_mb": peak_rss_mb(),
         "device": torch.cuda.get_device_name() if cuda else "cpu"}
  if cuda:
    row["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
  return row


def check_same_step() -> float:
  """Relative param difference, jaxleak clip vs Opacus, after one noiseless step."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from opacus import GradSampleModule  # pylint: disable=g-import-not-at-top
  from opacus.optimizers import DPOptimizer  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  from jaxleak import dp  # pylint: disable=g-import-not-at-top
  from jaxleak import dp_training  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top

  def _t(a):  # a fresh array with standard strides; see the note below
    return torch.from_numpy(np.array(a, order="C", copy=True))

  apply_fn, params = models.create("cnn_mnist", 10, (28, 28, 1), jax.random.key(0))
  net = torch_model("cnn_mnist")
  p = jax.device_get(params)["params"]
  convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
  dense = [m for m in net if isinstance(m, torch.nn.Linear)]
  with torch.no_grad():
    for m, name in zip(convs, ("conv0", "conv1")):
      m.weight.copy_(_t(np.transpose(p[name]["kernel"], (3, 2, 0, 1))))
      m.bias.copy_(torch.tensor(p[name]["bias"]))
    # Flax flattens NHWC (h, w, c); torch flattens NCHW (c, h, w).
    k = p["dense0"]["kernel"].reshape(4, 4, 32, 32).transpose(2, 0, 1, 3)
    dense[0].weight.copy_(_t(k.reshape(512, 32).T))
    dense[0].bias.copy_(torch.tensor(p["dense0"]["bias"]))
    dense[1].weight.copy_(_t(p["head"]["kernel"].T))
    dense[1].bias.copy_(torch.tensor(p["head"]["bias"]))
  rng = np.random.default_rng(0)
  xb = rng.random((16, 28, 28, 1), np.float32)
  yb = rng.integers(0, 10, 16)
  gsm = GradSampleModule(net)
  opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.5), noise_multiplier=0.0,
                    max_grad_norm=0.1, expected_batch_size=16)
  opt.zero_grad()
  # A fresh .copy() matters: with C=1, a transposed NHWC array counts as
  # contiguous for numpy (np.ascontiguousarray returns it unchanged) and for
  # torch (.contiguous() is a no-op), yet keeps channels-last strides, with
  # which Opacus 1.6's hooks compute wrong per-sample conv gradients.
  x_nchw = torch.from_numpy(xb.transpose(0, 3, 1, 2).copy())
  F.cross_entropy(gsm(x_nchw), torch.tensor(yb)).backward()
  opt.step()
  rule = dp.clip(0.1)
  jopt = dp_training.make_dp_optimizer(rule, 0.0, jax.random.key(0),
                                       expected_batch_size=16, learning_rate=0.5)
  step = dp_training.make_dp_train_step(apply_fn, rule, jopt)
  new, _, _ = step(params, jopt.init(params), xb, yb, np.ones(16, bool))
  new = jax.device_get(new)["params"]
  torch_new = {
      "conv0": np.transpose(convs[0].weight.detach().numpy(), (2, 3, 1, 0)),
      "conv1": np.transpose(convs[1].weight.detach().numpy(), (2, 3, 1, 0)),
      "head": dense[1].weight.detach().numpy().T,
  }
  # Relative to how far each layer moved, so small layers are not hidden.
  rels = {k: float(np.abs(torch_new[k] - new[k]["kernel"]).max()
                  / np.abs(new[k]["kernel"] - p[k]["kernel"]).max())
            for k in torch_new}
  rel = max(rels.values())
  moved = float(np.abs(new["head"]["kernel"] - p["head"]["kernel"]).max())
  return rel, moved


# -------------------------------------------------------------------------- driver
def _memory_mb(row: dict) -> float:
  """The device's peak where the step ran on an accelerator, else host RSS."""
  return row.get("peak_device_mb", row["peak_rss_mb"])


def _run_worker(model: str, batch: int, method: str, args, env) -> dict:
  """One configuration in a fresh subprocess: its result row, or an error."""
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model",
         model, "--batch", str(batch), "--method", method, "--min-time",
         str(args.min_time)]
  if method == "jaxleak_psasc_mesh":
    env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count="
               f"{args.mesh_devices}")
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=args.worker_timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {args.worker_timeout:.0f} s"}
  if proc.returncode:
    return {"error": proc.stderr.strip().splitlines()[-1][:200]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def worker(args) -> None:
  fn = run_torch if args.method in TORCH_METHODS else run_jax
  print(json.dumps(fn(args.model, args.batch, args.method, args.min_time)))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
  ap.add_argument("--batches", nargs="+", type=int, default=[64, 256, 1024])
  ap.add_argument("--methods", nargs="+", default=list(JAX_METHODS + TORCH_METHODS),
                  choices=list(JAX_METHODS + TORCH_METHODS))
  ap.add_argument("--min-time", type=float, default=4.0)
  ap.add_argument("--repeats", type=int, default=1,
                  help="runs of every configuration, round-robin; the tables "
                       "report the median samples/s and the largest peak RSS")
  ap.add_argument("--mesh-devices", type=int, default=os.cpu_count(),
                  help="CPU devices of jaxleak_psasc_mesh (default: one per core)")
  ap.add_argument("--worker-timeout", type=float, default=None,
                  help="seconds after which one configuration is an ERROR row")
  ap.add_argument("--no-check", action="store_true")
  ap.add_argument("--out", default=None, help="write results JSON here")
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--model", help=argparse.SUPPRESS)
  ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
  ap.add_argument("--method", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if any(b < 1 for b in args.batches):
    ap.error(f"argument --batches: must be positive, got {args.batches}")
  if args.repeats < 1:
    ap.error(f"argument --repeats: must be at least 1, got {args.repeats}")
  if args.worker_timeout is not None and not args.worker_timeout > 0:
    ap.error("argument --worker-timeout: must be positive seconds, got "
             f"{args.worker_timeout}")
  if args.worker:
    worker(args)
    return
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)  # one CPU device, all cores, like Opacus
  have_torch = subprocess.run([sys.executable, "-c", "import torch, opacus"],
                              capture_output=True).returncode == 0
  methods = [m for m in args.methods if m in JAX_METHODS or have_torch]
  if not have_torch:
    print("torch/opacus not installed: skipping Opacus and PyTorch rows "
          "(pip install torch==2.13.0 && pip install -e '.[bench]')")
  if have_torch and not args.no_check:
    out = subprocess.run([sys.executable, "-c",
                          f"import sys; sys.path.insert(0, {HERE!r}); import dp_throughput as d;"
                          "print(*d.check_same_step())"],
                         capture_output=True, text=True,
                         # Numerics on the CPU, where both frameworks are exact
                         # float32 (no TF32 on a GPU).
                         env=dict(env, JAX_PLATFORMS="cpu"))
    if out.returncode:
      print(out.stderr[-2000:])
      raise SystemExit("equivalence check failed to run")
    diff, moved = map(float, out.stdout.split()[-2:])
    print(f"check: one noiseless clipped step, jaxleak vs Opacus: max param "
          f"difference = {diff:.2e} of each layer's update (head moved "
          f"{moved:.2e})")
    if diff > 1e-3:
      raise SystemExit("jaxleak and Opacus disagree; not timing different things")
  results = []
  for model in args.models:
    for batch in args.batches:
      runs: dict[str, list[dict]] = {m: [] for m in methods}
      # Round-robin repeats: drift in the machine's speed hits every method
      # alike, and the median of each drops the outliers.
      for rep in range(args.repeats):
        for method in methods:
          if method == "jaxleak_psasc_layerwise" and model not in CNNS:
            continue  # Not applicable: auto runs the mixed path there.
          row = _run_worker(model, batch, method, args, env)
          runs[method].append(row)
          tag = f" (run {rep + 1}/{args.repeats})" if args.repeats > 1 else ""
          print(f"{model:10s} B={batch:<5d} {method:24s} "
                + (f"{row['samples_per_s']:9.0f} samples/s  "
                   f"{_memory_mb(row):7.0f} MB{tag}"
                   if "error" not in row else f"ERROR {row['error']}"), flush=True)
      for method, rows in runs.items():
        if not rows:
          continue
        ok = [r for r in rows if "error" not in r]
        # Medians of samples/s, the largest memory peaks; no per-run step_ms.
        row = dict(rows[-1]) if not ok else {
            "samples_per_s": statistics.median(r["samples_per_s"] for r in ok),
            "samples_per_s_runs": [r["samples_per_s"] for r in ok],
            "device": ok[-1]["device"],
            **{k: max(r[k] for r in ok) for k in ("peak_rss_mb", "peak_device_mb")
               if k in ok[-1]}}
        row.update(model=model, batch=batch, method=method)
        results.append(row)
      if args.out:  # Rows so far: a run stopped by a time limit keeps them.
        _write_json(args.out, results)
  if args.repeats > 1:
    print(f"\nMedian of {args.repeats} runs (samples/s; peak RSS is the largest):")
    for row in results:
      print(f"{row['model']:10s} B={row['batch']:<5d} {row['method']:24s} "
            + (f"{row['samples_per_s']:9.0f} samples/s  {_memory_mb(row):7.0f} MB"
               f"  runs {min(row['samples_per_s_runs']):.0f}-"
               f"{max(row['samples_per_s_runs']):.0f}"
               if "error" not in row else f"ERROR {row['error']}"))
  on_device = any("peak_device_mb" in r for r in results)
  devices = sorted({r["device"] for r in results if "device" in r})
  print("\nRatios measured in this run (samples/s"
        + (", medians" if args.repeats > 1 else "")
        + ("; peak device memory" if on_device else "; peak RSS")
        + (f"; {', '.join(devices)}" if devices else "") + "):")
  print(f"| model | batch | {DEFAULT_JAX} / opacus | / opacus_ghost | "
        "/ optax_contrib | / jaxleak_nonprivate | / torch_nonprivate | "
        "jaxleak_readme / opacus | jaxleak_psasc_mesh / opacus | "
        + ("peak device MB" if on_device else "peak MB") + " jaxleak / opacus |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  get = {(r["model"], r["batch"], r["method"]): r for r in results}
  for model in args.models:
    for batch in args.batches:
      ours = get.get((model, batch, DEFAULT_JAX), {})
      def ratio(other, key="samples_per_s", mine=ours):
        o = get.get((model, batch, other), {})
        if key in mine and key in o:
          return f"{mine[key] / o[key]:.2f}x"
        return "n/a"
      readme = get.get((model, batch, "jaxleak_readme"), {})
      mesh = get.get((model, batch, "jaxleak_psasc_mesh"), {})
      print(f"| {model} | {batch} | {ratio('opacus')} | {ratio('opacus_ghost')} "
            f"| {ratio('optax_contrib')} | {ratio('jaxleak_nonprivate')} "
            f"| {ratio('torch_nonprivate')} | {ratio('opacus', mine=readme)} "
            f"| {ratio('opacus', mine=mesh)} "
            f"| {ratio('opacus', 'peak_device_mb' if on_device else 'peak_rss_mb')} |")


def _write_json(path: str, results: list[dict]) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(results, f, indent=2)
  os.replace(path + ".tmp", path)


if __name__ == "__main__":
  main()
