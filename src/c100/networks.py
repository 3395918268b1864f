"""The torch network stored in a file, with its model card: a training checkpoint (its EMA weights when it
kept them) or a .safetensors export beside its sidecar. `inference.load` builds its torch models from here,
and backends.py its ONNX files, without going back through `load`."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from safetensors import SafetensorError, safe_open

from c100 import UserError
from c100 import checkpoint as ckpt
from c100.card import checkpoint_card, load_sidecar, sidecar_path
from c100.models import create_model


def read_network(path: Path) -> tuple[nn.Module, dict]:
    """The network of a .safetensors file or a training checkpoint (fp32, eval mode, on the CPU) and its
    card, once the card is checked."""
    if path.suffix == ".safetensors":
        card = load_sidecar(path)
        return load_safetensors(path, card), card
    state = read_checkpoint(path)
    card = checkpoint_card(state, path)
    ckpt.check_card(card, str(path))
    module = create_model(card["arch"], card["num_classes"])
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    ckpt.load_weights(module, weights, str(path), card["arch"],
                      f" with {card['num_classes']} classes, as the checkpoint says")
    return module.eval(), card


def read_checkpoint(path: Path) -> dict:
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
