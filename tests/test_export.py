"""ONNX export: the checker, ONNX Runtime and OpenCV against the PyTorch model and darknet's own outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import FIXTURES, shared_path

from yolov2 import Darknet
from yolov2.darknet.infer import relative_error
from yolov2.darknet.region import activate
from yolov2.deploy.bench import random_darknet
from yolov2.deploy.export import export_onnx, main, onnx_session, run_onnx, verify
from yolov2.detect.postprocess import region_boxes, region_scores

TOL = 1e-4  # of the PyTorch output's range

# narrow nets with the stock layer structures: tiny (maxpool 2x2/1) and voc (reorg + route passthrough)
CFGS = {"tiny": FIXTURES / "net" / "tiny.cfg", "voc": FIXTURES / "net" / "voc.cfg"}


@pytest.fixture(scope="module")
def nets() -> dict[str, Darknet]:
    return {k: random_darknet(cfg, calibrate=96) for k, cfg in CFGS.items()}


@pytest.fixture(scope="module")
def exported(nets, tmp_path_factory) -> dict[tuple[str, bool, bool], object]:
    """(cfg, dynamic size, with decode) -> path of the exported model, traced at 96x64."""
    tmp = tmp_path_factory.mktemp("onnx")
    return {(k, dyn, dec): export_onnx(net, tmp / f"{k}_{dyn}_{dec}.onnx", (96, 64), dyn, dec)
            for k, net in nets.items() for dyn in (False, True) for dec in (False, True)}


@pytest.mark.parametrize("name", ["tiny", "voc"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed", "dynamic"])
def test_onnx_runtime_logits_equal_pytorch(nets, exported, name, dynamic):
    path = exported[name, dynamic, False]
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]
    session = onnx_session(path, threads=1)
    sizes = [(64, 96), (128, 64)] if dynamic else [(64, 96)]
    for batch in (1, 3):  # dynamic batch
        for h, w in sizes:
            x = torch.rand(batch, 3, h, w)
            out = run_onnx(session, x)
            assert out.shape == (batch, 125, h // 32, w // 32)
            assert relative_error(torch.from_numpy(out), nets[name](x).detach()) <= TOL


@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed", "dynamic"])
def test_decode_equals_postprocess(nets, exported, dynamic):
    """`--with-decode` columns are postprocess's region_boxes, objectness and class probabilities."""
    net = nets["voc"]
    x = torch.rand(2, 3, 64, 96)
    out = torch.from_numpy(run_onnx(onnx_session(exported["voc", dynamic, True], 1), x))
    with torch.no_grad():
        act = activate(net(x), net.region.num)
    obj, prob = region_scores(act, net.region.num, 0.0)  # thresh 0: nothing zeroed
    assert out.shape == (2, 5 * 2 * 3, 25)
    torch.testing.assert_close(out[..., :4], region_boxes(act, net.anchors), rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(out[..., 4], obj, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out[..., 5:], prob, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny", "voc"])
def test_onnx_matches_darknet_at_416(name, tmp_path):
    d = shared_path("golden", "net", name)
    net = Darknet(d / "model.cfg").eval()
    net.load_weights(d / "model.weights")
    final = np.load(d / "final_416x416.npz")
    out = run_onnx(onnx_session(export_onnx(net, tmp_path / "m.onnx"), 1), final["input"])
    ref = final[f"layer_{net.head:02d}_convolutional"]
    assert np.abs(out - ref).max() <= 2e-5 * np.abs(ref).max()  # test_model's bound for the plain net


@pytest.mark.parametrize("name", ["tiny", "voc"])
def test_opencv_reads_fixed_size_export(nets, exported, name):
    """OpenCV 4's importer (no darknet needed): fixed-size logits exports, batch from the blob."""
    cv2 = pytest.importorskip("cv2")
    cv = cv2.dnn.readNet(str(exported[name, False, False]))
    x = torch.rand(2, 3, 64, 96)
    cv.setInput(x.numpy())
    assert relative_error(torch.from_numpy(cv.forward()), nets[name](x).detach()) <= TOL


def test_export_command(nets, tmp_path, capsys):
    weights, out = tmp_path / "tiny.weights", tmp_path / "tiny.onnx"
    nets["tiny"].save_weights(weights)
    args = ["--cfg", str(CFGS["tiny"]), "--weights", str(weights), "--format", "onnx", "--out", str(out)]
    assert main(args + ["--size", "96x64", "--with-decode"]) == 0
    assert "onnx.checker passed" in capsys.readouterr().out
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["detections"]
    assert main(args + ["--dynamic-size"]) == 1  # exists
    assert "exists (use --force" in capsys.readouterr().err
    assert main(args + ["--dynamic-size", "--force"]) == 0
    x = torch.rand(1, 3, 160, 96)
    assert verify(nets["tiny"], out, x) <= TOL


def test_export_command_errors(nets, tmp_path, capsys):
    weights = tmp_path / "tiny.weights"
    nets["tiny"].save_weights(weights)
    out = str(tmp_path / "m.onnx")
    assert main(["--cfg", str(CFGS["voc"]), "--weights", str(weights), "--out", out]) == 1
    assert f"{weights}: the file holds" in capsys.readouterr().err
    assert main(["--cfg", str(CFGS["tiny"]), "--weights", str(weights), "--out",
                 str(tmp_path / "missing" / "m.onnx")]) == 1
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--cfg", str(CFGS["tiny"]), "--weights", str(weights), "--out", out, "--size", "400"])
    assert "multiples of 32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--cfg", str(CFGS["tiny"]), "--weights", str(weights), "--out", out, "--size", "416",
              "--dynamic-size"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="multiples of 32"):
        export_onnx(nets["tiny"], out, (100, 64))
