"""Privacy attacks: gradient inversion and membership inference."""
