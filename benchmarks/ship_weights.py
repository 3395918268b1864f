"""The one rule for the shipped weights, applied: a candidate (a run folder, .pt or .safetensors, from a
CPU or a GPU) replaces src/c100/weights/resnet18-default.safetensors only if the file that would ship
(fp16 safetensors, exported now) scores at least 3 points above the shipped file on the test set, both
measured here through the reference torch fp32 path. Each replacement adds ~22 MB to the history, so
it is also the last step of a record, not a habit: without --apply it only measures and says.

    python benchmarks/ship_weights.py benchmarks/runs/gpu-best-s0 --data-dir data            # measure
    python benchmarks/ship_weights.py benchmarks/runs/gpu-best-s0 --data-dir data --apply    # and ship

Then rewrite src/c100/weights/PROVENANCE.md (recipe, command, hardware, time, code, date, figure) and
rerun `python benchmarks/remeasure_shipped.py --data-dir data`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from c100 import UserError, checkpoint
from c100.card import load_sidecar
from c100.evaluate import evaluate
from c100.export import export
from c100.inference import packaged_weights

MARGIN = 0.03  # test top-1, as a fraction: the rule's 3 points


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("candidate", help="run folder, .pt or .safetensors of a ResNet18 trained on CIFAR-100")
    ap.add_argument("--checkpoint", default="last", help="of a run folder: last (the rule's final model) | best")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--apply", action="store_true", help="replace the shipped weights if the rule allows it")
    ap.add_argument("--shipped", default=str(packaged_weights()), help=argparse.SUPPRESS)  # tests: a copy
    ap.add_argument("--margin", type=float, default=MARGIN, help=argparse.SUPPRESS)  # tests: either outcome
    args = ap.parse_args()
    shipped = Path(args.shipped)
    with tempfile.TemporaryDirectory() as tmp:
        file, side = export(args.candidate, "safetensors", args.checkpoint, out=Path(tmp) / shipped.name, half=True)
        card = load_sidecar(file)
        if card["arch"] != "resnet18":  # before reading the test set
            raise UserError(f"the shipped model is a ResNet18; {args.candidate} is a {card['arch']}")
        scores, results = {}, {}
        for what, source in (("candidate", file), ("shipped", shipped)):
            r = results[what] = evaluate(source, "test", data_dir=args.data_dir, device="cpu", backend="torch")
            scores[what] = r["top1"]
            print(f"{what:<9} {source}: test top-1 {r['top1']:.2%} (torch fp32, {r['n']} images)", flush=True)
        gain = scores["candidate"] - scores["shipped"]
        ok = gain >= args.margin
        print(f"gain {100 * gain:+.2f} points: {'meets' if ok else 'misses'} the rule (>= {100 * args.margin:.0f})")
        if ok and args.apply:
            # the card says what this very file scored (`c100 evaluate` prints it as "recorded at export")
            card["accuracy"] = {"test": {k: results["candidate"][k] for k in ("top1", "top5", "superclass", "n")}}
            checkpoint.atomic_write_json(side, card)
            # each file whole or not at all; a crash between the two: `git checkout src/c100/weights`
            for src in (file, side):
                checkpoint.atomic_write_bytes(shipped.with_name(src.name), src.read_bytes())
            print(f"shipped: {shipped} (+ {shipped.name}.json); now rewrite {shipped.parent / 'PROVENANCE.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserError as e:
        raise SystemExit(f"ship_weights.py: error: {e}") from None
