"""One way to load a trained model for inference, whatever it was saved as.

    import c100
    model = c100.load("default")            # or a run folder, FILE.pt, FILE.safetensors, FILE.onnx
    model.predict("cat.jpg")                # [{"label": ..., "superclass": ..., "prob": ...}, ...] best first
    model.predict(["a.png", "b.png"], k=3)  # one list per image
    model.logits(uint8_images)              # N x 100 float32

A `Model` knows its classes, superclasses, input size and normalisation (its "model card", the JSON
sidecar an export writes), folds BatchNorm into the convolutions once, and runs one evaluation loop:
batches of uint8 32 x 32 images are normalised on the model's device, resized to the size the network
trained at last (progressive resizing may end below 32 px), and fed through it. `evaluate`, `predict`,
`serve`, `export`, `analyze`, `mosaic` and validation during training all go through it.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from c100 import UserError
from c100 import checkpoint as ckpt
from c100.augment import Normalize, resize
from c100.config import TrainConfig, from_dict
from c100.data import MEAN, STD
from c100.device import autocast, select_device
from c100.models import create_model
from c100.models.fold import fold_batchnorm

CARD_FORMAT = "c100-export-1"
CHECKPOINTS = ("last", "best")


# -- where a model comes from ---------------------------------------------------------------------


def packaged_weights() -> Path:
    """The ResNet18 weights shipped inside the package (see weights/PROVENANCE.md)."""
    from importlib import resources

    return Path(str(resources.files("c100") / "weights" / "resnet18-default.safetensors"))


def resolve_source(source: str | Path, which: str = "last") -> Path:
    """The file behind a model source: 'default' (the shipped weights), a run folder (its last.pt or
    best.pt), or a .pt / .safetensors / .onnx file."""
    if which not in CHECKPOINTS:
        raise UserError(f"--checkpoint '{which}' is not one of: {', '.join(CHECKPOINTS)}")
    if str(source) == "default":
        path = packaged_weights()
        if not path.is_file():
            raise UserError("this installation carries no default weights; pass --weights RUN or FILE")
        return path
    p = Path(source)
    if p.is_dir():
        ck = p / f"{which}.pt"
        if not ck.is_file():
            hint = " (best.pt exists only for runs with a validation split)" if which == "best" else ""
            raise UserError(f"{ck} not found{hint}; train first or point at another run")
        return ck
    if p.is_file():
        return p
    raise UserError(f"{source} is neither a run folder nor a model file; pass 'default', a folder written by "
                    f"`c100 train`, or a .pt, .safetensors or .onnx file")


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def load_sidecar(path: Path) -> dict:
    """The model card beside an exported file (its contents are checked by `checkpoint.check_card` when the
    model is loaded)."""
    side = sidecar_path(path)
    if not side.is_file():
        raise UserError(f"{side} not found: an exported model needs its JSON sidecar next to it "
                        f"(written by `c100 export`)")
    try:
        card = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        card = None
    except OSError as e:
        raise UserError(f"cannot read {side}: {ckpt.os_reason(e)}") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise UserError(f"{side} is not a c100 export sidecar (not JSON with format {CARD_FORMAT}); export the "
                        f"model again")
    return card


def input_size(card: dict) -> int:
    """The pixel size the network takes, as its card declares it (32 when it says nothing)."""
    return int(card.get("input", {}).get("shape", [3, 32, 32])[-1])


def model_card(cfg: TrainConfig, classes: list[str], superclasses: list[str], fine_to_coarse: list[int],
               weights: str = "model", epochs: int | None = None, environment: dict | None = None,
               accuracy: dict | None = None) -> dict:
    """What a user of the network needs besides its weights: the sidecar of every export."""
    size = cfg.eval_size()
    resized = f", then resized to {size}x{size} (bilinear, antialiased)" if size != 32 else ""
    standardise = cfg.normalize == "cifar100"
    return {
        "format": CARD_FORMAT,
        "arch": cfg.model,
        "num_classes": len(classes),
        "input": {"shape": [3, size, size], "layout": "NCHW", "dtype": "float32",
                  "pixels": ("RGB scaled to [0, 1], then (x - mean) / std" if standardise
                             else "RGB scaled to [0, 1]") + resized},
        "normalize": {"kind": cfg.normalize, "mean": list(MEAN) if standardise else [0, 0, 0],
                      "std": list(STD) if standardise else [1, 1, 1]},
        "classes": classes,
        "superclasses": superclasses,
        "fine_to_coarse": fine_to_coarse,
        "weights": weights,
        "trained": {"epochs": epochs, "config": cfg.to_dict(), "environment": environment},
        "accuracy": accuracy or {},  # what `c100 evaluate` measured, by split
    }


def _read_json(path: Path):
    """A JSON file beside a checkpoint (evaluation results, the environment), or None when absent or damaged."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def checkpoint_card(state: dict, ck: Path) -> dict:
    """The card of a training checkpoint, with what `evaluate` measured on it and the run's environment."""
    evals = {}
    for f in sorted(ck.parent.glob(f"eval-*-{ck.stem}.json")):
        r = _read_json(f)
        if isinstance(r, dict) and r.get("split"):  # a damaged record is left out, not fatal: evaluate rewrites it
            evals[r["split"]] = {k: r[k] for k in ("top1", "top5", "superclass", "n") if k in r}
    env = _read_json(ck.parent / "env.json")
    cfg = from_dict(state["config"])
    cfg.model = state.get("arch") or cfg.model
    return model_card(cfg, state["classes"], state["superclasses"], state["fine_to_coarse"],
                      "ema" if state.get("ema") is not None else "model", state["epoch"], env, evals)


# -- loading --------------------------------------------------------------------------------------


def load(source: str | Path = "default", checkpoint: str = "last", device: str = "auto",
         precision: str = "fp32", backend: str = "auto") -> Model:
    """A trained model from 'default', a run folder (its `checkpoint`: last or best), or a .pt,
    .safetensors or .onnx file, on `device` (auto: a CUDA GPU if there is one; ONNX runs on the CPU).
    `backend` (quantize.py): torch (fp32, the reference), torch-bf16, onnx, int8 (ONNX Runtime),
    openvino, openvino-int8 (OpenVINO), or auto (the fastest within 0.5 points of torch fp32 as
    `c100 quantize` measured it on this CPU; torch before that)."""
    path = resolve_source(source, checkpoint)
    weights = path if path.suffix != ".onnx" else None  # what explain() runs when another runtime answers
    runtime = "onnxruntime"
    if backend != "torch" or path.suffix == ".onnx":
        from c100.quantize import backend_file, choose

        on_gpu = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if backend == "auto":
            backend = "onnx" if path.suffix == ".onnx" else "torch" if on_gpu else choose(path)
        if backend != "torch":
            path, precision = backend_file(path, backend)
        runtime = "openvino" if backend.startswith("openvino") else "onnxruntime"
    if path.suffix == ".onnx":
        card = load_sidecar(path)
        ckpt.check_card(card, str(sidecar_path(path)))
        session = OpenVinoSession(path) if runtime == "openvino" else OnnxSession(path)
        return Model(card, session=session, source=path, precision="fp32", device="cpu", torch_source=weights)
    if path.suffix == ".safetensors":
        card = load_sidecar(path)
        module = load_safetensors(path, card)
    else:
        state = _load_checkpoint(path)
        card = checkpoint_card(state, path)
        ckpt.check_card(card, str(path))
        module = create_model(card["arch"], card["num_classes"])
        weights = state["ema"] if state.get("ema") is not None else state["model"]
        ckpt.load_weights(module, weights, str(path), card["arch"],
                          f" with {card['num_classes']} classes, as the checkpoint says")
        module.eval()
    return Model(card, module, source=path, device=device, precision=precision)


def _load_checkpoint(path: Path) -> dict:
    """A training checkpoint with what inference needs besides the weights, of the right kinds."""
    state = ckpt.load(path)
    kinds = {"classes": list, "superclasses": list, "fine_to_coarse": list, "epoch": int}
    for key, kind in kinds.items():
        if key not in state:
            raise UserError(f"{path} lacks '{key}': not a checkpoint written by `c100 train`")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise UserError(f"{path}: its '{key}' is a {type(state[key]).__name__}, not a {kind.__name__}: not a "
                            f"checkpoint written by `c100 train` (or a damaged one)")
    if state.get("ema") is not None and not isinstance(state["ema"], dict):
        raise UserError(f"{path}: its 'ema' is not a mapping of weights: not a checkpoint written by `c100 train`")
    return state


def load_safetensors(path: Path, card: dict) -> nn.Module:
    """The network of a .safetensors file, built as its sidecar (`card`) declares, once the card is checked."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable safetensors file ({detail}); export it again") from None
    ckpt.check_card(card, str(sidecar_path(path)))
    side = sidecar_path(path).name
    if metadata.get("arch") and metadata["arch"] != card["arch"]:
        raise UserError(f"{path} holds the weights of a {metadata['arch']} but its sidecar {side} says "
                        f"{card['arch']}: the sidecar belongs to another model; export it again")
    model = create_model(card["arch"], card["num_classes"])
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    ckpt.load_weights(model, tensors, str(path), card["arch"],
                      f" with {card['num_classes']} classes, as its sidecar {side} says")
    return model.eval()


class _Session:
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


class OnnxSession(_Session):
    runtime = "onnxruntime"
    missing = "running ONNX needs onnxruntime; pip install 'c100[export]'"

    def _open(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # no busy-waiting between calls: a spinning thread pool takes a core from everything else in the
        # process (the demo's HTTP threads) and on the machine
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


class OpenVinoSession(_Session):
    """The same ONNX file (fp32, or ONNX Runtime's int8 QDQ graph, which OpenVINO runs on its own int8
    kernels) compiled by OpenVINO for the CPU: 1.2x ONNX Runtime's int8 img/s at batch 100 on a 2-core
    AVX2 EPYC (benchmarks/results/records/inference-speed-cpu.json)."""

    runtime = "openvino"
    missing = "the openvino backends need OpenVINO; pip install 'c100[openvino]'"

    def _open(self, path: Path) -> None:
        import openvino as ov

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


@contextmanager
def one_torch_thread():
    """Torch on one thread for the preprocessing of a batch another runtime then runs. A parallel torch op
    leaves libgomp's worker threads spinning for a while after it, on the cores the runtime's own threads
    need next: one thread takes every session backend's images/s at batch 100 up by about 2% (1.8-2.5%,
    medians of 7 rounds side by side on a 2-core EPYC) for a normalise-and-resize that takes under a
    millisecond (benchmarks/results/records/preprocess-threads-cpu.json). Torch's thread count is a
    setting of each thread (OpenMP's), so each thread that enters (a server's too) restores its own."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


# -- the model ------------------------------------------------------------------------------------


class Model:
    """A trained classifier ready for inference (eval mode, BatchNorm folded, no gradients).

    card: the model card (classes, superclasses, input size, normalisation, how it was trained).
    module: the network as trained (None for ONNX); export writes its weights.
    """

    def __init__(self, card: dict, module: nn.Module | None = None, *,
                 session: _Session | None = None,
                 source: Path | None = None, device: str | torch.device = "auto", precision: str = "fp32",
                 batch_size: int | None = None, channels_last: bool | None = None, tta: bool | None = None,
                 torch_source: Path | None = None):
        self.card, self.source, self.precision = card, source, precision
        cfg = card.get("trained", {}).get("config") or {}
        self.arch: str = card["arch"]
        self.classes: list[str] = card["classes"]
        self.superclasses: list[str] = card["superclasses"]
        self.fine_to_coarse: list[int] = card["fine_to_coarse"]
        self.input_size = input_size(card)
        self.normalization: str = card["normalize"]["kind"]
        # the run's own evaluation batch and layout: NHWC at batch 100 is 1.7x faster than NCHW at 500 on
        # the 2-core CPU (104 vs 62 img/s); GPU presets set a larger batch
        self.batch_size = int(batch_size or cfg.get("eval_batch_size") or 100)
        self.channels_last = bool(cfg.get("channels_last", True) if channels_last is None else channels_last)
        # flip TTA, when the model was trained (and validated) with it: every prediction averages the two views
        self.tta = bool(cfg.get("tta", False) if tta is None else tta)
        self.module, self._session = module, session
        self.net: nn.Module | None = None
        # Grad-CAM's network: an eval copy of the module, or the torch network of the weights a session
        # backend runs (an ONNX graph has no gradients); hooks on a shared module: one explanation at a time
        self._torch_source, self._cam_net, self._cam_lock = torch_source, None, threading.Lock()
        self.device = torch.device("cpu")
        if module is not None:
            self.to(device)

    def __repr__(self) -> str:
        runner = self._session.runtime if self._session else f"torch on {self.device}"
        return (f"Model({self.arch}, {len(self.classes)} classes, input {self.input_size} px, {runner}, "
                f"from {self.source or 'memory'})")

    @property
    def backend(self) -> str:
        """What runs the network: torch fp32 / torch bf16, onnxruntime fp32 / int8, openvino fp32 / int8."""
        if self._session is None:
            return f"torch {self.precision}"
        int8 = bool(self.source and self.source.name.endswith("-int8.onnx"))
        return f"{self._session.runtime} {'int8' if int8 else 'fp32'}"

    @property
    def config(self) -> TrainConfig:
        """The training config the model was made with (data location, split, evaluation settings)."""
        return from_dict(self.card.get("trained", {}).get("config") or {"model": self.arch})

    def to(self, device: str | torch.device) -> Model:
        """Move a torch model (and its folded copy) to a device: 'auto', 'cpu', 'cuda', ... ."""
        dev = select_device(device) if isinstance(device, str) else device
        if self._session is not None:
            if dev.type != "cpu":
                raise UserError(f"an ONNX model runs on the CPU with {self._session.runtime}; use --device cpu")
            return self
        self.device, self._cam_net = dev, None
        self.module = self.module.to(dev)  # in place; its train/eval mode is left as it is (a live model)
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        # an eval-mode copy with BatchNorm folded into the convolutions (1.1x faster on the CPU, same
        # outputs: models/fold.py)
        self.net = fold_batchnorm(self.module)
        return self

    @torch.no_grad()
    def logits(self, images, flip: bool = False, batch_size: int | None = None) -> torch.Tensor:
        """float32 logits, N x classes, on the model's device, for images as `as_batch` takes them;
        with `flip`, of their mirror images (for flip test-time augmentation). A model with `tta` returns
        the log of the mean of each image's and its mirror's probabilities (the same with `flip`)."""
        x = as_batch(images)
        bs = batch_size or self.batch_size
        if not self.tta:
            return self._forward(x, flip, bs)
        # log((p + q) / 2) from log p and log q, stable where a probability underflows to 0
        both = torch.logaddexp(self._forward(x, False, bs).log_softmax(1), self._forward(x, True, bs).log_softmax(1))
        return both - math.log(2)

    def _forward(self, x: torch.Tensor, flip: bool, bs: int) -> torch.Tensor:
        out = []
        for i in range(0, len(x), bs):
            xb = self._inputs(x[i:i + bs], flip)
            if self._session is not None:
                out.append(self._session(xb).float())
                continue
            with autocast(self.precision, self.device):
                out.append(self.net(xb).float())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes), device=self.device)

    def _inputs(self, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """uint8 images as the network takes them: normalised, mirrored with `flip`, resized to its input size."""
        with one_torch_thread() if self._session is not None else nullcontext():
            xb = Normalize(self.normalization, self.device)(x.to(self.device))
            if flip:
                xb = xb.flip(3)
            xb = resize(xb, self.input_size)
        if self._session is None and self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb

    def predict(self, images, k: int = 5) -> list[dict] | list[list[dict]]:
        """The k most probable classes (label, superclass, probability; best first) of each image; for a
        single image (a path, a PIL image or one 3 x 32 x 32 array), its list alone."""
        probs = self.logits(images).float().softmax(1).cpu()
        p, idx = probs.topk(min(k, probs.shape[1]), 1)
        tops = self._answers(p, idx)
        return tops[0] if _is_single(images) else tops

    def _answers(self, p: torch.Tensor, idx: torch.Tensor) -> list[list[dict]]:
        return [[{"label": self.classes[c], "superclass": self.superclasses[self.fine_to_coarse[c]],
                  "prob": round(q, 4)} for q, c in zip(pr, ix, strict=True)]
                for pr, ix in zip(p.tolist(), idx.tolist(), strict=True)]

    def explain(self, images, k: int = 1, targets=None, layer: str | None = None) -> list[dict] | list[list[dict]]:
        """predict() with a Grad-CAM heat map for each answer (models/cam.py): "map" is a 32 x 32 float32 array
        in [0, 1] over the 32 x 32 image, 1 where the evidence for that class is strongest. The classes are
        the top k, or `targets` (class indices, N x j). A model with flip TTA averages the image's map and
        its mirror's (mirrored back). The answers come from this model's backend; the maps from the torch
        network of the same weights, in fp32 (an ONNX or int8 graph has no gradients to take)."""
        from c100.models.cam import cam_layer, grad_cam

        x = as_batch(images)
        probs = self.logits(x).float().softmax(1).cpu()
        if targets is None:
            p, idx = probs.topk(min(k, probs.shape[1]), 1)
        else:
            idx = torch.as_tensor(targets, dtype=torch.long).reshape(len(x), -1)
            p = probs.gather(1, idx)
        maps = torch.zeros(len(x), idx.shape[1], 32, 32)
        with self._cam_lock:
            net = self._explainer()  # on self.device: the module's copy, or on the CPU beside a session
            for i in range(0, len(x), self.batch_size):
                xb, tb = x[i:i + self.batch_size], idx[i:i + self.batch_size].to(self.device)
                where = cam_layer(net, self._inputs(xb), layer)
                for flipped in (False, True) if self.tta else (False,):
                    m = grad_cam(net, self._inputs(xb, flipped), tb, where).cpu()
                    maps[i:i + len(xb)] += m.flip(3) if flipped else m
        top = maps.amax((2, 3), keepdim=True)
        maps = torch.where(top > 0, maps / top.clamp_min(1e-12), 0)
        answers = self._answers(p, idx)
        for per_image, image_maps in zip(answers, maps.numpy(), strict=True):
            for a, m in zip(per_image, image_maps, strict=True):
                a["map"] = m
        return answers[0] if _is_single(images) else answers

    def _explainer(self) -> nn.Module:
        """The torch network Grad-CAM hooks into: not the folded copy (a flat fx graph, no layers to hook)."""
        if self._cam_net is None:
            if self.module is not None:
                self._cam_net = copy.deepcopy(self.module).eval()  # the module may be a live, training one
            elif self._torch_source is not None:
                self._cam_net = load(self._torch_source, device="cpu", backend="torch").module
            else:
                raise UserError(f"{self.source} is an ONNX graph, which has no gradients for Grad-CAM; explain the "
                                f".safetensors file or the run it was exported from")
        return self._cam_net


# -- inputs ---------------------------------------------------------------------------------------


def _is_single(images) -> bool:
    if isinstance(images, (str, Path)) or _is_pil(images):
        return True
    return isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3


def _is_pil(obj) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(obj, Image.Image)


def as_batch(images) -> torch.Tensor:
    """uint8 N x 3 x 32 x 32 from: a uint8 array or tensor (N x 3 x 32 x 32, N x 32 x 32 x 3, or one
    image without N), a path, a PIL image, or a list of any of them (paths and PIL images of any size:
    centre square, downscaled as `c100 predict` does)."""
    from c100.predict import load_image, square_array

    if isinstance(images, (str, Path)) or _is_pil(images):
        images = [images]
    if isinstance(images, (list, tuple)):
        if images and all(isinstance(i, (np.ndarray, torch.Tensor)) for i in images):
            return as_batch(np.stack([np.asarray(i) for i in images]))
        arrays = []
        for item in images:  # a mixed list: each item as it would be alone
            if isinstance(item, (np.ndarray, torch.Tensor)):
                arrays.append(as_batch(item)[0].cpu().numpy())
                continue
            try:
                arrays.append(load_image(Path(item)) if isinstance(item, (str, Path)) else square_array(item))
            except ValueError as e:
                raise UserError(f"{item}: {e}") from None
        return torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.require(images, requirements="W"))  # copies read-only arrays
    if not isinstance(images, torch.Tensor):
        raise UserError(f"cannot classify a {type(images).__name__}: pass uint8 arrays, PIL images or file paths")
    if images.ndim == 3:
        images = images[None]
    if images.ndim == 4 and images.shape[1] != 3 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)  # N x H x W x 3, as Pillow and matplotlib hold images
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, 32, 32):
        raise UserError(f"arrays must be uint8 CIFAR images, N x 3 x 32 x 32 (or N x 32 x 32 x 3), got "
                        f"{images.dtype} {tuple(images.shape)}; pass file paths or PIL images for other sizes")
    return images
