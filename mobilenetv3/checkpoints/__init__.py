"""Model files and what they say about themselves: checkpoint files written atomically, loaded into a network
with every name and shape checked, listed (files.py); the meta every model file carries, checkpoint, ONNX or
MINDIR (meta.py); averaging several checkpoints (averaging.py).

Imports MindSpore (and ONNX Runtime to read an ONNX file's meta); no model, no data.
"""
