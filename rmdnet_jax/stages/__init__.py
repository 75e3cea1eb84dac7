"""The stages of a run: SimSiam relation modeling (RM), relation-guided distillation (RGRL) and the linear probe. Each builds its train step and hands it to training.loop."""
