"""Training on a device without torch: gradient graphs (onnxruntime), numpy optimizers, DP-SGD, RDP accounting.

These modules import numpy and onnxruntime, and nothing of fedtrain but its errors: never torch, Opacus,
scikit-learn, scipy or dp-accounting (``tests/test_edge_train_notorch.py`` trains in a process where they cannot be
imported).
The ClientApp handlers that drive them, with Flower's messages and fedtrain's config and data, are
:mod:`fedtrain.federation.onnx_client`; the server writes the graphs with :mod:`fedtrain.export.gradient_graph`.
"""
