"""Measures a diffusion prior's quality and writes a report.

Thin launcher over `jaxleak.diffusion` (generate, class_agreement,
nearest_neighbour_ssim) and `jaxleak.training`.

* Class-conditional prior (e.g. ``mnist``): draws ``--n`` samples with the
  labels cycling over the classes and reports the share that an independent
  ``cnn_mnist`` classifier, trained on the prior's dataset at the prior's
  resolution, assigns to the class they were conditioned on (the
  "class agreement"), per class and as a confusion matrix.
* Unconditional prior (e.g. ``lfw_faces``): draws ``--n`` samples and reports
  the SSIM from each sample to its nearest training image, next to the same
  statistic for held-out real images (a prior that copies its training set
  would score near 1, above the held-out baseline).

  python experiments/diffusion/evaluate_prior.py \\
      --config experiments/diffusion/configs/prior.py:mnist \\
      --workdir experiments/diffusion/results/mnist_guidance8_eta1_steps100
  python experiments/diffusion/evaluate_prior.py \\
      --config experiments/diffusion/configs/prior.py:lfw_faces \\
      --workdir experiments/diffusion/results/lfw_faces

The config (``prior``, ``n``, ``steps``, ``eta``, ``guidance_scale``,
``seed``, ``sample_seed``) takes overrides such as ``--config.n=100``.

The classifier is trained once into ``<workdir>/classifier`` (rerunning
restores it from its checkpoint).
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np

from jaxleak import data
from jaxleak import diffusion
from jaxleak import launch
from jaxleak import metrics
from jaxleak import models
from jaxleak import report
from jaxleak import training

_CONFIG, _WORKDIR = launch.define_config_flags()


def train_judge(prior: diffusion.Prior, dataset: str, workdir: str,
                seed: int) -> tuple[object, object, float]:
  """cnn_mnist trained on the prior's dataset at the prior's resolution.

  Exactly the run of ``jaxleak train --model cnn_mnist --dataset DATASET
  --resolution R --seed SEED --workdir WORKDIR`` (same config and identity),
  so an existing run of that command is restored instead of retrained.
  """
  train = data.load(dataset, "train", resolution=prior.resolution)
  test = data.load(dataset, "test", resolution=prior.resolution)
  apply_fn, params = models.create("cnn_mnist", train.num_classes,
                                   train.image_shape, jax.random.key(seed),
                                   init="default")
  config = training.TrainConfig(epochs=20, batch_size=64, learning_rate=2e-3,
                                weight_decay=0.0, seed=seed,
                                checkpoint_every=200)
  result = training.train_classifier(
      apply_fn, params, train, test, config, workdir=workdir,
      run_info={"model": "cnn_mnist", "dataset": dataset, "init": "default",
                "resolution": prior.resolution, "data_dir": None})
  return apply_fn, result.params, result.test_accuracy


def evaluate_conditional(prior, cfg, workdir: str, out: dict) -> tuple[dict, dict]:
  dataset = prior.info.get("dataset", prior.name)
  apply_fn, params, judge_acc = train_judge(
      prior, dataset, os.path.join(workdir, "classifier"), cfg.seed)
  k = prior.num_classes
  labels = np.arange(cfg.n) % k
  t0 = time.time()
  samples = diffusion.generate(prior, jax.random.key(cfg.sample_seed), cfg.n,
                               labels=labels, num_steps=cfg.steps,
                               eta=cfg.eta,
                               guidance_scale=cfg.guidance_scale)
  sample_s = time.time() - t0
  predict = jax.jit(lambda x: apply_fn(params, x))
  agree = diffusion.class_agreement(predict, samples, labels, k)
  out.update({
      "class_agreement": agree.accuracy,
      "per_class_agreement": {prior.class_names[c] if prior.class_names
                              else str(c): float(agree.per_class[c])
                              for c in range(k)},
      "confusion": agree.confusion.tolist(),
      "judge": "cnn_mnist", "judge_test_accuracy": judge_acc,
      "sampling_wall_time_s": sample_s,
  })
  # Grid: one row per class, the first 10 samples of each.
  per_row = min(10, cfg.n // k)
  order = np.concatenate([np.flatnonzero(labels == c)[:per_row]
                          for c in range(k)])
  titles = [f"{labels[i]}->{agree.predictions[i]}" for i in order]
  grid = metrics.save_image_grid(samples[order],
                                 os.path.join(workdir, "samples.png"),
                                 nrow=per_row, titles=titles)
  rows = [{"conditioned on": name, "agreement": acc}
          for name, acc in out["per_class_agreement"].items()]
  return ({"Agreement per class": rows},
          {"Samples (title: conditioned label -> classifier's label)": grid})


def evaluate_unconditional(prior, cfg, workdir: str,
                           out: dict) -> tuple[dict, dict]:
  dataset = prior.info.get("dataset", prior.name)
  train = data.load(dataset, "train", resolution=prior.resolution)
  test = data.load(dataset, "test", resolution=prior.resolution)
  t0 = time.time()
  samples = diffusion.generate(prior, jax.random.key(cfg.sample_seed), cfg.n,
                               num_steps=cfg.steps, eta=cfg.eta)
  sample_s = time.time() - t0
  nn_samples = diffusion.nearest_neighbour_ssim(samples, train.images)
  nn_test = diffusion.nearest_neighbour_ssim(test.images, train.images)
  out.update({
      "nn_ssim_samples_to_train_mean": float(nn_samples.ssim.mean()),
      "nn_ssim_samples_to_train_max": float(nn_samples.ssim.max()),
      "nn_ssim_heldout_to_train_mean": float(nn_test.ssim.mean()),
      "nn_ssim_heldout_to_train_max": float(nn_test.ssim.max()),
      "sampling_wall_time_s": sample_s,
  })
  m = min(16, cfg.n)
  grid = metrics.save_image_grid(samples[:64],
                                 os.path.join(workdir, "samples.png"),
                                 nrow=8)
  pairs = metrics.save_comparison_grid(
      train.images[nn_samples.index[:m]], samples[:m],
      os.path.join(workdir, "nearest_training_faces.png"),
      show_psnr=False, labels=("nearest training image", "sample"))
  return {}, {"Samples": grid,
              "Samples (bottom) and their nearest training images (top)":
                  pairs}


def main(argv) -> int:
  del argv
  cfg = _CONFIG.value.copy_and_resolve_references()
  workdir = launch.study_workdir(_WORKDIR.value)
  if cfg.sample_seed < 0:
    cfg.sample_seed = cfg.seed
  prior = diffusion.load_prior(cfg.prior)
  out = {"prior": prior.name, "n": cfg.n, "ddim_steps": cfg.steps, "eta": cfg.eta,
         "guidance_scale": cfg.guidance_scale, "seed": cfg.seed,
         "sample_seed": cfg.sample_seed,
         "prior_info": prior.info}
  if prior.conditional:
    tables, figures = evaluate_conditional(prior, cfg, workdir, out)
    headline = f"class agreement {out['class_agreement']:.3f}"
  else:
    tables, figures = evaluate_unconditional(prior, cfg, workdir, out)
    headline = ("NN-SSIM samples->train "
                f"{out['nn_ssim_samples_to_train_mean']:.3f} (held-out real "
                f"{out['nn_ssim_heldout_to_train_mean']:.3f})")
  report.write_json(os.path.join(workdir, "metrics.json"), out)
  summary = {k: v for k, v in out.items()
             if isinstance(v, (int, float, str)) and k != "prior_info"}
  report.write_report(workdir, f"Prior quality: {prior.name}",
                      summary=summary, tables=tables, figures=figures,
                      config={"command": " ".join(sys.argv),
                              "config": cfg.to_dict(),
                              "prior_info": prior.info})
  print(f"{prior.name}: {headline}; wrote {workdir}/report.md")
  return 0


if __name__ == "__main__":
  launch.run(main)
