"""Segmentation model architectures (PyTorch) and their weight loaders."""
