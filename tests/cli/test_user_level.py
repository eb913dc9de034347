"""`jaxleak attack --attack user_level_diffusion --users N` end to end, tiny.

sklearn digits (8x8), a random-weight 16x16 prior saved to a folder (the
attack resizes its output to the victim's 8x8), 3 users of 5 images, a
2-step chain and 2 iterations: the point is the plumbing (training the
victim and judge, per-user figures, metrics.json, report.md), not quality.
"""

import json
import os

import pytest

from jaxleak import diffusion
from jaxleak.cli import main as cli


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
  prior = diffusion.random_prior(
      diffusion.UNetSpec(resolution=16, channels=1, block_out_channels=(32,)),
      name="tiny")
  path = tmp_path_factory.mktemp("prior") / "tiny"
  diffusion.save_prior(prior, path)
  return str(path)


def test_user_level_cli_writes_figures_metrics_report(tmp_path, prior_dir,
                                                      capsys):
  workdir = tmp_path / "run"
  code = cli.main([
      "attack", "--attack", "user_level_diffusion", "--prior", prior_dir,
      "--dataset", "digits", "--batch-size", "5", "--users", "3",
      "--user-mode", "dominant", "--share", "0.6", "--steps", "2",
      "--iterations", "2", "--window", "1", "--hide-labels",
      "--train-epochs", "4",
      "--fast-compile", "--no-progress", "--workdir", str(workdir)])
  assert code == 0, capsys.readouterr().err
  for name in ("metrics.json", "report.md", "representatives.png",
               "loss_curve.png", "users/user00.png", "users/user02.png"):
    assert os.path.getsize(workdir / name) > 0, name
  with open(workdir / "metrics.json") as f:
    out = json.load(f)
  s = out["summary"]
  assert s["users"] == 3 and s["user_mode"] == "dominant"
  for k in ("attribute_accuracy", "identification_rate",
            "majority_label_accuracy"):
    assert 0 <= s[k] <= 1
  assert -1 <= s["representative_similarity"] <= 1
  assert s["batch_pairwise_min"] <= s["batch_pairwise_mean"] <= (
      s["batch_pairwise_max"])
  assert 0.3 < s["victim_accuracy"] <= 1 and 0.3 < s["judge_accuracy"] <= 1
  # Dominant users: 3 of 5 images in the user's class (0, 1, 2).
  assert [u["attribute"] for u in out["users"]] == [0, 1, 2]
  assert out["hyperparams"]["window"] == 1
  assert "identification rate" in capsys.readouterr().out


@pytest.mark.parametrize("flags,match", [
    (["--users", "1"], "--users must be >= 2"),
    (["--users", "3", "--user-mode", "iid"], "--user-mode must be one of"),
    (["--users", "3", "--share", "1.5"], "--share: must be in"),
    (["--users", "3", "--batch-size", "200"],
     "--batch-size \\(200\\) is larger than a class allows"),
    (["--users", "400", "--batch-size", "5"],
     "--users \\(400\\) x --batch-size \\(5\\) need 2000 examples"),
])
def test_user_level_cli_bad_flags(tmp_path, capsys, flags, match):
  code = cli.main(["attack", "--attack", "user_level_diffusion",
                   "--dataset", "digits", "--workdir",
                   str(tmp_path / "x")] + flags)
  assert code == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxleak attack: error: ")
  import re  # pylint: disable=g-import-not-at-top
  assert re.search(match, err), err
  assert not os.path.exists(tmp_path / "x" / "victim")  # before training


def test_user_level_cli_needs_users(tmp_path, capsys):
  assert cli.main(["attack", "--attack", "user_level_diffusion",
                   "--workdir", str(tmp_path)]) == 2
  assert "--users is required" in capsys.readouterr().err


def test_user_level_cli_conditional_flags_reach_the_attack():
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  from jaxleak.cli import attack  # pylint: disable=g-import-not-at-top
  from jaxleak.cli import main as cli_main  # pylint: disable=g-import-not-at-top
  args = cli_main.build_parser().parse_args(
      ["attack", "--attack", "user_level_diffusion", "--users", "3",
       "--class-conditional", "--guidance-scale", "3"])
  kw = attack._attack_kwargs(inversion.user_level_diffusion, args)  # pylint: disable=protected-access
  assert kw["class_conditional"] is True and kw["guidance_scale"] == 3.0
  plain = cli_main.build_parser().parse_args(
      ["attack", "--attack", "user_level_diffusion", "--users", "3"])
  kw = attack._attack_kwargs(inversion.user_level_diffusion, plain)  # pylint: disable=protected-access
  assert "class_conditional" not in kw and "guidance_scale" not in kw
  wrong = cli_main.build_parser().parse_args(
      ["attack", "--attack", "dlg", "--guidance-scale", "3"])
  with pytest.raises(ValueError, match="--guidance-scale"):
    attack._attack_kwargs(inversion.dlg, wrong)  # pylint: disable=protected-access
