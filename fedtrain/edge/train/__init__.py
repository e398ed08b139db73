"""Training on a device without torch: gradient graphs (onnxruntime), numpy optimizers, DP-SGD, dp-accounting.

The modules import numpy, onnxruntime, dp-accounting and flwr only (``client``): never torch, opacus or
scikit-learn (``tests/test_edge_train_notorch.py`` checks it in a process where they cannot be imported).
"""
