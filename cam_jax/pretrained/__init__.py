"""Pretrained weights: readers of PyTorch and Caffe files, layer maps, conversion."""
