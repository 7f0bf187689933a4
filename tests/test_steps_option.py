"""`train --steps`: the rate drops of a cfg's `policy=steps` moved without editing the cfg.

Oracle: the same cfg with its `steps=` line edited by hand. A run given `--steps` must be that run,
update for update; a wrong `--steps` is one clear line naming what is wrong; a resumed run keeps the
steps it started with; a checkpoint written before the option existed still resumes, exactly.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import cli

from yolov2.__main__ import main as yolov2_main
from yolov2.darknet.cfg import stock_cfg
from yolov2.data.synth import make_synthetic_voc
from yolov2.train.checkpoint import read_log
from yolov2.train.command import build_parser, train
from yolov2.train.settings import Settings, TrainError, settings_problem

SYNTH = stock_cfg("yolov2-tiny-synth")  # [net]: lr .02, burn_in 100, policy=steps, steps=1000,1300
TRAIN = ["--batch", "4", "--sizes", "64", "--workers", "0", "--device", "cpu", "--no-progress",
         "--final-batches", "0"]


def edited_cfg(tmp_path: Path, **keys: str) -> Path:
    """The demo cfg with some `[net]` keys rewritten (`steps`, `burn_in`, `policy`)."""
    lines = []
    for line in SYNTH.read_text().splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key}={keys[key]}" if key in keys and "=" in line else line)
    path = tmp_path / "edited.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_synthetic_voc(tmp_path_factory.mktemp("steps") / "voc", 8, 0, seed=5)


def test_steps_replace_the_cfgs_as_an_edited_cfg_would(voc, tmp_path):
    # burn_in 0, so the drops at batches 2 and 3 of a 4-batch run show in the rates
    base = edited_cfg(tmp_path, burn_in="0")
    (tmp_path / "e").mkdir()
    edited = edited_cfg(tmp_path / "e", burn_in="0", steps="2,3")
    kw = dict(batch=4, sizes=[64], workers=0, device="cpu", progress=False, max_batches=4, final_batches=0)
    given = train(base, voc, tmp_path / "given", steps=[2, 3], **kw)
    by_hand = train(edited, voc, tmp_path / "by_hand", **kw)
    for run in (given, by_hand):  # the log keeps 6 digits of darknet's float32 rate
        assert read_log(run.log)["lr"].tolist() == [0.02, 0.002, 0.0002, 0.0002]
    assert given.weights.read_bytes() == by_hand.weights.read_bytes()  # update for update the same run
    assert json.loads((tmp_path / "given" / "run.json").read_text())["steps"] == [2, 3]


def test_the_banner_shows_the_steps_in_force(voc, tmp_path, capsys):
    capsys.readouterr()
    assert yolov2_main(["train", str(SYNTH), str(voc), "--out", str(tmp_path / "run"), "--max-batches",
                        "1", "--steps", "1333,1733", *TRAIN]) == 0
    assert "rate 0.02, policy steps (x0.1 at 1333, x0.1 at 1733), burn_in 100" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "cfg_keys", "message"), [
    (["--steps", "5"], {}, "--steps 5: 1 step, but "),
    (["--steps", "5,6,7"], {}, "has 2 scales (scales=.1,.1); give 2 steps, one per scale"),
    (["--steps", "5,6", "--recipe", "adam"], {}, "--steps is for the darknet recipe's policy=steps"),
    (["--steps", "5,6"], {"policy": "poly"}, "--steps needs policy=steps, this cfg has policy=poly"),
])
def test_wrong_steps_are_one_clear_line(voc, tmp_path, capsys, extra, cfg_keys, message):
    cfg = edited_cfg(tmp_path, **cfg_keys) if cfg_keys else SYNTH
    code, err = cli(capsys, "train", cfg, voc, "--out", tmp_path / "run", "--max-batches", "1", *TRAIN,
                    *extra)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("train: ") and message in err, err
    if cfg_keys:
        assert str(cfg) in err  # names the cfg whose policy it is
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_steps_that_are_not_numbers_are_the_parsers_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([str(SYNTH), "x", "--out", "r", "--steps", "2,x"])
    assert "--steps '2,x': expected batch numbers" in capsys.readouterr().err
    assert build_parser().parse_args([str(SYNTH), "x", "--out", "r", "--steps=-1,100"]).steps == [-1, 100]


def test_a_resume_keeps_the_runs_steps(voc, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", SYNTH, voc, "--out", run, *TRAIN]
    assert cli(capsys, *args, "--max-batches", "2", "--steps", "1,2")[0] == 0
    code, err = cli(capsys, "train", SYNTH, voc, "--out", run, "--resume", "--max-batches", "3", "--steps",
                    "1,3", *TRAIN)
    assert code == 1 and "--steps [1, 3] differs from the run's [1, 2]" in err, err
    code, err = cli(capsys, "train", SYNTH, voc, "--out", run, "--resume", "--max-batches", "3", *TRAIN)
    assert code == 0, err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["settings"]["steps"] == [1, 2]


def test_a_checkpoint_from_before_the_option_resumes_exactly(voc, tmp_path, capsys):
    args = ["train", SYNTH, voc, *TRAIN]
    assert cli(capsys, *args, "--out", tmp_path / "whole", "--max-batches", "3")[0] == 0
    old = tmp_path / "old"
    assert cli(capsys, *args, "--out", old, "--max-batches", "2")[0] == 0
    ckpt = torch.load(old / "checkpoint.pt", weights_only=True)
    del ckpt["settings"]["steps"]  # as the code before --steps wrote it
    torch.save(ckpt, old / "checkpoint.pt")
    code, err = cli(capsys, *args, "--out", old, "--max-batches", "3", "--resume")
    assert code == 0, err
    assert (old / "yolov2-tiny-synth_final.weights").read_bytes() == \
        (tmp_path / "whole" / "yolov2-tiny-synth_final.weights").read_bytes()


def test_checkpoint_settings_check_the_steps():
    good = Settings(cfg=str(SYNTH), data="x").__dict__
    assert settings_problem(good) is None and settings_problem(good | {"steps": [1, 2]}) is None
    assert "'steps' is" in settings_problem(good | {"steps": [1.5, 2]})
    assert "'steps' is" in settings_problem(good | {"steps": []})
    assert "'steps' is" in settings_problem(good | {"steps": [True]})


def test_train_refuses_steps_for_the_adam_recipe_before_it_writes(voc, tmp_path):
    with pytest.raises(TrainError, match="adam recipe sets its own steps"):
        train(SYNTH, voc, tmp_path / "run", recipe="adam", steps=[1, 2], max_batches=1, batch=4, sizes=[64],
              workers=0, device="cpu", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ------------------------------------------------------------------ the AMP demo's recipe in its script

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "train_demo_weights.sh"


def script_commands(tmp_path: Path, *args: str) -> tuple[int, list[list[str]], str]:
    """Run tools/train_demo_weights.sh with a python that records its arguments and runs nothing:
    (exit status, the `python -m yolov2 ...` commands it would run, stderr)."""
    record = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\x1f" "$@" >> {record}\necho >> {record}\n')
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(SCRIPT), *args], env={"PY": str(fake), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    lines = record.read_text().splitlines() if record.exists() else []
    calls = [ln.rstrip("\x1f").split("\x1f") for ln in lines]
    return proc.returncode, calls, proc.stderr


def test_the_amp_demo_script_runs_the_stretched_recipe_and_leaves_data_alone(tmp_path):
    data = SCRIPT.parents[1] / "data"
    before = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    code, calls, err = script_commands(tmp_path, "--amp", str(tmp_path / "run"), "--workers", "0")
    assert code == 0, err
    assert [c[:3] for c in calls] == [["-m", "yolov2", "synth"], ["-m", "yolov2", "train"]]
    args = build_parser().parse_args(calls[1][3:])  # a command train takes
    assert args.amp and args.max_batches == 2000 and args.steps == [1333, 1733] and args.workers == 0
    assert args.sizes == list(range(192, 257, 32)) and args.seed == 0 and args.eval_set == "2007:test"
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == before
    # an option given again after RUN_DIR wins (argparse keeps the last), e.g. the 1500-update recipe
    (tmp_path / "again").mkdir()
    code, calls, _ = script_commands(tmp_path / "again", "--amp", str(tmp_path / "r2"), "--max-batches",
                                     "1500", "--steps", "1000,1300")
    args = build_parser().parse_args(calls[-1][3:])
    assert code == 0 and args.max_batches == 1500 and args.steps == [1000, 1300]


def test_the_float32_demo_script_takes_no_further_options(tmp_path):
    code, calls, err = script_commands(tmp_path, str(tmp_path / "run"), "--max-batches", "2000")
    assert code == 2 and calls == [] and "go with --amp only" in err
