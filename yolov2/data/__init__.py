"""Data: VOC devkits and darknet's label files, the synthetic VOC, darknet's image operations and its two
training loaders' augmentation, the training dataset, and anchors by IoU k-means.

The bottom of the package with `yolov2.darknet`: it imports nothing from the other parts but
`yolov2.files` (atomic outputs, text decoding).
"""
