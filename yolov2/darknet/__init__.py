"""The darknet network: `.cfg` parsing, the layers as a PyTorch model, `.weights` files, the region
layer's decoding and box geometry (darknet `src/parser.c`, `src/*_layer.c`, `src/box.c`).

The bottom of the package: it imports nothing from the other parts but `yolov2.files` (atomic
outputs, text decoding). `cfgs/` holds the shipped cfgs.
"""
