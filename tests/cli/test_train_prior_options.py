"""train-prior's data and architecture options: --class, --attention, --shift.

Parsed and resolved in-process without training (milliseconds each); the
training loop itself is covered by tests/diffusion/test_training.py.
"""

import argparse

import numpy as np
import pytest

from jaxleak import data
from jaxleak.cli import main as cli_main
from jaxleak.cli import prior as prior_cli


def _parse(argv):
  parser = argparse.ArgumentParser()
  prior_cli.register(parser.add_subparsers())
  return parser.parse_args(["train-prior"] + argv)


def test_class_selects_the_faces_of_lfw_faces():
  ds = data.load("lfw_faces", "train", resolution=32)
  faces, index = prior_cli._select_class(ds, "face")
  assert index == 1 and len(faces) == 80
  assert np.all(np.asarray(faces.labels) == 1)
  # By index too, and the other class is the 80 non-faces.
  non_faces, index = prior_cli._select_class(ds, "0")
  assert index == 0 and len(non_faces) == 80
  with pytest.raises(ValueError, match="'--class'.*'non-face', 'face'"):
    prior_cli._select_class(ds, "cat")
  with pytest.raises(ValueError, match="'--class'"):
    prior_cli._select_class(ds, "2")


def test_attention_flags_build_the_spec():
  args = _parse(["--block-channels", "32", "32", "64", "--attention", "0", "0",
                 "1", "--self-attention", "--shift", "2"])
  assert args.shift == 2
  spec = prior_cli._spec_from_args(args, channels=1, num_classes=0)
  assert spec.attention == (False, False, True)
  assert spec.self_attention and not spec.mid_attention
  config = spec.diffusers_config()
  assert config["down_block_types"][-1] == "CrossAttnDownBlock2D"
  assert config["up_block_types"][0] == "CrossAttnUpBlock2D"
  assert config["only_cross_attention"] is False
  # Defaults are unchanged: an unconditional UNet without attention.
  spec = prior_cli._spec_from_args(_parse([]), channels=1, num_classes=0)
  assert spec.attention == (False, False, False) and not spec.self_attention
  args = _parse(["--attention", "1", "0"])
  with pytest.raises(ValueError, match="'--attention'.*3"):
    prior_cli._spec_from_args(args, channels=1, num_classes=0)


@pytest.mark.parametrize("argv,flag", [
    (["--attention", "2", "0", "1"], "--attention"),
    (["--shift", "-1"], "--shift"),
])
def test_bad_option_exits_2_naming_the_flag(tmp_path, capsys, argv, flag):
  code = cli_main.main(["train-prior"] + argv +
                       ["--workdir", str(tmp_path / "run")])
  assert code == 2
  assert f"argument {flag}" in capsys.readouterr().err


def test_class_with_class_conditional_is_refused(tmp_path, capsys):
  code = cli_main.main(["train-prior", "--dataset", "lfw_faces", "--class",
                        "face", "--class-conditional", "--workdir",
                        str(tmp_path / "run"), "--no-progress"])
  assert code == 2
  assert "'--class'" in capsys.readouterr().err
  assert not (tmp_path / "run").exists()


def test_init_prior_loads_matching_weights_and_refuses_others():
  from jaxleak import diffusion
  prior = diffusion.load_prior("lfw_faces")
  spec = prior.spec
  import jax
  fresh = diffusion.init_unet(spec, jax.random.key(0))
  params = prior_cli._init_from_prior("lfw_faces", spec, fresh)
  a = jax.tree.leaves(params)[0]
  np.testing.assert_array_equal(a, jax.tree.leaves(prior.params)[0])
  other = diffusion.UNetSpec(resolution=32, channels=1,
                             block_out_channels=(32, 64))
  with pytest.raises(ValueError, match="'--init-prior'.*UNet"):
    prior_cli._init_from_prior("lfw_faces", other, fresh)
