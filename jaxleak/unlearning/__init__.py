"""Machine unlearning: training with history, unlearners and their evaluation.

Every method shares one interface (`Unlearner`)::

  from jaxleak import unlearning as ul

  recipe = ul.sgd_recipe(epochs=20, batch_size=128, learning_rate=0.1, l2=5e-4)
  history = ul.train_with_history(apply_fn, params0, train, recipe,
                                  workdir="runs/u")        # orbax, resumable
  model = ul.Model(apply_fn, history.final_params)
  unlearn = ul.get("mini_unlearning", steps=5, mesh=sharding.data_mesh())
  params = unlearn(model, history, forget_indices, train)

Registered methods (`available()`): "mini_unlearning" (a contraction design
reconstructed from the paper's abstract, *not* the paper's verified rule;
see `jaxleak.unlearning.mini`), "retrain" (gold standard), "finetune",
"neg_grad" and "deltagrad" (Wu et al. 2020).
"""

from jaxleak.unlearning import evaluation
from jaxleak.unlearning import lbfgs
from jaxleak.unlearning._grads import SubsetGradient
from jaxleak.unlearning._sgd import SCHEDULES
from jaxleak.unlearning._sgd import sgd_recipe
from jaxleak.unlearning._sgd import SGDRecipe
from jaxleak.unlearning._sgd import step_learning_rates
from jaxleak.unlearning.base import available
from jaxleak.unlearning.base import check_forget_indices
from jaxleak.unlearning.base import get
from jaxleak.unlearning.base import Model
from jaxleak.unlearning.base import random_forget_set
from jaxleak.unlearning.base import register
from jaxleak.unlearning.base import Unlearner
from jaxleak.unlearning.base import UNLEARNERS
from jaxleak.unlearning.baselines import finetune
from jaxleak.unlearning.baselines import neg_grad
from jaxleak.unlearning.baselines import retrain
from jaxleak.unlearning.deltagrad import deltagrad
from jaxleak.unlearning.evaluation import evaluate_unlearning
from jaxleak.unlearning.evaluation import Shadows
from jaxleak.unlearning.history import history_bytes
from jaxleak.unlearning.history import load_history
from jaxleak.unlearning.history import save_history
from jaxleak.unlearning.history import train_with_history
from jaxleak.unlearning.history import TrainingHistory
from jaxleak.unlearning.mini import contraction_unlearning
from jaxleak.unlearning.mini import ContractionTrace
from jaxleak.unlearning.mini import mini_unlearning

__all__ = (
    "ContractionTrace",
    "Model",
    "Shadows",
    "SCHEDULES",
    "SGDRecipe",
    "TrainingHistory",
    "UNLEARNERS",
    "SubsetGradient",
    "step_learning_rates",
    "Unlearner",
    "available",
    "check_forget_indices",
    "random_forget_set",
    "contraction_unlearning",
    "deltagrad",
    "evaluate_unlearning",
    "evaluation",
    "finetune",
    "get",
    "history_bytes",
    "lbfgs",
    "load_history",
    "mini_unlearning",
    "neg_grad",
    "register",
    "retrain",
    "save_history",
    "sgd_recipe",
    "train_with_history",
)
