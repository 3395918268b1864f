"""ONNX: a torch network written as an ONNX graph (checked against torch), and the runtimes that run such
a graph on the CPU (ONNX Runtime, OpenVINO). Both runtimes are optional extras, imported when a graph is
first opened, so that a torch-only installation loads and runs every torch model."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from c100 import UserError
from c100 import checkpoint as ckpt
from c100.card import input_size, sidecar_path

OPSET = 17


class Session:
    """An exported ONNX network run on the CPU by another runtime: normalised float32 NCHW in, logits out.
    A subclass opens the file (`_open`) and runs a batch (`_run`); loading errors read the same for both."""

    runtime = ""
    missing = ""  # the one-line fix when the runtime is not installed

    def __init__(self, path: Path):
        try:
            self._open(path)
        except ImportError:
            raise UserError(self.missing) from None
        except Exception as e:  # each runtime raises its own exception types (with long traces) for bad files
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"{path} is not a loadable ONNX model ({first[:100]})") from None

    def _open(self, path: Path) -> None:
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(np.ascontiguousarray(x.numpy(), dtype=np.float32)))


class OnnxSession(Session):
    runtime = "onnxruntime"
    missing = "running ONNX needs onnxruntime; pip install 'c100[export]'"

    def _open(self, path: Path) -> None:
        import onnxruntime as ort  # optional (c100[export])

        options = ort.SessionOptions()
        # no busy-waiting between calls: a spinning thread pool takes a core from everything else in the
        # process (the demo's HTTP threads) and on the machine
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


class OpenVinoSession(Session):
    """The same ONNX file (fp32, or ONNX Runtime's int8 QDQ graph, which OpenVINO runs on its own int8
    kernels) compiled by OpenVINO for the CPU: 1.2x ONNX Runtime's int8 img/s at batch 100 on a 2-core
    AVX2 EPYC (benchmarks/results/records/inference-speed-cpu.json)."""

    runtime = "openvino"
    missing = "the openvino backends need OpenVINO; pip install 'c100[openvino]'"

    def _open(self, path: Path) -> None:
        import openvino as ov  # optional (c100[openvino])

        # LATENCY: one stream using every core for each call, which is how Model.logits calls it. f32:
        # on CPUs with AVX512-BF16 or AMX OpenVINO otherwise runs fp32 layers in bf16, so `openvino`
        # would silently be a bf16 backend there (on an AVX512-BF16 EPYC: logits up to 0.76 off torch
        # fp32's on 500 test images, 2.2% of top-1 answers changed; with f32, 1.5e-5 and none)
        self.compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                                    "INFERENCE_PRECISION_HINT": "f32"})

    def _run(self, x: np.ndarray) -> np.ndarray:
        # a request per call: requests are not thread-safe, and the demo calls from several threads
        out = self.compiled.create_infer_request().infer({0: x})
        return np.array(out[self.compiled.output(0)])  # a copy: the request that owns the buffer goes away


def write_onnx(module: nn.Module, card: dict, path: Path) -> Path:
    """`module` as an ONNX graph in `path`, and beside it its card, saying how the graph agreed with torch:
    `c100 export --format onnx` and the ONNX backends' cache both write this. Returns the sidecar's path."""
    card = dict(card, onnx=export_onnx(module, path, input_size(card)))
    card.pop("dtype", None)  # a safetensors card's: the graph is float32
    ckpt.atomic_write_json(sidecar_path(path), card)
    return sidecar_path(path)


def export_onnx(model: nn.Module, path: Path, size: int = 32) -> dict:
    """Trace to ONNX for size x size inputs with a dynamic batch axis, then check it against PyTorch with
    onnxruntime. The resize to `size` stays outside the graph, like the normalisation (opset 17 has no
    antialiased resize)."""
    model = model.to(memory_format=torch.contiguous_format).eval()
    x = torch.randn(2, 3, size, size)
    buf = io.BytesIO()
    try:
        # The TorchScript exporter: it needs only `onnx` and works from torch 2.4 to 2.13 alike; the newer
        # torch.export one also needs onnxscript and takes ~10x longer on ResNet18 here. It warns that it
        # is deprecated; the warning says nothing to a user.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (x,), buf, input_names=["images"], output_names=["logits"], opset_version=OPSET,
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    except ImportError as e:
        raise UserError(f"ONNX export needs the onnx package ({e}); pip install 'c100[export]'") from None
    ckpt.atomic_write_bytes(path, buf.getvalue())
    check = torch.Generator().manual_seed(0)
    batch = torch.randn(64, 3, size, size, generator=check)
    with torch.no_grad():
        ref = model(batch).numpy()
    got = OnnxSession(path)(batch).numpy()
    return {"opset": OPSET, "dynamic_batch": True, "check_batch": 64,
            "max_abs_logit_diff": float(np.abs(got - ref).max()),
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
