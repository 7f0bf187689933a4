#!/usr/bin/env bash
# The full VOC 07+12 runs, in one place: README.md ("The full run on VOC 07+12") and the
# book's chapter 7 ("The full VOC run") show this file below the dashed line, and
# tests/test_readme.py asserts that README's copy equals it and that each command parses
# with the package's CLI. Each run takes days on a GPU: run the lines you need, not the
# whole file. It expects VOCdevkit/ (VOC2007 trainval and test, VOC2012 trainval) here.
# --------------------------------------------------------------------------------------
# ImageNet backbones: tiny YOLOv2's first 13 layers, then yolov2-voc's first 23 (at 448)
wget https://pjreddie.com/media/files/darknet.weights
wget https://pjreddie.com/media/files/darknet19_448.conv.23
# tiny YOLOv2, darknet's recipe (darknet's web page: 57.1 mAP on VOC 2007 test)
python -m yolov2 train --cfg yolov2-tiny-voc --data VOCdevkit --out runs/tiny-darknet \
    --recipe darknet --pretrained darknet.weights --partial 13 --eval 2007:test
# tiny YOLOv2, the port's Adam recipe (57.7 mAP)
python -m yolov2 train --cfg yolov2-tiny-voc --data VOCdevkit --out runs/tiny-adam \
    --recipe adam --pretrained darknet.weights --partial 13 --eval 2007:test
# YOLOv2 (yolov2-voc), darknet's recipe
python -m yolov2 train --cfg yolov2-voc --data VOCdevkit --out runs/voc-darknet \
    --recipe darknet --pretrained darknet19_448.conv.23 --partial 23 --eval 2007:test
# 4 GPUs: the same arguments under torchrun (rank 0 writes)
torchrun --nproc_per_node=4 -m yolov2 train --cfg yolov2-tiny-voc --data VOCdevkit \
    --out runs/tiny-adam-4gpu --recipe adam --pretrained darknet.weights --partial 13 \
    --eval 2007:test
# A run that stops continues with its command plus --resume. For any .weights file
# (darknet's too): darknet's comp4 result files, then the VOC 2007 mAP
python -m yolov2 valid --cfg yolov2-tiny-voc --data VOCdevkit --year 2007 \
    --image-set test --out results/ \
    --weights runs/tiny-adam/yolov2-tiny-voc_final.weights
python -m yolov2 eval --data VOCdevkit --year 2007 --image-set test --results results/ \
    --metric voc07
