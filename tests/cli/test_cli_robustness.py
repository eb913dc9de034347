"""Bad CLI input stops before any work with one line naming the flag.

In-process through `jaxleak.cli.main.main`, so each case costs milliseconds:
the checks run while the arguments are parsed, before data or models load.
"""

import math

import jax
import numpy as np
import pytest

from jaxleak import diffusion
from jaxleak import dp
from jaxleak.cli import _common
from jaxleak.cli import main as cli_main

# (command line, the flag the message must name). Each was accepted, or
# failed late with an internal name, before the flags were typed.
BAD_INPUTS = [
    (["sample-prior", "--prior", "mnist", "--guidance-scale", "nan"],
     "--guidance-scale"),
    (["sample-prior", "--prior", "mnist", "--eta", "inf"], "--eta"),
    (["sample-prior", "--prior", "mnist", "--n", "0"], "--n"),
    (["attack", "--batch-size", "0"], "--batch-size"),
    (["attack", "--lr", "nan"], "--lr"),
    (["attack", "--noise-std", "-1", "--defence", "gaussian"], "--noise-std"),
    (["attack", "--trials", "-2"], "--trials"),
    (["attack", "--zeta", "inf"], "--zeta"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--epochs", "-1"], "--epochs"),
    (["train-dp", "--epsilon", "nan"], "--epsilon"),
    (["train-dp", "--delta", "1"], "--delta"),
    (["train-dp", "--momentum", "inf"], "--momentum"),
    (["train-dp", "--clip", "0"], "--clip"),
    (["train-prior", "--lr", "nan"], "--lr"),
    (["train-prior", "--ema-decay", "1.5"], "--ema-decay"),
    (["unlearn", "--lr", "nan"], "--lr"),
    (["unlearn", "--ratio", "inf"], "--ratio"),
    (["unlearn", "--batch-size", "0"], "--batch-size"),
    (["unlearn", "--epochs", "2"], "--snapshots"),  # default --snapshots 2
    (["i2f", "--noise-var", "nan"], "--noise-var"),
    (["i2f", "--eps", "inf"], "--eps"),
    (["i2f", "--n", "2"], "--n"),
    (["audit", "--set", "ig_steps=0"], "--set ig_steps"),
    (["audit", "--set", "dp_clip=inf"], "--set dp_clip"),
    (["audit", "--epsilons", "nan"], "--epsilons"),
    (["audit", "--seed", "-3"], "--seed"),
]


@pytest.mark.parametrize("argv,flag", BAD_INPUTS,
                         ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_number_exits_2_naming_the_flag_before_any_work(
    tmp_path, capsys, argv, flag):
  workdir = tmp_path / "run"
  assert cli_main.main(argv + ["--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1, err  # one line, no traceback, no usage block
  assert f"argument {flag}:" in err
  assert err.startswith(f"jaxleak {argv[0]}: error:")
  assert not workdir.exists()  # nothing was created: no work started


def test_attack_batch_size_zero_is_not_a_numpy_reduction_error(capsys):
  assert cli_main.main(["attack", "--batch-size", "0"]) == 2
  err = capsys.readouterr().err
  assert "zero-size array" not in err and "--batch-size" in err


@pytest.mark.parametrize("argv,flag", [
    (["train", "--model", "no_such_net"], "--model"),
    (["attack", "--model", "no_such_net"], "--model"),
    (["attack", "--attack", "no_such_attack"], "--attack"),
    (["i2f", "--init", "no_such_init"], "--init"),
    (["unlearn", "--model", "no_such_net"], "--model"),
    (["audit", "--model", "no_such_net"], "--model"),
    (["dp-audit", "--model", "no_such_net"], "--model"),
    (["dp-audit", "--mode", "input", "--init", "no_such_init"], "--init"),
])
def test_unknown_name_names_the_flag_and_lists_choices(tmp_path, capsys, argv,
                                                       flag):
  workdir = tmp_path / "run"
  assert cli_main.main(argv + ["--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert f"argument {flag}: unknown" in err and "choose from" in err
  assert "get_attack" not in err and "create:" not in err  # internal names
  assert not workdir.exists()


@pytest.mark.parametrize("argv,expected", [
    (["train-prior", "--dataset", "no_such_data", "--resolution", "8"],
     "argument --dataset: dataset 'no_such_data' not found: "),
    (["train", "--dataset", "no_such_data"],
     "argument --dataset: dataset 'no_such_data' not found: "),
    (["sample-prior", "--prior", "no_such_prior"],
     "argument --prior: 'no_such_prior' is neither a "),
], ids=lambda v: v[0] if isinstance(v, list) else "")
def test_unknown_dataset_or_prior_names_the_flag_not_the_loader(
    tmp_path, capsys, argv, expected):
  # Was "load: dataset ..." and "load_prior: argument 'name_or_path'=...".
  workdir = tmp_path / "run"
  assert cli_main.main(argv + ["--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"jaxleak {argv[0]}: error: {expected}"), err
  assert err.count("\n") == 1
  assert not workdir.exists()


def test_every_float_option_rejects_non_finite_values():
  """The safety net in main catches a plain `type=float` option too."""
  parser = _common.Parser(prog="jaxleak x")
  parser.add_argument("--rate", type=float, default=1.0)
  args = parser.parse_args(["--rate", "inf"])
  with pytest.raises(SystemExit) as e:
    _common.check_finite_args(parser, args)
  assert e.value.code == 2


def test_argument_types_accept_their_bounds_and_reject_the_rest():
  assert _common.positive_int("3") == 3
  assert _common.nonnegative_int("0") == 0
  assert _common.open_unit_float("0.5") == 0.5
  assert _common.at_least(1.0)("1") == 1.0
  assert _common.finite_float("-2.5") == -2.5
  for convert, text in [(_common.positive_int, "0"),
                        (_common.positive_int, "1.5"),
                        (_common.nonnegative_int, "-1"),
                        (_common.positive_float, "nan"),
                        (_common.nonnegative_float, "-inf"),
                        (_common.open_unit_float, "1"),
                        (_common.finite_float, "inf"),
                        (_common.at_least(1.0), "0.99")]:
    with pytest.raises(Exception, match="must be"):
      convert(text)


def test_help_lists_defaults_of_every_subcommand(capsys):
  for command in ("train", "train-dp", "train-prior", "sample-prior",
                  "unlearn", "attack", "i2f"):
    assert cli_main.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: " in out, command
  cli_main.main(["train", "--help"])
  out = " ".join(capsys.readouterr().out.split())
  assert "--epochs EPOCHS (default: 20)" in out
  assert "--batch-size BATCH_SIZE (default: 64)" in out


def test_sample_prior_help_names_the_folder_it_uses(capsys):
  cli_main.main(["sample-prior", "--help"])
  out = " ".join(capsys.readouterr().out.split())
  assert "runs/sample-mnist_subset for --prior mnist" in out


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_library_samplers_reject_non_finite_guidance_and_eta(bad):
  """`generate` used to return NaN images for guidance_scale=nan."""
  apply_fn = lambda params, x, t, cond: x
  with pytest.raises(ValueError, match="guidance_scale"):
    diffusion.sampling.make_eps_fn(apply_fn, None, np.zeros(2, np.int32),
                                   guidance_scale=bad,
                                   null_cond=np.ones(2, np.int32))
  with pytest.raises(ValueError, match="eta"):
    diffusion.sampling.ddim_step_fn(None, None, eta=bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1])
def test_dp_transforms_reject_a_bad_learning_rate(bad):
  with pytest.raises(ValueError, match="learning_rate"):
    dp.dp_psasc(learning_rate=bad, noise_multiplier=1.0,
                key=jax.random.key(0), expected_batch_size=8)
