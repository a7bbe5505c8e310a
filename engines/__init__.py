"""Exportable model modules, ONNX export, engine builds and inference backends.

Nothing here imports ``training``, ``pipeline`` or ``plugins``.
"""
