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
  would score near 1, above the held-out baseline). A prior trained on one
  class of a two-class dataset (``jaxleak train-prior --class face`` on
  ``lfw_faces``) is compared with that class only, and its samples are also
  scored by a *judge*: a HOG + logistic-regression face / non-face
  classifier trained on crops the prior never saw (the held-out test-split
  faces, with their mirror images, against the train-split non-faces and
  synthetic noise images, so that noise is not called a face). The judge's
  accuracy is measured on the prior's training faces (which the judge never
  saw) and the test-split non-faces, and its face rate on fresh noise images
  (another seed) is reported as a sanity check.

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


def _of_class(ds, index):
  return ds.subset(np.flatnonzero(np.asarray(ds.labels) == index))


def hog_features(images: np.ndarray) -> np.ndarray:
  """HOG descriptors (4x4-pixel cells, 2x2 blocks) of NHWC greyscale images."""
  from skimage import feature  # pylint: disable=g-import-not-at-top
  return np.stack([feature.hog(im[..., 0], orientations=9,
                               pixels_per_cell=(4, 4), cells_per_block=(2, 2))
                   for im in np.asarray(images, np.float32)])


def train_face_judge(train_all, test_all, class_index: int, seed: int):
  """HOG + logistic regression: class `class_index` against the rest.

  Trained on crops the prior never saw: the test split's images of the
  class (with left-right mirrors, each shifted by -1, 0, 1 pixel in y and
  x) as positives and the train split's other
  images plus 160 synthetic noise images (`_noise_controls`, seed + 1000)
  as negatives. Returns (predict_fn, accuracy record), where
  predict_fn(images) -> bool array "judged of the class" and the record
  holds the judge's accuracy on the prior's training images of the class
  (unseen by the judge) and on the test split's other images.
  """
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  pos = _of_class(test_all, class_index).images
  pos = _shifted(np.concatenate([pos, pos[:, :, ::-1]]), 1)
  neg = train_all.subset(np.flatnonzero(
      np.asarray(train_all.labels) != class_index)).images
  noise = np.concatenate(list(_noise_controls(
      pos.shape[1:], 40, seed + 1000).values()))
  neg = np.concatenate([neg, noise])
  x = hog_features(np.concatenate([pos, neg]))
  y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
  clf = linear_model.LogisticRegression(C=1.0, class_weight="balanced",
                                        max_iter=5000, random_state=seed)
  clf.fit(x, y)

  def predict(images):
    return clf.predict(hog_features(images)).astype(bool)

  train_pos = _of_class(train_all, class_index).images
  test_neg = test_all.subset(np.flatnonzero(
      np.asarray(test_all.labels) != class_index)).images
  rec = {"judge": "HOG (9 orientations, 4x4 cells, 2x2 blocks) + logistic "
                  "regression (C=1, balanced); positives: held-out faces, "
                  "mirrored, +-1 px shifts; negatives: train-split "
                  "non-faces and noise",
         "judge_train_positives": int(len(pos)),
         "judge_train_negatives": int(len(neg)),
         "judge_recall_on_prior_training_images": float(
             predict(train_pos).mean()),
         "judge_specificity_on_heldout_negatives": float(
             1.0 - predict(test_neg).mean()),
         "judge_eval_positives": int(len(train_pos)),
         "judge_eval_negatives": int(len(test_neg))}
  return predict, rec


def _shifted(images: np.ndarray, s: int) -> np.ndarray:
  """Every (dy, dx) translation in [-s, s]^2 of NHWC images, edge-padded."""
  h, w = images.shape[1:3]
  out = []
  for dy in range(-s, s + 1):
    for dx in range(-s, s + 1):
      rows = np.clip(np.arange(h) - dy, 0, h - 1)
      cols = np.clip(np.arange(w) - dx, 0, w - 1)
      out.append(images[:, rows][:, :, cols])
  return np.concatenate(out)


def _noise_controls(shape, n: int, seed: int) -> dict[str, np.ndarray]:
  """Noise images (not faces): white, and Gaussian-smoothed at sigma 1, 2, 3."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  out = {"white_noise": np.clip(rng.normal(0.5, 0.25, (n,) + shape), 0,
                                1).astype(np.float32)}
  for sigma in (1, 2, 3):
    smooth = np.stack([ndimage.gaussian_filter(w[..., 0], sigma)[..., None]
                       for w in rng.normal(0.0, 1.0, (n,) + shape)])
    smooth = (smooth - smooth.min(axis=(1, 2, 3), keepdims=True)) / np.ptp(
        smooth, axis=(1, 2, 3), keepdims=True)
    out[f"smoothed_noise_sigma{sigma}"] = smooth.astype(np.float32)
  return out


def evaluate_unconditional(prior, cfg, workdir: str,
                           out: dict) -> tuple[dict, dict]:
  dataset = prior.info.get("dataset", prior.name)
  train_all = data.load(dataset, "train", resolution=prior.resolution)
  test_all = data.load(dataset, "test", resolution=prior.resolution)
  class_index = prior.info.get("class_index")
  train, test = train_all, test_all
  tables = {}
  if class_index is not None:
    # A one-class prior is compared with its own class only.
    train = _of_class(train_all, class_index)
    test = _of_class(test_all, class_index)
  t0 = time.time()
  samples = diffusion.generate(prior, jax.random.key(cfg.sample_seed), cfg.n,
                               num_steps=cfg.steps, eta=cfg.eta)
  sample_s = time.time() - t0
  judged = None
  if class_index is not None:
    predict, rec = train_face_judge(train_all, test_all, class_index,
                                    cfg.seed)
    judged = predict(samples)
    controls = {k: float(predict(v).mean()) for k, v in
                _noise_controls(tuple(prior.image_shape), 200,
                                cfg.seed).items()}
    out.update(rec)
    out.update({
        "class": prior.info.get("class"),
        "judged_of_class_share": float(judged.mean()),
        "judged_of_class_count": int(judged.sum()),
        "judge_face_rate_on_controls": controls})
    tables["Judge"] = [
        {"images": f"{cfg.n} prior samples", "judged "
         f"{prior.info.get('class')}": float(judged.mean())},
        {"images": f"{rec['judge_eval_positives']} prior training images "
         "(unseen by the judge)", f"judged {prior.info.get('class')}":
         rec["judge_recall_on_prior_training_images"]},
        {"images": f"{rec['judge_eval_negatives']} held-out other-class "
         "images", f"judged {prior.info.get('class')}":
         1.0 - rec["judge_specificity_on_heldout_negatives"]},
    ] + [{"images": f"200 {k}", f"judged {prior.info.get('class')}": v}
         for k, v in controls.items()]
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
  titles = (None if judged is None
            else ["face" if j else "no" for j in judged[:64]])
  grid = metrics.save_image_grid(samples[:64],
                                 os.path.join(workdir, "samples.png"),
                                 nrow=8, titles=titles)
  pairs = metrics.save_comparison_grid(
      train.images[nn_samples.index[:m]], samples[:m],
      os.path.join(workdir, "nearest_training_faces.png"),
      show_psnr=False, labels=("nearest training image", "sample"))
  return tables, {"Samples" + (" (title: the judge's verdict)"
                               if judged is not None else ""): grid,
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
    if "judged_of_class_share" in out:
      headline += (f"; judged {out['class']}: "
                   f"{out['judged_of_class_share']:.3f}")
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
