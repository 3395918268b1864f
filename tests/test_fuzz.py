"""Fuzzing the image decoders: random bytes, and valid images in every format Pillow writes here with
bytes flipped, cut off or inserted, go through decode_image and through the demo's POST /api/predict.
Every outcome must be an image or a one-line refusal: a ValueError from decode_image, a 4xx JSON
answer from the server; never another exception, never a 500.

Deterministic (derandomize: the same examples on every run, no example database written) and bounded
(max_examples) so the file runs in seconds."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from c100.images import decode_image

# Pillow warns about the corrupt files it still reads (bad EXIF, tags past the end): expected here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")


def _sample(fmt: str, size=(37, 29), mode="RGB", **kw) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


SEEDS = {
    "png": _sample("PNG"),
    "png-palette-alpha": _sample("PNG", mode="P", transparency=0),
    "png-16bit": _sample("PNG", mode="I;16"),
    "jpeg": _sample("JPEG", quality=80),
    "jpeg-progressive": _sample("JPEG", progressive=True),
    "gif": _sample("GIF", mode="P"),
    "bmp": _sample("BMP"),
    "tiff": _sample("TIFF"),
    "ppm": _sample("PPM"),
}
if features.check("webp"):
    SEEDS["webp"] = _sample("WEBP", quality=70)
    SEEDS["webp-lossless"] = _sample("WEBP", lossless=True)


@st.composite
def mutated(draw) -> bytes:
    """A valid image with 1-4 edits: a byte flipped, a run overwritten, a cut, an insertion, a deletion.
    Edits near the start hit the headers (sizes, modes, chunk lengths), where decoders are weakest."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        near_header = draw(st.booleans())
        pos = draw(st.integers(0, min(len(data) - 1, 64) if near_header else len(data) - 1))
        op = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "delete"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            run = draw(st.sampled_from([b"\x00" * 4, b"\xff" * 4, b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00"]))
            data[pos:pos + len(run)] = run
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[pos:pos + draw(st.integers(1, 32))]
        if not data:
            break
    return bytes(data)


inputs = st.one_of(st.binary(max_size=512), mutated())
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=400,
                suppress_health_check=[HealthCheck.too_slow])


def test_the_seeds_decode():
    for name, raw in SEEDS.items():
        assert decode_image(io.BytesIO(raw)).shape == (3, 32, 32), name


@FUZZ
@given(raw=inputs)
def test_decode_image_returns_an_image_or_a_one_line_value_error(raw):
    try:
        a = decode_image(io.BytesIO(raw))
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert a.shape == (3, 32, 32) and a.dtype == np.uint8


@pytest.fixture(scope="module")
def client(tiny_run):
    from starlette.testclient import TestClient

    import c100
    from c100.serve import create_app

    # raise_server_exceptions: a traceback inside the app fails the test with that traceback
    with TestClient(create_app(c100.load(tiny_run, device="cpu"), max_bytes=4096),
                    raise_server_exceptions=True) as c:
        yield c


@settings(FUZZ, max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(raw=inputs)
def test_predict_endpoint_answers_json_never_500(client, raw):
    r = client.post("/api/predict", content=raw)
    out = r.json()
    if r.status_code == 200:
        assert len(out["top"]) == 5 and {"label", "superclass", "prob"} <= set(out["top"][0])
    else:
        assert 400 <= r.status_code < 500 and out["error"] and "\n" not in out["error"], (r.status_code, out)
