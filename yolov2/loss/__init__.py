"""Darknet's region-layer loss: `assign` (the rules of `forward_region_layer`: which slot is positive,
ignored or negative and every target) and `region_loss` (`RegionLoss`, whose gradient is darknet's delta).

Builds on `yolov2.darknet` only.
"""
