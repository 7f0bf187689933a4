#!/usr/bin/env bash
# Train the narrow tiny YOLOv2 (yolov2/darknet/cfgs/yolov2-tiny-synth.cfg) from scratch on the synthetic VOC,
# on the CPU, with darknet's recipe from the cfg's [net]; then copy the result to data/ for the book:
#   data/yolov2-tiny-synth.weights   darknet .weights (header 0.2.0, seen = images trained on)
#   data/yolov2-tiny-synth.log.csv   the training log (yolov2.train.command.read_log)
#   data/yolov2-tiny-synth.eval.json VOC07 AP per class on the synthetic test split, at 416
# Usage: tools/train_demo_weights.sh [RUN_DIR]   (default runs/synth-demo; it is overwritten)
#        tools/train_demo_weights.sh --amp [RUN_DIR [TRAIN OPTIONS...]]
#   --amp: the AMP demo: bf16 (needs AVX512-BF16 or AMX; default RUN_DIR runs/synth-demo-amp), the cfg's
#   recipe stretched by 4/3 (--max-batches 2000 --steps 1333,1733: the 1500-update recipe gave 0.788 in
#   bf16, this one 0.832), and further `python -m yolov2 train` options after RUN_DIR (the last of an
#   option given twice wins); it leaves data/ alone: the committed weights are the float32 recipe's,
#   and the book's asserts rest on them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
AMP=()
if [[ ${1:-} == --amp ]]; then
    AMP=(--amp --max-batches 2000 --steps 1333,1733)
    shift
fi
RUN=${1:-runs/synth-demo${AMP:+-amp}}
shift $(( $# > 0 ? 1 : 0 ))
if [[ $# -gt 0 && ${#AMP[@]} -eq 0 ]]; then
    echo "train_demo_weights.sh: options after RUN_DIR ($*) go with --amp only: the float32 run is the" \
         "committed recipe" >&2
    exit 2
fi
mkdir -p "$RUN"
# the data depend only on (seed, split, index): this regenerates the same images anywhere
$PY -m yolov2 synth --out "$RUN/synthetic" --train 2000 --test 500 --seed 0 --force
$PY -m yolov2 train yolov2-tiny-synth "$RUN/synthetic" --out "$RUN" --force --sizes 192-256 --seed 0 \
    --device cpu --workers 1 --eval 2007:test "${AMP[@]}" "$@"
if [[ ${#AMP[@]} -gt 0 ]]; then
    echo "bf16 run in $RUN (eval.json, log.csv); data/ is unchanged"
    exit 0
fi
cp "$RUN/yolov2-tiny-synth_final.weights" data/yolov2-tiny-synth.weights
cp "$RUN/log.csv" data/yolov2-tiny-synth.log.csv
cp "$RUN/eval.json" data/yolov2-tiny-synth.eval.json
