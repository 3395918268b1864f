"""One Markdown file and one self-contained HTML page per run: config, environment, curves, test
metrics, errors and calibration, and a thumbnail of the prediction mosaic."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import yaml
from PIL import Image

from c100 import UserError
from c100.analysis import analyze, pairs_markdown
from c100.checkpoint import atomic_write_text
from c100.evaluate import load_predictions
from c100.explain import mistakes_picture
from c100.inference import load
from c100.mosaic import draw_mosaic, save_png
from c100.plots import plot_curves


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def build_report(run: str | Path, split: str = "test", checkpoint: str = "last", data_dir: str | None = None,
                 device: str = "auto", images: str | Path | None = None) -> tuple[Path, Path]:
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a run folder (no config.yaml); pass a folder written by `c100 train`")
    out = run / "report"
    out.mkdir(exist_ok=True)
    curves = plot_curves(run, out / "curves")[0]
    p = load_predictions(run, split, checkpoint, data_dir, device, images)
    split = f"{images} images" if images else split
    summary = analyze(p, out)
    mosaic = draw_mosaic(p, list(range(min(20, len(p.meta.fine_names)))), per_row=16, scale=1)
    thumb = save_png(mosaic, out / "mosaic_thumbnail.png")
    why = save_png(mistakes_picture(load(run, checkpoint, device, backend="torch"), p), out / "mistakes_explained.png")
    r = p.result
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    env = _read_json(run / "env.json")

    metrics = [("top-1", f"{r['top1']:.2%}"), ("top-5", f"{r['top5']:.2%}"),
               ("superclass", f"{r['superclass']:.2%}"), ("loss", f"{r['loss']:.4f}"),
               ("expected calibration error", f"{summary['ece']:.2%}"), ("images", str(r["n"])),
               ("checkpoint", f"{Path(r['checkpoint']).name} (epoch {r['epoch']}, {r['weights']} weights)")]
    sections: list[tuple[str, str, object]] = [
        ("Result", "table", metrics),
        ("Training curves", "image", curves),
        ("Superclass confusion", "image", out / summary["files"]["superclass_confusion"]),
        ("Most confused pairs", "markdown", pairs_markdown(summary["confused_pairs"][:10])),
        ("Examples of the most confused pairs", "image", out / summary["files"]["confused_pairs"]),
        ("The most confident mistakes", "image", out / summary["files"]["confident_mistakes"]),
        ("Where the model looked in them", "image", why),
        ("Calibration", "image", out / summary["files"]["calibration"]),
        ("Per-class accuracy", "image", out / summary["files"]["per_class"]),
        ("Predictions of the first 20 classes (full picture: `c100 mosaic`)", "image", thumb),
        ("Config", "code", yaml.safe_dump(cfg, sort_keys=False)),
        ("Environment", "table", [(k, str(v)) for k, v in env.items()]),
    ]
    title = f"{run.resolve().name}: {cfg.get('model')} on CIFAR-100, {split} top-1 {r['top1']:.2%}"
    md, page = _markdown(title, sections, out), _html(title, sections)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", page)
    return out / "report.md", out / "report.html"


def _markdown(title: str, sections, out: Path) -> str:
    parts = [f"# {title}\n"]
    for head, kind, body in sections:
        parts.append(f"## {head}\n")
        if kind == "table":
            parts.append("| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in body) + "\n")
        elif kind == "image":
            parts.append(f"![{head}]({Path(body).relative_to(out)})\n")
        elif kind == "code":
            parts.append(f"```yaml\n{body}```\n")
        else:
            parts.append(body + "\n")
    return "\n".join(parts)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#111827}
table{border-collapse:collapse}td,th{border:1px solid #e5e7eb;padding:4px 10px;text-align:left}
img{max-width:100%;border:1px solid #e5e7eb}pre{background:#f3f4f6;padding:1em;overflow:auto}
h2{margin-top:1.6em;border-bottom:1px solid #e5e7eb}"""


def _data_uri(path: Path) -> str:
    with Image.open(path) as im:
        im.verify()  # only embed what is really a PNG
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _html(title: str, sections) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style>"
             f"</head><body><h1>{e(title)}</h1>"]
    for head, kind, body in sections:
        parts.append(f"<h2>{e(head)}</h2>")
        if kind == "table":
            parts.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in body) + "</table>")
        elif kind == "image":
            parts.append(f"<img alt='{e(head)}' src='{_data_uri(Path(body))}'>")
        elif kind == "code":
            parts.append(f"<pre>{e(body)}</pre>")
        else:  # a Markdown table: render its rows
            rows = [r.strip("|").split("|") for r in body.splitlines() if r and not r.startswith("|---")]
            parts.append("<table>" + "".join("<tr>" + "".join(f"<td>{e(c.strip())}</td>" for c in row) + "</tr>"
                                             for row in rows) + "</table>")
    return "\n".join(parts) + "</body></html>\n"
