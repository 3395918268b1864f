"""The model card: what a user of a network needs besides its weights (classes, superclasses, input size,
normalisation, how to run it, how it was trained and what it measured). Every export writes it as a JSON
sidecar (FILE.json beside FILE); a training checkpoint's card is made from what the checkpoint holds.

Like timm's pretrained config, the card carries the settings a model is best run with ("inference":
evaluation batch, channels-last layout, flip TTA), so that whoever loads it need not read them out of
the training config. Cards written before that section existed fall back to the training config."""

from __future__ import annotations

import json
from pathlib import Path

from c100 import UserError
from c100 import checkpoint as ckpt
from c100.config import TrainConfig, from_dict
from c100.data import MEAN, STD

CARD_FORMAT = "c100-export-1"


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
        "inference": {"batch_size": cfg.eval_batch_size, "channels_last": cfg.channels_last, "tta": cfg.tta},
        "classes": classes,
        "superclasses": superclasses,
        "fine_to_coarse": fine_to_coarse,
        "weights": weights,
        "trained": {"epochs": epochs, "config": cfg.to_dict(), "environment": environment},
        "accuracy": accuracy or {},  # what `c100 evaluate` measured, by split
    }


def inference_settings(card: dict, source: str = "the model card") -> dict:
    """batch_size, channels_last and tta as the card's "inference" section says; each one it lacks (every
    one, on a card written before the section existed) from the training config, which held them then."""
    trained = card.get("trained", {}).get("config") or {}
    settings = {"batch_size": int(trained.get("eval_batch_size") or 100),
                "channels_last": bool(trained.get("channels_last", True)), "tta": bool(trained.get("tta", False))}
    declared = card.get("inference") or {}
    if not isinstance(declared, dict):
        raise UserError(f"{source}: 'inference' must be a mapping of batch_size, channels_last and tta; export "
                        f"the model again (or fix the file)")
    for key, value in declared.items():
        if key not in settings:
            continue  # a setting a later version added: this one runs the model without it
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1 if key == "batch_size"
              else isinstance(value, bool))
        if not ok:
            kind = "a positive whole number" if key == "batch_size" else "true or false"
            raise UserError(f"{source}: 'inference.{key}' must be {kind}, got {value!r}; export the model again "
                            f"(or fix the file)")
        settings[key] = value
    return settings


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
