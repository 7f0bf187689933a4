"""Detection: darknet's post-processing (`postprocess`: boxes, NMS, comp4 lines), the `Detector` and the
`detect` / `valid` commands (`detector`), class colours and labelled boxes (`draw`), and Pascal VOC
AP (`evaluate`, the `eval` command).

Builds on `yolov2.darknet` and `yolov2.data`.
"""
