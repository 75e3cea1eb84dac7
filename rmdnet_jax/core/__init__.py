"""Device code: the networks, the relation graphs and distillation losses, augmentation on the accelerator, the pmap helpers and the train state. Pure functions of arrays; no files, no host loops."""
