"""`jaxleak.cli.user_level.prepare`: the judge's architecture is an option."""

import os

import jax

from jaxleak.cli import user_level as ul


def _leaves(params):
  return sorted(p.shape for p in jax.tree_util.tree_leaves(params))


def test_judges_of_different_architectures_share_one_victim(tmp_path):
  kw = dict(workdir=str(tmp_path), victim_model="mlp", victim_epochs=1,
            judge_epochs=1, progress=False)
  default = ul.prepare("digits", **kw)
  lenet = ul.prepare("digits", judge_model="lenet",
                     judge_options={"act": "relu"}, **kw)
  assert sorted(os.listdir(tmp_path)) == ["judge", "judge_lenet_act-relu",
                                          "victim"]
  # The default judge is the MLP with 256 units; the other one is LeNet.
  assert (64, 256) in _leaves(default.judge_params)
  assert not any(len(s) == 4 for s in _leaves(default.judge_params))
  assert any(len(s) == 4 for s in _leaves(lenet.judge_params))  # conv kernels
  # One victim, restored for the second call.
  assert _leaves(lenet.victim_params) == _leaves(default.victim_params)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: bool((a == b).all()), lenet.victim_params,
      default.victim_params))
  assert 0.0 <= lenet.judge_accuracy <= 1.0
