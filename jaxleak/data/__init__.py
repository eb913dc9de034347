"""jaxleak.data: offline datasets, TFDS loading and stateless batching.

Typical use:

  from jaxleak import data

  train = data.load("mnist_subset", "train")           # 4000 x 28x28x1
  for images, labels in data.batches(train, 64, seed=0, epoch=3):
    ...
  sampler = data.PoissonSampler(len(train), expected_batch_size=64, seed=0)
  indices, mask = sampler.batch(step)                   # DP-SGD batch
"""

from jaxleak.data.batching import batches
from jaxleak.data.batching import default_max_batch_size
from jaxleak.data.batching import epoch_permutation
from jaxleak.data.batching import num_batches
from jaxleak.data.batching import partition_users
from jaxleak.data.batching import poisson_batch_indices
from jaxleak.data.batching import PoissonSampler
from jaxleak.data.dataset import Dataset
from jaxleak.data.loaders import available
from jaxleak.data.loaders import DatasetNotFoundError
from jaxleak.data.loaders import DATASETS
from jaxleak.data.loaders import default_data_dir
from jaxleak.data.loaders import EMBEDDED
from jaxleak.data.loaders import load
from jaxleak.data.loaders import SAMPLE_IMAGE_NAMES

__all__ = (
    "Dataset",
    "load",
    "available",
    "DATASETS",
    "EMBEDDED",
    "SAMPLE_IMAGE_NAMES",
    "DatasetNotFoundError",
    "default_data_dir",
    "batches",
    "num_batches",
    "epoch_permutation",
    "poisson_batch_indices",
    "default_max_batch_size",
    "PoissonSampler",
    "partition_users",
)
