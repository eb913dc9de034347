"""jaxleak.diffusion: the pixel-space diffusion prior shared by the attacks.

Typical use:

  from jaxleak import diffusion

  prior = diffusion.load_prior("mnist")              # shipped, 32x32, 10 classes
  images = diffusion.generate(prior, jax.random.key(0), 16,
                              labels=jnp.arange(16) % 10, num_steps=50)

  # Building blocks for guided attacks (pure, jit/grad/scan-friendly):
  eps = prior.apply_fn(prior.params, x_t, t, labels)  # NHWC, diffusion space
  x0 = diffusion.x0_hat(prior.schedule, x_t, t, eps)   # Tweedie estimate
  out = diffusion.ddim_step(prior.schedule, x_t, t, t_prev, eps)  # eta = 0

Images in diffusion space lie in [-1, 1]; `to_model_space` and
`to_image_space` convert from and to jaxleak's [0, 1] images.
"""

from jaxleak.diffusion.evaluation import class_agreement
from jaxleak.diffusion.evaluation import nearest_neighbour_ssim
from jaxleak.diffusion.prior import assets_dir
from jaxleak.diffusion.prior import available_priors
from jaxleak.diffusion.prior import FORMATS
from jaxleak.diffusion.prior import generate
from jaxleak.diffusion.prior import load_prior
from jaxleak.diffusion.prior import Prior
from jaxleak.diffusion.prior import PriorError
from jaxleak.diffusion.prior import PRIORS
from jaxleak.diffusion.prior import random_prior
from jaxleak.diffusion.prior import save_prior
from jaxleak.diffusion.sampling import ddim_sample
from jaxleak.diffusion.sampling import ddim_step_fn
from jaxleak.diffusion.sampling import ddpm_sample
from jaxleak.diffusion.sampling import ddpm_step_fn
from jaxleak.diffusion.sampling import EpsFn
from jaxleak.diffusion.sampling import make_eps_fn
from jaxleak.diffusion.sampling import sample_loop
from jaxleak.diffusion.sampling import StepFn
from jaxleak.diffusion.schedule import add_noise
from jaxleak.diffusion.schedule import alpha_bar
from jaxleak.diffusion.schedule import cosine_schedule
from jaxleak.diffusion.schedule import ddim_step
from jaxleak.diffusion.schedule import ddim_timesteps
from jaxleak.diffusion.schedule import ddpm_posterior
from jaxleak.diffusion.schedule import ddpm_step
from jaxleak.diffusion.schedule import eps_from_x0
from jaxleak.diffusion.schedule import linear_schedule
from jaxleak.diffusion.schedule import make_schedule
from jaxleak.diffusion.schedule import NoiseSchedule
from jaxleak.diffusion.schedule import StepOutput
from jaxleak.diffusion.schedule import x0_hat
from jaxleak.diffusion.training import data_mesh
from jaxleak.diffusion.training import diffusion_loss
from jaxleak.diffusion.training import ema_update
from jaxleak.diffusion.training import init_train_state
from jaxleak.diffusion.training import make_optimizer
from jaxleak.diffusion.training import make_train_step
from jaxleak.diffusion.training import train_prior
from jaxleak.diffusion.training import TrainResult
from jaxleak.diffusion.training import TrainState
from jaxleak.diffusion.unet import FixedFlaxDDPMScheduler
from jaxleak.diffusion.unet import init_unet
from jaxleak.diffusion.unet import load_unet_diffusers
from jaxleak.diffusion.unet import make_unet_apply
from jaxleak.diffusion.unet import param_count
from jaxleak.diffusion.unet import save_unet_diffusers
from jaxleak.diffusion.unet import to_image_space
from jaxleak.diffusion.unet import to_model_space
from jaxleak.diffusion.unet import UNetApply
from jaxleak.diffusion.unet import UNetSpec

__all__ = (
    # UNet
    "UNetSpec",
    "UNetApply",
    "init_unet",
    "make_unet_apply",
    "param_count",
    "to_model_space",
    "to_image_space",
    "save_unet_diffusers",
    "load_unet_diffusers",
    "FixedFlaxDDPMScheduler",
    # schedules and steps
    "NoiseSchedule",
    "StepOutput",
    "linear_schedule",
    "cosine_schedule",
    "make_schedule",
    "alpha_bar",
    "add_noise",
    "x0_hat",
    "eps_from_x0",
    "ddpm_posterior",
    "ddpm_step",
    "ddim_step",
    "ddim_timesteps",
    # sampling
    "EpsFn",
    "StepFn",
    "make_eps_fn",
    "ddim_step_fn",
    "ddpm_step_fn",
    "sample_loop",
    "ddim_sample",
    "ddpm_sample",
    # training
    "TrainState",
    "TrainResult",
    "diffusion_loss",
    "make_optimizer",
    "init_train_state",
    "ema_update",
    "make_train_step",
    "data_mesh",
    "train_prior",
    # priors
    "Prior",
    "PriorError",
    "FORMATS",
    "assets_dir",
    "PRIORS",
    "available_priors",
    "load_prior",
    "random_prior",
    "save_prior",
    "generate",
    # evaluation
    "class_agreement",
    "nearest_neighbour_ssim",
)
