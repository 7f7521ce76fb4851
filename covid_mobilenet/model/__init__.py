"""The model: the study's architecture, the backbone's weights (ImageNet, or the demo's pretrained stand-in),
training with its backup, the precision and devices a run uses, inference, the cached backbone features of
fast mode, and Grad-CAM.

May import ``data`` and ``common``. ``weights`` and ``demo_backbone`` are free of TensorFlow, so that the
sweep can check and prepare weights without loading it.
"""
