"""PNG figures: files exist, have the documented pixel size, and validate input."""

import ast
import pathlib

import numpy as np
import pytest

from jaxleak import metrics


def _read_png(path):
  from matplotlib import image as mpimg  # pylint: disable=g-import-not-at-top
  return mpimg.imread(path)


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  return rng.uniform(size=(5, 16, 16, 3)).astype(np.float32)


def test_image_grid_size_and_content(images, tmp_path):
  path = metrics.save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=3,
                                 titles=[f"#{i}" for i in range(5)],
                                 row_labels=["a", "b"], cell_size=1.0, dpi=50)
  assert path == str(tmp_path / "sub" / "grid.png")
  png = _read_png(path)
  # 3 columns x 2 rows of 1-inch cells at 50 dpi.
  assert png.shape[:2] == (100, 150)
  assert png.std() > 0.05  # Not a blank canvas.


def test_image_grid_defaults_and_grey_images(tmp_path):
  grey = np.linspace(0, 1, 10 * 8 * 8).reshape(10, 8, 8, 1)
  path = metrics.save_image_grid(grey, tmp_path / "grey.png")
  png = _read_png(path)
  # Default: 8 per row -> 2 rows of 1.5-inch cells at 100 dpi.
  assert png.shape[:2] == (300, 1200)
  # Grey colormap: rendered pixels have R == G == B.
  rgb = png[..., :3]
  np.testing.assert_allclose(rgb[..., 0], rgb[..., 1], atol=1e-6)
  np.testing.assert_allclose(rgb[..., 1], rgb[..., 2], atol=1e-6)
  # A single HWC image is accepted.
  single = metrics.save_image_grid(grey[0], tmp_path / "one.png", dpi=40)
  assert _read_png(single).shape[:2] == (60, 60)


def test_comparison_grid(images, tmp_path):
  recon = np.clip(images + 0.05, 0, 1)
  path = metrics.save_comparison_grid(images, recon[::-1], tmp_path / "cmp.png",
                                      match=True, dpi=40)
  png = _read_png(path)
  assert png.shape[:2] == (2 * 60, 5 * 60)
  assert pathlib.Path(path).stat().st_size > 1000
  # match=True undoes the shuffle: the figure (images and PSNR titles) is the
  # one drawn from the reconstructions in their true order, and differs from
  # the unmatched one.
  ordered = metrics.save_comparison_grid(images, recon, tmp_path / "ord.png",
                                         dpi=40)
  unmatched = metrics.save_comparison_grid(images, recon[::-1],
                                           tmp_path / "raw.png", dpi=40)
  np.testing.assert_array_equal(png, _read_png(ordered))
  assert np.any(png != _read_png(unmatched))


def test_curves(tmp_path):
  xs = np.arange(50)
  path = metrics.save_curves(
      {"train": (xs, np.exp(-xs / 10) + 1e-3), "test": (xs, np.exp(-xs / 20))},
      tmp_path / "curves.png", xlabel="step", ylabel="loss", title="loss",
      logy=True)
  png = _read_png(path)
  assert png.shape[:2] == (400, 600)
  small = metrics.save_curves({"": ([0, 1], [1, 0])}, tmp_path / "s.png",
                              xlabel="x", ylabel="y", figsize=(3, 2), dpi=50)
  assert _read_png(small).shape[:2] == (100, 150)


def test_history_curves_equal_the_explicit_curves(tmp_path):
  history = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e}
             for e in (1, 2, 3, 4)]
  got = metrics.save_history_curves(
      history, "epoch", {"train": "train_loss", "test": "test_loss"},
      tmp_path / "h.png", ylabel="loss", title="t", dpi=40)
  want = metrics.save_curves(
      {"train": ([1, 2, 3, 4], [1.0, 1 / 2, 1 / 3, 1 / 4]),
       "test": ([1, 2, 3, 4], [1.2, 1.2 / 2, 1.2 / 3, 1.2 / 4])},
      tmp_path / "c.png", xlabel="epoch", ylabel="loss", title="t", dpi=40)
  np.testing.assert_array_equal(_read_png(got), _read_png(want))
  swapped = metrics.save_history_curves(
      history, "epoch", {"train": "test_loss", "test": "train_loss"},
      tmp_path / "s.png", ylabel="loss", title="t", dpi=40)
  assert np.any(_read_png(swapped) != _read_png(want))


def test_save_figure_full_and_tight(tmp_path):
  from jaxleak.metrics import figures  # pylint: disable=g-import-not-at-top
  fig = figures.new_figure((4, 3), 50)
  fig.add_axes((0.4, 0.4, 0.2, 0.2)).plot([0, 1], [0, 1])
  full = figures.save_figure(fig, tmp_path / "sub" / "full.png", 50)
  assert _read_png(full).shape[:2] == (150, 200)
  tight = _read_png(figures.save_figure(fig, tmp_path / "t.png", 50,
                                        tight=True))
  # Cropped to the small axes and their tick labels, inside the full canvas.
  assert tight.shape[0] < 150 and tight.shape[1] < 200


def test_figure_input_errors(images, tmp_path):
  with pytest.raises(ValueError, match="'images'"):
    metrics.save_image_grid(np.zeros((4, 4)), tmp_path / "x.png")
  with pytest.raises(ValueError, match="'images'.*channels"):
    metrics.save_image_grid(np.zeros((2, 4, 4, 2)), tmp_path / "x.png")
  with pytest.raises(ValueError, match="'titles'"):
    metrics.save_image_grid(images, tmp_path / "x.png", titles=["a"])
  with pytest.raises(ValueError, match="'row_labels'"):
    metrics.save_image_grid(images, tmp_path / "x.png", nrow=5,
                            row_labels=["a", "b"])
  with pytest.raises(ValueError, match="'reconstructions'"):
    metrics.save_comparison_grid(images, images[:2], tmp_path / "x.png")
  with pytest.raises(ValueError, match="'curves'"):
    metrics.save_curves({}, tmp_path / "x.png", xlabel="x", ylabel="y")
  with pytest.raises(ValueError, match="'curves'.*'a'"):
    metrics.save_curves({"a": ([1, 2], [1])}, tmp_path / "x.png", xlabel="x",
                        ylabel="y")
  assert not (tmp_path / "x.png").exists()


def test_metrics_package_does_not_import_matplotlib_at_module_level():
  # Static check: importing jaxleak.metrics must not pull in matplotlib
  # (pyplot in particular); the figure functions import it lazily.
  package = pathlib.Path(metrics.__file__).parent
  for source in package.glob("*.py"):
    tree = ast.parse(source.read_text())
    for node in tree.body:
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [node.module or ""]
      else:
        continue
      assert not any(n.startswith("matplotlib") for n in names), source
