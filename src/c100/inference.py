"""One way to load a trained model for inference, whatever it was saved as.

    import c100
    model = c100.load("default")            # or a run folder, FILE.pt, FILE.safetensors, FILE.onnx
    model.predict("cat.jpg")                # [{"label": ..., "superclass": ..., "prob": ...}, ...] best first
    model.predict(["a.png", "b.png"], k=3)  # one list per image
    model.logits(uint8_images)              # N x 100 float32

A `Model` knows its classes, superclasses, input size, normalisation and how it is best run (its "model
card", card.py: the JSON sidecar an export writes), folds BatchNorm into the convolutions once, and runs
one evaluation loop: batches of uint8 32 x 32 images are normalised on the model's device, resized to the
size the network trained at last (progressive resizing may end below 32 px), and fed through it.
`evaluate`, `predict`, `serve`, `export`, `analyze`, `mosaic` and validation during training all go
through it.

Below it: card.py (the model card), networks.py (a torch network from its file), runtimes.py (ONNX and
the runtimes that run it), backends.py (which backend, its files and their cache), images.py (decoding).
Nothing below imports it; the commands (evaluate, export, predict, quantize, serve, ...) sit above it.
"""

from __future__ import annotations

import copy
import math
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn as nn

from c100 import UserError
from c100 import checkpoint as ckpt
from c100.augment import Normalize, resize
from c100.backends import backend_file, choose
from c100.card import inference_settings, input_size, load_sidecar, sidecar_path
from c100.config import TrainConfig, from_dict
from c100.device import autocast, select_device
from c100.images import as_batch, is_single
from c100.models.cam import cam_layer, grad_cam
from c100.models.fold import fold_batchnorm
from c100.networks import read_network
from c100.runtimes import OnnxSession, OpenVinoSession, Session

CHECKPOINTS = ("last", "best")


# -- where a model comes from ---------------------------------------------------------------------


def packaged_weights() -> Path:
    """The ResNet18 weights shipped inside the package (see weights/PROVENANCE.md)."""
    from importlib import resources

    return Path(str(resources.files("c100") / "weights" / "resnet18-default.safetensors"))


def resolve_source(source: str | Path, checkpoint: str = "last") -> Path:
    """The file behind a model source: 'default' (the shipped weights), a run folder (its `checkpoint`:
    last.pt or best.pt), or a .pt / .safetensors / .onnx file."""
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"--checkpoint '{checkpoint}' is not one of: {', '.join(CHECKPOINTS)}")
    if str(source) == "default":
        path = packaged_weights()
        if not path.is_file():
            raise UserError("this installation carries no default weights; pass --weights RUN or FILE")
        return path
    p = Path(source)
    if p.is_dir():
        ck = p / f"{checkpoint}.pt"
        if not ck.is_file():
            hint = " (best.pt exists only for runs with a validation split)" if checkpoint == "best" else ""
            raise UserError(f"{ck} not found{hint}; train first or point at another run")
        return ck
    if p.is_file():
        return p
    raise UserError(f"{source} is neither a run folder nor a model file; pass 'default', a folder written by "
                    f"`c100 train`, or a .pt, .safetensors or .onnx file")


# -- loading --------------------------------------------------------------------------------------


def load(source: str | Path = "default", checkpoint: str = "last", device: str = "auto",
         precision: str = "fp32", backend: str = "auto") -> Model:
    """A trained model from 'default', a run folder (its `checkpoint`: last or best), or a .pt,
    .safetensors or .onnx file, on `device` (auto: a CUDA GPU if there is one; ONNX runs on the CPU).
    `backend` (backends.py): torch (fp32, the reference), torch-bf16, onnx, int8 (ONNX Runtime),
    openvino, openvino-int8 (OpenVINO), or auto (the fastest within 0.5 points of torch fp32 as
    `c100 quantize` measured it on this CPU; torch before that)."""
    path = resolve_source(source, checkpoint)
    weights = path if path.suffix != ".onnx" else None  # what explain() runs when another runtime answers
    runtime = "onnxruntime"
    if backend != "torch" or path.suffix == ".onnx":
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
    module, card = read_network(path)
    return Model(card, module, source=path, device=device, precision=precision)


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

    card: the model card (classes, superclasses, input size, normalisation, how to run it, how it was trained);
    batch_size, channels_last and tta override how the card says to run it.
    module: the network as trained (None for ONNX); export writes its weights.
    """

    def __init__(self, card: dict, module: nn.Module | None = None, *,
                 session: Session | None = None,
                 source: Path | None = None, device: str | torch.device = "auto", precision: str = "fp32",
                 batch_size: int | None = None, channels_last: bool | None = None, tta: bool | None = None,
                 torch_source: Path | None = None):
        self.card, self.source, self.precision = card, source, precision
        settings = inference_settings(card, str(source or "the model card"))
        self.arch: str = card["arch"]
        self.classes: list[str] = card["classes"]
        self.superclasses: list[str] = card["superclasses"]
        self.fine_to_coarse: list[int] = card["fine_to_coarse"]
        self.input_size = input_size(card)
        self.normalization: str = card["normalize"]["kind"]
        # the card's evaluation batch and layout (the run's own): NHWC at batch 100 is 1.7x faster than NCHW
        # at 500 on the 2-core CPU (104 vs 62 img/s); GPU presets set a larger batch
        self.batch_size = int(batch_size or settings["batch_size"])
        self.channels_last = bool(settings["channels_last"] if channels_last is None else channels_last)
        # flip TTA, when the model was trained (and validated) with it: every prediction averages the two views
        self.tta = bool(settings["tta"] if tta is None else tta)
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
        return tops[0] if is_single(images) else tops

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
        return answers[0] if is_single(images) else answers

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
