"""Membership-inference attacks and their metrics (algorithms.md, section H).

Threshold attacks on one signal of the target model (loss, confidence,
entropy, modified entropy; `threshold_attack`), the unlearning "MIA
efficacy" classifier (`mia_efficacy`), and LiRA online/offline with shadow
models trained in parallel by `jax.vmap` (`lira`). Every attack yields
per-example scores (larger = member); `attack_metrics` turns member and
non-member scores into ROC AUC, best balanced accuracy and TPR at 1% and
0.1% FPR, and `save_roc_png` draws log-log ROC curves.

Example::

  from jaxleak.attacks import membership as mia

  res = mia.threshold_attack("loss", member_logits, member_labels,
                             nonmember_logits, nonmember_labels)
  print(res.auc, res.tpr_at_1pct_fpr)
"""

from jaxleak.attacks.membership import lira
from jaxleak.attacks.membership.lira import lira_offline
from jaxleak.attacks.membership.lira import lira_online
from jaxleak.attacks.membership.lira import shadow_in_masks
from jaxleak.attacks.membership.lira import shadow_statistics
from jaxleak.attacks.membership.lira import stack_params
from jaxleak.attacks.membership.lira import train_shadow_models
from jaxleak.attacks.membership.metrics import attack_metrics
from jaxleak.attacks.membership.metrics import AttackMetrics
from jaxleak.attacks.membership.metrics import auc
from jaxleak.attacks.membership.metrics import best_balanced_accuracy
from jaxleak.attacks.membership.metrics import roc_curve
from jaxleak.attacks.membership.metrics import save_roc_png
from jaxleak.attacks.membership.metrics import tpr_at_fpr
from jaxleak.attacks.membership.signals import confidence
from jaxleak.attacks.membership.signals import entropy
from jaxleak.attacks.membership.signals import logit_scaled_confidence
from jaxleak.attacks.membership.signals import loss
from jaxleak.attacks.membership.signals import membership_score
from jaxleak.attacks.membership.signals import model_logits
from jaxleak.attacks.membership.signals import modified_entropy
from jaxleak.attacks.membership.signals import SIGNALS
from jaxleak.attacks.membership.signals import true_class_confidence
from jaxleak.attacks.membership.threshold import ATTACKS
from jaxleak.attacks.membership.threshold import efficacy_features
from jaxleak.attacks.membership.threshold import fit_class_thresholds
from jaxleak.attacks.membership.threshold import mia_efficacy
from jaxleak.attacks.membership.threshold import predict_members
from jaxleak.attacks.membership.threshold import threshold_attack

__all__ = (
    "ATTACKS",
    "AttackMetrics",
    "SIGNALS",
    "attack_metrics",
    "auc",
    "best_balanced_accuracy",
    "confidence",
    "efficacy_features",
    "entropy",
    "fit_class_thresholds",
    "lira",
    "lira_offline",
    "lira_online",
    "logit_scaled_confidence",
    "loss",
    "membership_score",
    "mia_efficacy",
    "model_logits",
    "modified_entropy",
    "predict_members",
    "roc_curve",
    "save_roc_png",
    "shadow_in_masks",
    "shadow_statistics",
    "train_shadow_models",
    "stack_params",
    "threshold_attack",
    "tpr_at_fpr",
    "true_class_confidence",
)
