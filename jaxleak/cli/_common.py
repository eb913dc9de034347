"""Arguments and set-up shared by several subcommands (model, data, workdir)."""

from __future__ import annotations

import argparse
import os
from typing import Any


def add_data_args(p: argparse.ArgumentParser, *, default: str = "mnist_subset"
                  ) -> None:
  p.add_argument("--dataset", default=default,
                 help="embedded name (digits, mnist_subset, sample_images, "
                      "lfw_faces) or a tfds name prepared under --data-dir")
  p.add_argument("--data-dir", default=None,
                 help="tfds data_dir for non-embedded datasets (offline)")
  p.add_argument("--resolution", type=int, default=None,
                 help="resize images to RES x RES (default: native size)")


def add_model_args(p: argparse.ArgumentParser, *, default: str = "lenet") -> None:
  p.add_argument("--model", default=default,
                 help="lenet, convnet, mlp, cnn_mnist, cnn_cifar or resnet18")
  p.add_argument("--init", default="default",
                 help="initialiser: default, uniform, normal, kaiming or xavier")


def add_run_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", default=None,
                 help="output folder (checkpoints, metrics.json, report.md, PNGs); "
                      "default runs/<command>-<model>-<dataset>")
  p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def default_workdir(command: str, args: argparse.Namespace) -> str:
  """`--workdir`, else runs/<command>-<model>-<dataset>; stored in `args`.

  Storing it makes the config that reports print show the folder used.
  """
  if not args.workdir:
    parts = [command] + [str(getattr(args, k)) for k in ("model", "dataset")
                         if getattr(args, k, None)]
    args.workdir = os.path.join("runs", "-".join(parts))
  return args.workdir


def load_splits(args: argparse.Namespace):
  from jaxleak import data  # pylint: disable=g-import-not-at-top
  train = data.load(args.dataset, "train", args.data_dir, resolution=args.resolution)
  test = data.load(args.dataset, "test", args.data_dir, resolution=args.resolution)
  check_classes(train, args.dataset)
  return train, test


def check_classes(dataset: Any, name: str) -> None:
  """Refuses a dataset with fewer than 2 classes for a classifier command."""
  if dataset.num_classes < 2:
    raise ValueError(
        f"argument --dataset: {name!r} has {dataset.num_classes} class(es); "
        "training or attacking a classifier needs at least 2 (with one class "
        "the cross-entropy and its gradient are identically zero)")


def create_model(args: argparse.Namespace, dataset: Any, key):
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  return models.create(args.model, dataset.num_classes, dataset.image_shape, key,
                       init=args.init)
