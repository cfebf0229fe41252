"""The network: MobileNetV3's architectures as data (architectures.py, also the registry of model names and
their default settings), the cells that build them (mobilenetv3.py, dropout.py), create_model and the model a
checkpoint is for (factory.py), and the rewrites of a built network for the CPU kernels, export and inference
(passes.py, folding.py).

Imports MindSpore, native/ (the CPU kernels) and, in factory.py alone, checkpoints/; the network modules read
no files.
"""
