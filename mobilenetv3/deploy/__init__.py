"""Using a trained model: predictions for a folder of images (inference.py) on MindSpore or ONNX Runtime
(onnx_backend.py), export to MINDIR and ONNX (export.py, onnx_graph.py), int8 ONNX (quantize.py), published
weights converted into checkpoints (convert.py, presets.py), and checks on output files (outputs.py).

Sits on models/, data/, checkpoints/, cluster/ (device and threads) and evaluation.py.
"""
