"""Mixed precision, with the CPU standing in for the GPU: the model, the loss and the trainer under
bf16 and fp16 autocast, the checkpoints and `.weights` an AMP run writes, and `train --amp` on the CPU.

CPU autocast runs bf16 on any CPU (natively with AVX512-BF16 or AMX, else emulated and slow), so the
trainer tests let the runtime's `bf16_supported` check pass everywhere: they test the dtype logic that
CUDA autocast exercises, not the speed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import narrow_cfg_with_tiny_schedule

import yolov2.train.runtime as runtime
from yolov2.darknet.cfg import stock_cfg
from yolov2.darknet.layers import FLT_MAX, MaxPool, pad_value
from yolov2.darknet.model import Darknet
from yolov2.data.synth import make_synthetic_voc
from yolov2.loss.region_loss import RegionLoss
from yolov2.train.checkpoint import CHECKPOINT
from yolov2.train.command import Runtime, Settings, Trainer, TrainError
from yolov2.train.command import main as train_main

STOCK = ("yolov2-tiny-synth", "yolov2-tiny-voc", "yolov2-voc")


@pytest.fixture
def cpu_bf16(monkeypatch):
    """The runtime's check passes on any CPU (autocast emulates bf16 where it is not native)."""
    monkeypatch.setattr(runtime, "bf16_supported", lambda device="cpu": True)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_synthetic_voc(tmp_path_factory.mktemp("synth") / "voc", 8, 0, seed=11)


def truths(n: int, classes: int, seed: int = 0) -> torch.Tensor:
    """(n, 30, 5) darknet truths: 3 boxes per image, zero rows after them."""
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(n, 30, 5)
    t[:, :3, :2] = torch.rand(n, 3, 2, generator=g) * 0.8 + 0.1
    t[:, :3, 2:4] = torch.rand(n, 3, 2, generator=g) * 0.4 + 0.1
    t[:, :3, 4] = torch.randint(0, classes, (n, 3), generator=g).float()
    return t


def batches(cfg: str, size: int, n: int = 2, count: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    classes = Darknet(cfg).num_classes
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(n, 3, size, size, generator=g), truths(n, classes, k)) for k in range(count)]


def test_maxpool_pad_is_the_dtypes_lowest_and_float32_is_darknets():
    assert pad_value(torch.float32) == -FLT_MAX  # bit-identical to darknet's -FLT_MAX
    assert pad_value(torch.bfloat16) == torch.finfo(torch.bfloat16).min
    assert pad_value(torch.float16) == -65504.0
    # tiny's layer 11 (size 2, stride 1) pads the bottom row and right column; all-negative inputs,
    # some as low as the dtype goes, so a pad of 0 or one above the lowest value would show
    pool = Darknet("yolov2-tiny-voc").layers[11]
    assert isinstance(pool, MaxPool) and (pool.size, pool.stride) == (2, 1)
    x = -torch.rand(2, 3, 13, 13) * 1e3 - 1
    for dtype in (torch.bfloat16, torch.float16):
        low = x.to(dtype)
        low[:, :, -1, -1] = torch.finfo(dtype).min
        ref = pool(low.float())  # float32 with -FLT_MAX: max is exact, so the low dtype's result equals it
        for grad in (False, True):  # F.max_pool2d in training, the taps' max at inference
            with torch.set_grad_enabled(grad):
                out = pool(low.clone().requires_grad_(grad))
            assert out.dtype == dtype and out.shape == (2, 3, 13, 13)
            assert torch.equal(out.float(), ref)


@pytest.mark.parametrize("cfg", STOCK)
def test_bf16_autocast_forward_backward(cfg):
    net = Darknet(cfg).train()
    x = torch.rand(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
    assert logits.dtype == torch.bfloat16 and logits.shape[-2:] == (2, 2)
    loss = RegionLoss.from_region(net.region)(logits, truths(2, net.num_classes), 0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for p in net.parameters():
        assert p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all()
    assert net.layers[0].conv.weight.grad.abs().sum() > 0  # the gradient reached the first layer


def _fp16_autocast_supported() -> str | None:
    """None if this torch runs an fp16 convolution and its backward under CPU autocast, else why not."""
    try:
        conv = torch.nn.Conv2d(3, 4, 3)
        with torch.autocast("cpu", dtype=torch.float16):
            y = conv(torch.rand(1, 3, 8, 8))
        if y.dtype != torch.float16:
            return f"CPU autocast to float16 gives {y.dtype} convolutions in torch {torch.__version__}"
        y.float().sum().backward()
    except RuntimeError as e:
        return f"torch {torch.__version__} has no CPU float16 autocast: {e}"
    return None


@pytest.mark.parametrize("cfg", STOCK)
def test_fp16_autocast_forward_backward(cfg):
    why = _fp16_autocast_supported()
    if why:
        pytest.skip(why)
    net = Darknet(cfg).train()
    with torch.autocast("cpu", dtype=torch.float16):
        logits = net(torch.rand(2, 3, 64, 64))
    assert logits.dtype == torch.float16
    loss = RegionLoss.from_region(net.region)(logits, truths(2, net.num_classes), 0)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seen", [0, 20000])  # the prior pull on and off
def test_loss_on_low_precision_logits_is_the_float32_loss_of_the_same_values(dtype, seen):
    net = Darknet("yolov2-tiny-voc")
    loss_fn = RegionLoss.from_region(net.region)
    low = (torch.randn(3, 125, 4, 4) * 3).to(dtype).requires_grad_()
    wide = low.detach().float().requires_grad_()  # the same values, cast up
    t = truths(3, 20, seed=4)
    l_low, l_wide = loss_fn(low, t, seen), loss_fn(wide, t, seen)
    assert l_low.dtype == torch.float32 and torch.equal(l_low, l_wide)  # computed in float32, as darknet
    l_low.backward()
    l_wide.backward()
    assert low.grad.dtype == dtype and low.grad.abs().sum() > 0
    assert torch.equal(low.grad, wide.grad.to(dtype))  # the float32 gradient rounded to the logits' dtype


@pytest.mark.parametrize(("cfg", "size"), [("yolov2-tiny-synth", 64), ("yolov2-tiny-voc", 64),
                                           ("yolov2-voc", 64)])
def test_trainer_iterates_under_cpu_bf16_autocast(cpu_bf16, cfg, size):
    data = batches(cfg, size)
    t = Trainer.from_batches(cfg, data, amp=True, batch=2, subdivisions=1, max_batches=3, learning_rate=1e-4)
    assert t.rt.amp_dtype == torch.bfloat16 and t.rt.memory_format == torch.channels_last
    before = {k: v.clone() for k, v in t.net.state_dict().items()}
    rows = [t.iteration() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    f = t.train_datum()
    assert f.logits.dtype == f.grad.dtype == torch.bfloat16 and f.loss.dtype == torch.float32
    after = t.net.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in after.items())  # parameters stay float32
    assert any(not torch.equal(after[k], before[k]) for k in before if after[k].is_floating_point())


def test_amp_off_on_cpu_is_float32_nchw():
    rt = Runtime(torch.device("cpu"))
    assert rt.amp is None and rt.amp_dtype is None and rt.memory_format == torch.contiguous_format
    assert runtime.autocast(rt).__class__.__name__ == "nullcontext"


def _trainer(voc: Path, out: Path, resume: bool = False) -> Trainer:
    out.mkdir(parents=True, exist_ok=True)
    cfg = narrow_cfg_with_tiny_schedule(out.parent)
    s = Settings(str(cfg), str(voc), batch=4, subdivisions=2, sizes=[64], seed=3, max_batches=4,
                 learning_rate=0.01)
    return Trainer(s, Runtime(torch.device("cpu"), progress=False, amp=True), out, resume=resume)


def test_amp_workers_train_as_inline_with_channels_last_batches_used_in_place(cpu_bf16, voc, tmp_path):
    """Under CPU bf16 the workers collate channels_last, the layout the trainer wants, and the trainer
    uses each batch in place (dataset.PoolConsumer): two workers give one process's weights exactly."""
    cfg = narrow_cfg_with_tiny_schedule(tmp_path)

    def run(workers: int) -> dict[str, torch.Tensor]:
        out = tmp_path / f"w{workers}"
        out.mkdir()
        s = Settings(str(cfg), str(voc), batch=4, subdivisions=2, sizes=[64], seed=3, max_batches=3,
                     learning_rate=0.01)
        t = Trainer(s, Runtime(torch.device("cpu"), progress=False, amp=True, workers=workers), out,
                    resume=False)
        assert t.rt.memory_format == torch.channels_last
        t.run()
        if workers:
            assert t._pool.mapped > 0  # the batches came from the workers' pool buffers
            assert t._pool.lent == 1  # used in place: the last one is given back at a next take
        return {k: v.clone() for k, v in t.net.state_dict().items()}

    inline, two = run(0), run(2)
    for k in inline:
        torch.testing.assert_close(two[k], inline[k], rtol=0, atol=0, msg=k)


def test_resume_from_an_amp_checkpoint_is_exact_and_its_files_are_float32(cpu_bf16, voc, tmp_path):
    whole = _trainer(voc, tmp_path / "a" / "whole")
    rows = [whole.iteration() for _ in range(4)]
    part = _trainer(voc, tmp_path / "b" / "part")
    first = [part.iteration() for _ in range(2)]
    part.save()
    ckpt = torch.load(part.out / CHECKPOINT, weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in ckpt["model"].values())
    resumed = _trainer(voc, tmp_path / "b" / "part", resume=True)
    rest = [resumed.iteration() for _ in range(2)]
    assert [r["loss"] for r in first + rest] == [r["loss"] for r in rows]
    a, b = whole.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the .weights of an AMP run: float32, darknet's layout, loads back into a float32 net unchanged
    path = resumed.save_weights(tmp_path / "amp.weights")
    net = Darknet(resumed.s.cfg)
    net.load_weights(path)
    assert net.seen == resumed.seen
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], b[k]) for k in b if k.split(".")[-1] != "num_batches_tracked")


def test_resume_in_another_precision_is_refused_naming_the_checkpoint(cpu_bf16, voc, tmp_path):
    """A checkpoint records its forwards' precision; --resume in another is one line naming the file,
    unless --new-precision (Runtime.new_precision) asks for it, and then the run goes on in the new one."""
    run = tmp_path / "amp"
    part = _trainer(voc, run)
    part.iteration()
    part.save()
    assert torch.load(run / CHECKPOINT, weights_only=True)["precision"] == "bfloat16"
    s = part.s
    with pytest.raises(TrainError) as e:
        Trainer(s, Runtime(torch.device("cpu"), progress=False), run, resume=True)  # float32
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{run / CHECKPOINT}: the run trained in bfloat16, this "
                                               "resume would train in float32")
    assert "--new-precision" in msg
    on = Trainer(s, Runtime(torch.device("cpu"), progress=False, new_precision=True), run, resume=True)
    on.iteration()
    on.save()  # from here on the run is a float32 one: resuming it under --amp is refused
    assert torch.load(run / CHECKPOINT, weights_only=True)["precision"] == "float32"
    with pytest.raises(TrainError, match="trained in float32, this resume would train in bfloat16; resume "
                       "with --no-amp"):
        _trainer(voc, run, resume=True)


def test_checkpoint_precision_is_checked_and_an_older_checkpoint_has_none(cpu_bf16, voc, tmp_path):
    from yolov2.train.checkpoint import CheckpointError, load_checkpoint, make_checkpoint

    run = tmp_path / "amp"
    part = _trainer(voc, run)
    part.iteration()
    part.save()
    ckpt = torch.load(run / CHECKPOINT, weights_only=True)
    ckpt["precision"] = "int8"
    torch.save(ckpt, run / CHECKPOINT)
    with pytest.raises(CheckpointError, match="checkpoint.pt: precision 'int8' is not one of float32, "
                       "bfloat16, float16"):
        load_checkpoint(run / CHECKPOINT, part.fingerprint, part.net.state_dict())
    del ckpt["precision"]  # written before the precision was recorded: resumes in any, unchecked
    torch.save(ckpt, run / CHECKPOINT)
    Trainer(part.s, Runtime(torch.device("cpu"), progress=False), run, resume=True).iteration()
    with pytest.raises(ValueError, match="precision 'fp8'"):
        make_checkpoint(fingerprint="", model={}, optimizer={}, seen=0, step=0, progress={}, settings={},
                        precision="fp8")


def test_train_cli_resume_with_another_precision(cpu_bf16, voc, tmp_path, capsys):
    out = tmp_path / "run"
    base = [str(stock_cfg("yolov2-tiny-synth")), str(voc), "--out", str(out), "--device", "cpu",
            "--no-progress", "--batch", "2", "--subdivisions", "1", "--sizes", "64", "--workers", "0",
            "--final-batches", "0"]
    assert train_main([*base, "--max-batches", "1", "--amp"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert train_main([*base, "--max-batches", "2", "--resume"]) == 1  # the CPU's default: float32
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"train: {out / CHECKPOINT}: the run trained in "
                                                         "bfloat16")
    assert train_main([*base, "--max-batches", "2", "--resume", "--amp"]) == 0, capsys.readouterr().err
    assert train_main([*base, "--max-batches", "3", "--resume", "--new-precision"]) == 0


def test_train_amp_on_a_cpu_without_bf16_is_one_clear_line(monkeypatch, voc, tmp_path, capsys):
    monkeypatch.setattr(runtime, "bf16_supported", lambda device="cpu": False)
    code = train_main([str(stock_cfg("yolov2-tiny-synth")), str(voc), "--out", str(tmp_path / "run"),
                       "--device", "cpu", "--amp", "--no-progress", "--max-batches", "1"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "--amp on the CPU trains in bf16, which needs AVX512-BF16 or AMX" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(TrainError, match="AVX512-BF16 or AMX"):
        Trainer.from_batches("yolov2-tiny-synth", batches("yolov2-tiny-synth", 64), amp=True, batch=2,
                             subdivisions=1, max_batches=1)


def test_train_cli_amp_flag(cpu_bf16, monkeypatch, voc, tmp_path, capsys):
    import yolov2.train.trainer as trainer_module

    base = [str(stock_cfg("yolov2-tiny-synth")), str(voc), "--device", "cpu", "--no-progress",
            "--max-batches", "1", "--batch", "2", "--subdivisions", "1", "--sizes", "64", "--workers", "0",
            "--final-batches", "0"]
    seen: list = []
    real = runtime.autocast

    def recording(rt):
        seen.append(rt.amp_dtype)
        return real(rt)

    monkeypatch.setattr(trainer_module, "autocast", recording)
    # the CPU's default is float32; --amp is bf16 autocast; --no-amp float32
    for k, (flag, want) in enumerate((([], None), (["--amp"], torch.bfloat16), (["--no-amp"], None))):
        seen.clear()
        assert train_main([*base, "--out", str(tmp_path / f"run{k}"), *flag]) == 0, capsys.readouterr().err
        assert seen and set(seen) == {want}


def test_bench_train_tiny_prints_fp32_and_bf16_side_by_side(cpu_bf16, monkeypatch, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "bf16_supported", lambda device="cpu": True)
    result = bench.main(["--tiny", "--device", "cpu"])
    assert list(result) == ["fp32", "bf16"]
    assert all(r[k] > 0 for r in result.values() for k in ("pipeline", "trainer", "floor"))
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("| precision | pipeline on | trainer | floor |") and len(out) == 5
    assert out[3].startswith("| fp32 |") and out[4].startswith("| bf16 |")
    assert out[3].split("|")[6].strip() == "1.00x"  # fp32 against itself


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cfg", STOCK)
def test_cuda_amp_trainer_iterates(cfg, dtype, monkeypatch):
    """On the GPU the trainer's own autocast (bf16, or fp16 with its GradScaler) for every stock cfg."""
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: dtype == torch.bfloat16)
    t = Trainer.from_batches(cfg, batches(cfg, 96), device="cuda", amp=True, batch=2, subdivisions=1,
                             max_batches=3, learning_rate=1e-4)
    assert t.rt.amp_dtype == dtype and t.scaler.is_enabled() == (dtype == torch.float16)
    rows = [t.iteration() for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    f = t.train_datum()
    assert f.logits.dtype == dtype and f.loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in t.net.parameters())


@needs_cuda
def test_cuda_loss_makes_no_host_sync():
    net = Darknet("yolov2-tiny-voc").cuda().train()
    loss_fn = RegionLoss.from_region(net.region).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        logits = net(torch.rand(2, 3, 96, 96, device="cuda"))
    t = truths(2, 20).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_fn(logits, t, 0).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
