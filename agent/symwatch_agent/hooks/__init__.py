"""Hooks into the training process: the loss `.backward()` is called on, the process's models and optimizers, its distributed rank."""
