"""Faces study: user-level inversion on lfw_faces with the faces prior.

lfw_faces holds 100 face and 100 non-face 25x25 crops (label 1 = face). At
B = 30, `data.partition_users` ("label" users, classes round-robin) cuts
3 face users and 3 non-face users out of all 200 crops; the 10 faces and
10 non-faces left over (with their mirror images) train the victim
(cnn_mnist) and the judge (an MLP), so both are disjoint from every user.
The prior is the shipped `lfw_faces` prior (faces only, trained on the 80
train-split faces; with this seed all 80 are among the 90 face-user images,
so the prior has seen most users' faces: recorded as
`face_user_images_in_prior_training_set`). Labels are hidden: the attack recovers
the majority label from the gradient.

  nice -n 19 python experiments/user_level/faces.py \\
      --config experiments/user_level/configs/faces.py \\
      --workdir experiments/user_level/results/faces
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "lfw_faces"
  c.victim = "cnn_mnist"
  c.seed = 0
  c.batch_size = 30
  # 3 face + 3 non-face users use 180 of the 200 crops.
  c.users = 6
  c.prior = "lfw_faces"
  c.train_epochs = 60
  # user_level_diffusion with the MNIST study's settings (configs/default.py).
  c.attack = ml_collections.ConfigDict({
      "steps": 20, "iterations": 60, "window": 4, "lr": 0.05, "tv": 0.0,
      "distance": "cosine", "num_representatives": 1,
      "class_conditional": False})
  c.methods = ("user_level_diffusion", "prior_only")
  return c
