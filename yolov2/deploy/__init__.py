"""Deployment: the fused inference module (`infer`: batch norm folded, bf16), ONNX export (`export`) and
the inference benchmark against OpenCV's DNN (`bench`).

Builds on every part below it; nothing but the CLI imports it.
"""
