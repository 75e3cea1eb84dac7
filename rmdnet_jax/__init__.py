"""rmdnet_jax: RMDNet (relation modeling and distillation for learning with noisy labels) in JAX/Flax."""
