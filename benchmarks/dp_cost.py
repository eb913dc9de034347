"""What XLA's compiler says a DP step costs, next to the non-private step.

For every model and batch this compiles jaxleak's DP-PSASC train step
(`make_dp_train_step`, ``path="auto"``) and a plain SGD step of the same
model, and prints what the compiled programs report, without running them:

  * GFLOP: floating-point operations (XLA's cost analysis);
  * GB accessed: bytes read and written by the compiled operations, the
    figure a memory-bound accelerator step follows;
  * ops: operations in the program's entry computation once fused (on a GPU,
    roughly the kernels launched per step, which bound small models);
  * temp MB: the buffers the compiler plans for intermediate values.

Every ratio is DP / non-private. These are the compiler's figures, not
timings: they predict where a DP step pays on hardware this machine does not
have, and they are exact and repeatable, so a change to the DP path can be
judged by them on any machine. Timings belong to `dp_throughput.py`.

``--path accelerator`` (the default on the CPU) compiles the code path jaxleak
takes on a GPU or TPU: one part per batch and whole-batch tap products, where
XLA:CPU instead gets independent parts, loops of chunks and cache-sized tap
products. XLA's cost analysis counts a loop's body once, so the CPU's own
path (``--path native``) under-counts wherever it loops. Fusion decisions
are XLA:CPU's, so GB accessed and ops are estimates of a GPU's, while GFLOP
is the same on every backend. On a GPU, ``native`` is the accelerator path,
compiled by the GPU compiler.

Usage:
  python benchmarks/dp_cost.py                       # all models, B=256
  python benchmarks/dp_cost.py --models resnet18 --batches 256 1024
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)  # dp_throughput's models and inputs

# Entry-computation instructions that launch no work of their own.
_FREE_OPS = frozenset({"parameter", "constant", "tuple", "get-tuple-element",
                       "bitcast", "after-all", "partition-id", "replica-id"})
# Control flow passes its operands by reference: no bytes of its own.
_CONTROL_OPS = frozenset({"while", "conditional", "call"})
_INSTRUCTION = re.compile(
    r"\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*?)\)(.*)")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "f32": 4,
               "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def use_accelerator_path() -> None:
  """Makes jaxleak trace its GPU/TPU code path on any backend (this process)."""
  from jaxleak.dp import layerwise  # pylint: disable=g-import-not-at-top
  from jaxleak.dp import per_example  # pylint: disable=g-import-not-at-top
  # One independent part per batch, so no loop chunks either.
  per_example.CPU_INDEPENDENT_PARTS = 1
  # `_tap_products` branches on the platform inside the traced program.
  layerwise._tap_products = layerwise._tap_products_whole_batch  # pylint: disable=protected-access


def entry_instructions(hlo_text: str) -> list[tuple[str, ...]]:
  """``(name, shape, opcode, operands, rest)`` of each ENTRY instruction."""
  lines = hlo_text.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
  instructions = []
  for line in lines[start + 1:]:
    if line.startswith("}"):
      break
    match = _INSTRUCTION.match(line)
    if match:
      instructions.append(match.groups())
  return instructions


def entry_ops(instructions) -> int:
  """Operations among `entry_instructions`, free ones aside."""
  return sum(opcode not in _FREE_OPS for _, _, opcode, _, _ in instructions)


def _shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string (a tuple's are its elements' sum)."""
  return sum(_ITEM_BYTES.get(dtype, 4) * math.prod(
      int(d) for d in dims.split(",") if d)
             for dtype, dims in _ARRAY.findall(shape))


def bytes_by_op_name(instructions) -> collections.Counter:
  """Bytes each of `entry_instructions` reads and writes, summed by op_name.

  Estimated from the compiled HLO's shapes (operands plus result), grouped
  by the last part of the JAX op name that made the operation, with
  "forward:" and "backward:" marking the model's own passes. A map of where
  a step moves memory, not XLA's own per-operation figure.
  """
  sizes: dict[str, int] = {}
  groups: collections.Counter = collections.Counter()
  for name, shape, opcode, operands, rest in instructions:
    sizes[name] = _shape_bytes(shape)
    if opcode in _FREE_OPS or opcode in _CONTROL_OPS:
      continue
    moved = sizes[name] + sum(sizes.get(o.strip().lstrip("%"), 0)
                              for o in operands.split(","))
    op_name = re.search(r'op_name="([^"]*)"', rest)
    op_name = op_name.group(1) if op_name else opcode
    group = op_name.split("/")[-1]
    if "transpose(jvp(" in op_name:
      group = "backward:" + group
    elif "jvp(" in op_name:
      group = "forward:" + group
    groups[group] += moved
  return groups


def compiled_cost(fn, *args) -> dict:
  """GFLOP, GB accessed, entry ops and temp MB of ``jax.jit(fn)(*args)``."""
  import jax  # pylint: disable=g-import-not-at-top
  compiled = jax.jit(fn).lower(*args).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  memory = compiled.memory_analysis()
  instructions = entry_instructions(compiled.as_text())
  return {"gflop": cost.get("flops", 0.0) / 1e9,
          "gb_accessed": cost.get("bytes accessed", 0.0) / 1e9,
          "ops": entry_ops(instructions),
          "temp_mb": (memory.temp_size_in_bytes / 2**20
                      if memory is not None else float("nan")),
          "mb_by_op_name": {k: v / 2**20 for k, v in
                            bytes_by_op_name(instructions).most_common()}}


def model_costs(model: str, batch: int) -> dict:
  """Compiled costs of the DP-PSASC train step and the SGD step of `model`."""
  from dp_throughput import jax_setup  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from jaxleak import dp  # pylint: disable=g-import-not-at-top
  from jaxleak import dp_training  # pylint: disable=g-import-not-at-top

  apply_fn, params, loss_fn, (x, y, mask) = jax_setup(model, batch)
  rule = dp.psasc(1.0, 0.1, 1.0)
  dp_opt = dp_training.make_dp_optimizer(rule, 1.0, jax.random.key(1),
                                         expected_batch_size=batch,
                                         learning_rate=0.1, momentum=0.9)
  dp_step = dp_training.make_dp_train_step(apply_fn, rule, dp_opt, path="auto")
  sgd = optax.sgd(0.1, momentum=0.9)

  def sgd_step(p, s, x, y):
    u, s = sgd.update(jax.grad(loss_fn)(p, (x, y)), s, p)
    return optax.apply_updates(p, u), s

  return {"dp": compiled_cost(dp_step, params, dp_opt.init(params), x, y, mask),
          "nonprivate": compiled_cost(sgd_step, params, sgd.init(params), x, y)}


def main() -> None:
  from dp_throughput import SHAPES  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--models", nargs="+", default=list(SHAPES),
                  choices=list(SHAPES))
  ap.add_argument("--batches", nargs="+", type=int, default=[256])
  ap.add_argument("--path", choices=("accelerator", "native"), default=None,
                  help="code path to compile (default: accelerator on the CPU, "
                       "native elsewhere, where it is the same)")
  ap.add_argument("--breakdown", type=int, default=0, metavar="N",
                  help="also list the N op names whose operations move the "
                       "most bytes in the DP step, next to the non-private "
                       "step's")
  ap.add_argument("--out", default=None, help="write results JSON here")
  args = ap.parse_args()
  if any(b < 1 for b in args.batches):
    ap.error(f"argument --batches: must be positive, got {args.batches}")
  import jax  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  path = args.path or ("accelerator" if backend == "cpu" else "native")
  if path == "accelerator":
    use_accelerator_path()
  device = jax.devices()[0].device_kind
  print(f"Compiled by XLA:{backend.upper()} ({device}), jaxleak's {path} path; "
        "ratios are DP-PSASC step / non-private SGD step.")
  print("| model | batch | GFLOP dp / np | ratio | GB accessed dp / np | ratio "
        "| ops dp / np | ratio | temp MB dp / np | ratio |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  results, breakdowns = [], []
  for model in args.models:
    for batch in args.batches:
      cost = model_costs(model, batch)
      d, n = cost["dp"], cost["nonprivate"]
      cells = []
      for key, fmt in (("gflop", ".2f"), ("gb_accessed", ".3f"), ("ops", "d"),
                       ("temp_mb", ".0f")):
        cells.append(f"{d[key]:{fmt}} / {n[key]:{fmt}} | "
                     f"{d[key] / n[key]:.2f}x")
      print(f"| {model} | {batch} | " + " | ".join(cells) + " |", flush=True)
      if args.breakdown:
        breakdowns.append(_breakdown(model, batch, cost, args.breakdown))
      results.append({"model": model, "batch": batch, "backend": backend,
                      "device": device, "path": path, **cost})
  print("".join(breakdowns), end="")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)


def _breakdown(model: str, batch: int, cost: dict, top: int) -> str:
  """Markdown table: the DP step's heaviest op names by bytes moved."""
  dp_mb, np_mb = cost["dp"]["mb_by_op_name"], cost["nonprivate"]["mb_by_op_name"]
  rows = [f"\n{model}, batch {batch}: MB moved by op name (estimated from the "
          "compiled HLO's shapes; all ops: "
          f"{sum(dp_mb.values()):.0f} DP, {sum(np_mb.values()):.0f} "
          "non-private)\n| op name | DP step | non-private step |\n|---|---|---|"]
  for name in list(dp_mb)[:top]:
    rows.append(f"| {name} | {dp_mb[name]:.0f} | {np_mb.get(name, 0):.0f} |")
  return "\n".join(rows) + "\n"


if __name__ == "__main__":
  main()
