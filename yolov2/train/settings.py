"""What a training run trains: the recipes, the run's `Settings`, and how the unset ones are resolved.

Reference: darknet examples/detector.c (`train_detector`: the cfg's `[net]` batch, subdivisions,
learning_rate and max_batches; `learning_rate *= ngpus` for `-gpus`), src/parser.c
(`parse_net_options`: `batch /= subdivisions` is undone here, batch is the full batch).

Recipes (:data:`RECIPES`):
* `darknet`: the cfg's `[net]`, :func:`yolov2.train.schedule.darknet_sgd`, darknet's loader. On K ranks each
  runs the full cfg batch and the rate is multiplied by K, as darknet's `-gpus` does
  (`learning_rate *= ngpus`; `sync_nets` counts every GPU's images in seen, so batch_num advances by K).
* `adam`: the PyTorch port's: Adam 1e-4, no decay, batch 32 split over the ranks, 280 epochs, rate
  x0.1 at epochs 200 and 250 (at 200/280 and 250/280 of `max_batches`), the crop-jitter loader.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

from yolov2.darknet.cfg import Section, cfg_file
from yolov2.data.darknet_data import default_names
from yolov2.files import decode_cfg
from yolov2.train.schedule import Schedule

RECIPES = {
    "darknet": {"loader": "detection", "optimizer": "sgd", "split_batch": False},
    "adam": {"loader": "region", "optimizer": "adam", "split_batch": True, "batch": 32, "subdivisions": 1,
             "learning_rate": 1e-4, "epochs": 280, "step_epochs": (200, 250), "scales": (0.1, 0.1)},
}


class TrainError(RuntimeError):
    """A training run that cannot start or continue; the message says why and what to do."""


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the message says where the run stopped and how to continue it."""


@dataclass
class Settings:
    """What a run trains: the checkpoint stores these, and `--resume` reuses them.

    None means "resolve from the cfg / recipe" (:func:`resolve`). sizes: square training sizes
    (multi-scale when several); sets: VOC `(year, image_set)` pairs; every: iterations per size;
    final_batches: darknet trains its last 200 batches at the largest size (0: no such phase);
    unsigned_steps: the final darknet's `int step > size_t batch_num` comparison, under which a
    negative step never passes (:class:`yolov2.train.schedule.Schedule`; off: the cfg's meaning).
    steps: the batch numbers of the cfg's `policy=steps` in place of its `steps=` (one per scale of
    its `scales=`), so a longer `max_batches` can move its rate drops with it (None: the cfg's).
    """

    cfg: str
    data: str
    recipe: str = "darknet"
    loader: str | None = None
    sets: list | None = None
    names: str | None = None
    max_batches: int | None = None
    batch: int | None = None
    subdivisions: int | None = None
    sizes: list | None = None
    learning_rate: float | None = None
    seed: int = 0
    every: int = 10
    weights: str | None = None
    pretrained: str | None = None
    partial: int | None = None
    clear: bool = False
    checkpoint_every: int = 100
    final_batches: int = 200
    unsigned_steps: bool = False
    steps: list | None = None


ADDED = {"steps": None}  # Settings fields newer than some checkpoints of this VERSION: their value there


@dataclass
class TrainResult:
    """Where a finished run left its files, and what it did."""

    out_dir: Path
    weights: Path  # darknet .weights of the final model
    checkpoint: Path
    log: Path
    plot: Path | None
    seen: int
    batches: int  # darknet batch_num at the end
    elapsed: float  # seconds of this process's training (a resumed run counts its part only)
    images_per_s: float
    map: float | None = None  # VOC07 mAP on the --eval image set, when one was given
    stopped: bool = False  # ended by Trainer.stop_requested before max_batches (weights: the _last ones)


def training_batch(net: Section) -> tuple[int, int]:
    """(batch, subdivisions) for training: `[net]`'s, or, in a testing cfg (batch=1), the values its
    `# Training` comments give (darknet's stock cfgs: `# batch=64`, `# subdivisions=2`), else 64, 1."""
    batch, subdivisions = net.get_int("batch", 1), net.get_int("subdivisions", 1)
    if batch > 1:
        return batch, subdivisions
    found = {"batch": 64, "subdivisions": 1}
    try:
        lines = decode_cfg(Path(net.path).read_bytes()).splitlines()[net.line:]
    except OSError:
        return found["batch"], found["subdivisions"]
    for line in lines:
        if line.strip().startswith("["):
            break
        m = re.match(r"\s*#\s*(batch|subdivisions)\s*=\s*(\d+)\s*$", line)
        if m:
            found[m.group(1)] = int(m.group(2))
    return found["batch"], found["subdivisions"]


def parse_sizes(text: str) -> list[int]:
    """`416`, `256,288,320` or a range `320-608` (step 32) -> sizes, each a multiple of 32."""
    try:
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            sizes = list(range(lo, hi + 1, 32))
        else:
            sizes = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise TrainError(f"--sizes '{text}': expected N, N,M,... or MIN-MAX") from None
    if not sizes or any(s <= 0 or s % 32 for s in sizes):
        raise TrainError(f"--sizes '{text}': sizes must be positive multiples of 32")
    return sizes


def parse_steps(text: str) -> list[int]:
    """`1333,1733` -> [1333, 1733]: the batch numbers of a `policy=steps` schedule (darknet's `steps=`)."""
    try:
        steps = [int(v) for v in text.split(",")]
    except ValueError:
        raise TrainError(f"--steps '{text}': expected batch numbers N[,N...], e.g. 1333,1733") from None
    return steps


def check_steps(s: Settings, net) -> None:
    """`--steps` replaces the cfg's `steps=` of darknet's `policy=steps`, one step per scale."""
    if s.steps is None:
        return
    if s.recipe != "darknet":
        raise TrainError(f"--steps is for the darknet recipe's policy=steps; the {s.recipe} recipe sets its "
                         f"own steps (at {'/'.join(map(str, RECIPES['adam']['step_epochs']))} of "
                         f"{RECIPES['adam']['epochs']} epochs)")
    where, policy = net.where("policy"), net.get_str("policy", "constant")
    if policy != "steps":
        raise TrainError(f"{where}: --steps needs policy=steps, this cfg has policy={policy}")
    n = len(Schedule.from_net(net).scales)
    if len(s.steps) != n:
        given = f"{len(s.steps)} step" + ("s" if len(s.steps) != 1 else "")
        raise TrainError(f"--steps {','.join(map(str, s.steps))}: {given}, but {net.where('scales')} has "
                         f"{n} scales (scales={net.get_str('scales')}); give {n} steps, one per scale")


def parse_sets(text: str) -> list[list[str]]:
    """`2007:trainval,2012:trainval` -> [[year, image_set], ...]."""
    out = [p.split(":") for p in text.split(",") if p]
    if not out or any(len(p) != 2 or not all(p) for p in out):
        raise TrainError(f"--sets '{text}': expected YEAR:SET[,YEAR:SET...], e.g. 2007:trainval")
    return out


def resolve(s: Settings, net, n_images: int, world: int) -> Settings:
    """Fill every None of `s` from the recipe, the cfg's [net]/[region] and the dataset size."""
    if s.recipe not in RECIPES:
        raise TrainError(f"unknown recipe '{s.recipe}' (choose from {', '.join(RECIPES)})")
    r = RECIPES[s.recipe]
    check_steps(s, net.net_options)
    batch, subdivisions = training_batch(net.net_options)
    batch = s.batch or r.get("batch", batch)
    subdivisions = s.subdivisions or (r.get("subdivisions", subdivisions) if not s.batch else 1)
    per_rank = batch // world if r["split_batch"] else batch
    if batch < 1 or per_rank * (world if r["split_batch"] else 1) != batch or per_rank % subdivisions:
        raise TrainError(f"batch {batch} does not split into {world} rank(s) x {subdivisions} subdivisions")
    if r["optimizer"] == "adam":
        default_max = r["epochs"] * max(1, n_images // (per_rank * world))  # 280 epochs
    else:
        default_max = net.net_options.get_int("max_batches", 0)
    max_batches = s.max_batches or default_max
    if max_batches < 1:
        raise TrainError(f"{s.cfg}: max_batches is 0; give it in [net] or with --max-batches")
    sizes = s.sizes or (list(range(320, 609, 32)) if net.region.random else [net.width])
    return dataclasses.replace(
        s, loader=s.loader or r["loader"], batch=batch, subdivisions=subdivisions, max_batches=max_batches,
        sizes=[int(v) for v in sizes],
        learning_rate=s.learning_rate or r.get("learning_rate") or net.net_options.get_float("learning_rate",
                                                                                             0.001))


def make_schedule(s: Settings, net) -> Schedule:
    """The learning-rate schedule: the cfg's policy (darknet), or Adam's two steps."""
    if s.recipe == "adam":
        r = RECIPES["adam"]
        steps = tuple(round(s.max_batches * e / r["epochs"]) for e in r["step_epochs"])
        return Schedule(s.learning_rate, "steps", steps=steps, scales=r["scales"], max_batches=s.max_batches)
    steps = {} if s.steps is None else {"steps": tuple(s.steps)}
    return Schedule.from_net(net.net_options, max_batches=s.max_batches, learning_rate=s.learning_rate,
                             unsigned_steps=s.unsigned_steps, **steps)


def cfg_path(cfg: str | Path) -> Path:
    """A cfg path, or the shipped cfg of that name (`yolov2-tiny-synth`), as `Darknet(cfg)` accepts."""
    return cfg_file(cfg)


def class_names(root: Path, names: str | None = None) -> list[str]:
    """The class list: `names`, else the dataset's own (`root/classes.names`, or `names=` of a darknet
    .data file), else the 20 VOC classes (`yolov2.data.darknet_data.default_names`)."""
    return default_names(root, names)


# --------------------------------------------------------------------------- resuming a run

RESUMABLE = ("max_batches", "checkpoint_every")  # what --resume may change: how long, how often it saves
_FLAGS = {"learning_rate": "--lr"}
_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list, "None": type(None)}


def flag(field: str) -> str:
    """The `train` option of a Settings field (`max_batches` -> `--max-batches`)."""
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def _same(a, b) -> bool:
    if a == b:
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return isinstance(a, str) and isinstance(b, str) and Path(a).resolve() == Path(b).resolve()


def resume_settings(run: Settings, given: Settings, where: str | Path) -> Settings:
    """The settings a resumed run continues with: the run's own, the cfg and data paths of `given`
    (they may have moved), and its `max_batches` and `checkpoint_every` (:data:`RESUMABLE`).

    A field of `given` that is None was not given; one equal to the run's is fine; one that differs and
    may not change is a TrainError naming its option (a resumed run is bit-identical to an uninterrupted
    one only with the settings it started with).
    """
    changes = {"cfg": given.cfg, "data": given.data}
    for f in dataclasses.fields(Settings):
        new, old = getattr(given, f.name), getattr(run, f.name)
        if f.name in changes or new is None or _same(new, old):
            continue
        if f.name not in RESUMABLE:
            may = " and ".join(map(flag, RESUMABLE))
            raise TrainError(f"{where}: {flag(f.name)} {new} differs from the run's {old}; a resumed run "
                             f"keeps the settings it started with (only {may} may change). Drop "
                             f"{flag(f.name)}, or start a new run in another --out")
        changes[f.name] = new
    return dataclasses.replace(run, **changes)


def check_batches_left(where: str | Path, batch_num: int, max_batches: int, resumed: bool) -> None:
    """A run must have batches to train: a resumed one, or one started from --weights whose `seen`
    (darknet keeps it in the header) is already past max_batches (darknet would stop at once)."""
    if batch_num < max_batches:
        return
    if resumed:
        raise TrainError(f"{where}: the run is at batch {batch_num} and max_batches is {max_batches}: "
                         f"nothing left to train; pass --max-batches N with N > {batch_num} to train it "
                         f"further")
    raise TrainError(f"{where}: its header has seen images up to batch {batch_num}, past max_batches "
                     f"{max_batches}: nothing to train; pass --clear to count from 0, or a larger "
                     f"--max-batches")


def settings_problem(d: dict) -> str | None:
    """What is wrong with a checkpoint's settings dict (keys, types, ranges), or None when it is sound."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    d = ADDED | d  # a checkpoint written before a field was added holds that field's old meaning
    unknown, missing = sorted(set(d) - set(fields)), [n for n in fields if n not in d]
    if unknown or missing:
        return f"unknown keys {unknown}" if unknown else f"missing keys {missing}"
    for name, f in fields.items():
        v = d[name]
        kinds = tuple(_TYPES[t.strip()] for t in str(f.type).split("|"))
        if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
            return f"'{name}' is {v!r}"
        if isinstance(v, float) and not math.isfinite(v):
            return f"'{name}' is {v!r}"
    counts = {"batch": 1, "subdivisions": 1, "max_batches": 1, "every": 1, "checkpoint_every": 1,
              "final_batches": 0, "partial": 0}
    low = [n for n, m in counts.items() if d[n] is not None and d[n] < m]
    if low:
        return f"'{low[0]}' is {d[low[0]]}, below {counts[low[0]]}"
    if d["recipe"] not in RECIPES:
        return f"unknown recipe {d['recipe']!r}"
    if d["sizes"] is not None and not (d["sizes"] and all(isinstance(v, int) and not isinstance(v, bool)
                                                           and v > 0 and v % 32 == 0 for v in d["sizes"])):
        return f"'sizes' is {d['sizes']!r}, not positive multiples of 32"
    if d["sets"] is not None and not all(isinstance(p, list) and len(p) == 2
                                         and all(isinstance(x, str) and x for x in p) for p in d["sets"]):
        return f"'sets' is {d['sets']!r}, not [year, image set] pairs"
    if d["steps"] is not None and not (d["steps"] and all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in d["steps"])):
        return f"'steps' is {d['steps']!r}, not batch numbers"
    if d["learning_rate"] is not None and d["learning_rate"] <= 0:
        return f"'learning_rate' is {d['learning_rate']}"
    return None
