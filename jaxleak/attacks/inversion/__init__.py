"""Gradient inversion: threat model, label recovery, attacks, defences, metrics.

Following breaching, a *case* says what the attacker sees and an *attack*
says how it inverts; both are registries, and each attack module registers
its attacks by name when it is imported. DLG, iDLG, Inverting Gradients and
GradInversion are named `AttackConfig` option sets of one attacker,
`gradient_matching`::

  from jaxleak import models
  from jaxleak.attacks import inversion

  apply_fn, params = models.create("lenet", 10, (28, 28, 1), key)
  obs = inversion.observe(apply_fn, params, images, labels, key=key,
                          defence=inversion.GaussianNoise(std=1e-3))
  result = inversion.run_attack("inverting_gradients", obs, key=key,
                                ground_truth=(images, labels), steps=2000)
  result.metrics["psnr"], result.labels

A variant of the four is a new `AttackConfig` (``NAMED_ATTACKS["idlg"]
.replace(optimizer="adam")``) run by `gradient_matching`, or registered
under a name with `named_attack` and `register_attack`. Pieces for other
attacks: `victim_gradient` (the operator A(x)), `l2_distance`,
`cosine_distance`, `total_variation`, `bn_matching`, `recover_labels`,
`MatchingProblem`, `gradient_matching_attack` and `optimize.minimize`.

Diffusion-prior attacks (`diffusion_dps`, `diffusion_dsg`; module
`diffusion_guided`) guide a pretrained `jaxleak.diffusion` prior's sampler
with the gradient distance; `theory.reconstruction_vulnerability` is the RV
measure ``max_x ||d/dx d/dθ L||_F``.
"""

from jaxleak.attacks.inversion import diffusion_finetuning
from jaxleak.attacks.inversion import diffusion_guided
from jaxleak.attacks.inversion import optimize
from jaxleak.attacks.inversion import theory
from jaxleak.attacks.inversion import user_level
from jaxleak.attacks.inversion._compile import compiler_options
from jaxleak.attacks.inversion._compile import FAST_COMPILE
from jaxleak.attacks.inversion.attacks import AttackConfig
from jaxleak.attacks.inversion.attacks import dlg
from jaxleak.attacks.inversion.attacks import grad_inversion
from jaxleak.attacks.inversion.attacks import gradient_matching
from jaxleak.attacks.inversion.attacks import gradient_matching_attack
from jaxleak.attacks.inversion.attacks import HYPERPARAMS
from jaxleak.attacks.inversion.attacks import idlg
from jaxleak.attacks.inversion.attacks import INITS
from jaxleak.attacks.inversion.attacks import inverting_gradients
from jaxleak.attacks.inversion.attacks import make_problem
from jaxleak.attacks.inversion.attacks import MatchingProblem
from jaxleak.attacks.inversion.attacks import named_attack
from jaxleak.attacks.inversion.attacks import NAMED_ATTACKS
from jaxleak.attacks.inversion.attacks import step_decay_boundaries
from jaxleak.attacks.inversion.cases import available_cases
from jaxleak.attacks.inversion.cases import Case
from jaxleak.attacks.inversion.cases import CASES
from jaxleak.attacks.inversion.cases import PrivateBatch
from jaxleak.attacks.inversion.cases import register_case
from jaxleak.attacks.inversion.cases import simulate
from jaxleak.attacks.inversion.defences import available_defences
from jaxleak.attacks.inversion.defences import Compose
from jaxleak.attacks.inversion.defences import Defence
from jaxleak.attacks.inversion.defences import DEFENCES
from jaxleak.attacks.inversion.defences import DPClip
from jaxleak.attacks.inversion.defences import GaussianNoise
from jaxleak.attacks.inversion.defences import LaplacianNoise
from jaxleak.attacks.inversion.defences import make_defence
from jaxleak.attacks.inversion.defences import NoDefence
from jaxleak.attacks.inversion.defences import Quantize
from jaxleak.attacks.inversion.defences import register_defence
from jaxleak.attacks.inversion.defences import TopK
from jaxleak.attacks.inversion.diffusion_finetuning import diffusion_finetune
from jaxleak.attacks.inversion.diffusion_finetuning import FinetuneInversionResult
from jaxleak.attacks.inversion.diffusion_guided import diffusion_dps
from jaxleak.attacks.inversion.diffusion_guided import diffusion_dsg
from jaxleak.attacks.inversion.diffusion_guided import DiffusionInversionResult
from jaxleak.attacks.inversion.labels import LABEL_STRATEGIES
from jaxleak.attacks.inversion.labels import LabelRecovery
from jaxleak.attacks.inversion.labels import last_layer_gradient
from jaxleak.attacks.inversion.labels import recover_labels
from jaxleak.attacks.inversion.objectives import bn_matching
from jaxleak.attacks.inversion.objectives import cosine_distance
from jaxleak.attacks.inversion.objectives import DISTANCES
from jaxleak.attacks.inversion.objectives import l2_distance
from jaxleak.attacks.inversion.objectives import l2_prior
from jaxleak.attacks.inversion.objectives import local_update_gradient
from jaxleak.attacks.inversion.objectives import total_variation
from jaxleak.attacks.inversion.objectives import trainable
from jaxleak.attacks.inversion.objectives import tree_rms
from jaxleak.attacks.inversion.objectives import victim_gradient
from jaxleak.attacks.inversion.objectives import victim_gradient_and_bn_stats
from jaxleak.attacks.inversion.objectives import victim_loss
from jaxleak.attacks.inversion.objectives import with_trainable
from jaxleak.attacks.inversion.registry import ATTACKS
from jaxleak.attacks.inversion.registry import available_attacks
from jaxleak.attacks.inversion.registry import get_attack
from jaxleak.attacks.inversion.registry import register_attack
from jaxleak.attacks.inversion.registry import run_attack
from jaxleak.attacks.inversion.results import evaluate
from jaxleak.attacks.inversion.results import GroundTruth
from jaxleak.attacks.inversion.results import InversionResult
from jaxleak.attacks.inversion.results import METRIC_NAMES
from jaxleak.attacks.inversion.theory import reconstruction_vulnerability
from jaxleak.attacks.inversion.threat_model import GradientObservation
from jaxleak.attacks.inversion.threat_model import observe
from jaxleak.attacks.inversion.user_level import user_level_diffusion
from jaxleak.attacks.inversion.user_level import UserLevelResult

__all__ = (
    "ATTACKS",
    "AttackConfig",
    "CASES",
    "Case",
    "Compose",
    "DEFENCES",
    "DISTANCES",
    "DPClip",
    "DiffusionInversionResult",
    "FAST_COMPILE",
    "Defence",
    "GaussianNoise",
    "GradientObservation",
    "GroundTruth",
    "HYPERPARAMS",
    "INITS",
    "InversionResult",
    "LABEL_STRATEGIES",
    "LabelRecovery",
    "LaplacianNoise",
    "METRIC_NAMES",
    "MatchingProblem",
    "NAMED_ATTACKS",
    "NoDefence",
    "PrivateBatch",
    "Quantize",
    "TopK",
    "UserLevelResult",
    "available_attacks",
    "available_cases",
    "available_defences",
    "bn_matching",
    "compiler_options",
    "cosine_distance",
    "diffusion_dps",
    "diffusion_dsg",
    "diffusion_finetune",
    "diffusion_finetuning",
    "FinetuneInversionResult",
    "diffusion_guided",
    "dlg",
    "evaluate",
    "get_attack",
    "grad_inversion",
    "gradient_matching",
    "gradient_matching_attack",
    "idlg",
    "inverting_gradients",
    "l2_distance",
    "l2_prior",
    "last_layer_gradient",
    "local_update_gradient",
    "make_defence",
    "make_problem",
    "named_attack",
    "observe",
    "optimize",
    "recover_labels",
    "register_attack",
    "register_case",
    "reconstruction_vulnerability",
    "register_defence",
    "run_attack",
    "simulate",
    "step_decay_boundaries",
    "theory",
    "total_variation",
    "trainable",
    "tree_rms",
    "user_level",
    "user_level_diffusion",
    "victim_gradient",
    "victim_gradient_and_bn_stats",
    "victim_loss",
    "with_trainable",
)
