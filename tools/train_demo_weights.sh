#!/usr/bin/env bash
# Train the narrow tiny YOLOv2 (yolov2/darknet/cfgs/yolov2-tiny-synth.cfg) from scratch on the synthetic VOC,
# on the CPU, with darknet's recipe from the cfg's [net]; then copy the result to data/ for the book:
#   data/yolov2-tiny-synth.weights   darknet .weights (header 0.2.0, seen = images trained on)
#   data/yolov2-tiny-synth.log.csv   the training log (yolov2.train.command.read_log)
#   data/yolov2-tiny-synth.eval.json VOC07 AP per class on the synthetic test split, at 416
# Usage: tools/train_demo_weights.sh [RUN_DIR]   (default runs/synth-demo; it is overwritten)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${1:-runs/synth-demo}
mkdir -p "$RUN"
# the data depend only on (seed, split, index): this regenerates the same images anywhere
$PY -m yolov2 synth --out "$RUN/synthetic" --train 2000 --test 500 --seed 0 --force
$PY -m yolov2 train yolov2-tiny-synth "$RUN/synthetic" --out "$RUN" --force --sizes 192-256 --seed 0 \
    --device cpu --workers 1 --eval 2007:test
cp "$RUN/yolov2-tiny-synth_final.weights" data/yolov2-tiny-synth.weights
cp "$RUN/log.csv" data/yolov2-tiny-synth.log.csv
cp "$RUN/eval.json" data/yolov2-tiny-synth.eval.json
