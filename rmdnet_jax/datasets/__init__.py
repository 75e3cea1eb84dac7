"""Data in: CIFAR from tfds or .npz (ids, splits, host slices), label noise and CIFAR-N, preparing a dataset once, and data resident on the devices."""
