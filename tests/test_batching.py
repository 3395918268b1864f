"""The web demo's micro-batcher: requests that arrive together share one forward pass, and each gets
its own answer."""

import threading

import numpy as np
import pytest

from c100.batching import MicroBatcher


class SlowModel:
    """Answers with each image's first pixel as its label; the first call waits until released, so the
    test can pile requests up behind it."""

    def __init__(self):
        self.release, self.calls = threading.Event(), []

    def predict(self, images, k):
        if not self.calls:
            self.release.wait(10)
        self.calls.append(len(images))
        if (images[:, 0, 0, 0] == 255).any():
            raise ValueError("bad image in the batch")
        return [[{"label": str(int(a[0, 0, 0])), "prob": 1.0}][:k] for a in images]


def _image(v: int) -> np.ndarray:
    return np.full((3, 32, 32), v, np.uint8)


def test_requests_that_wait_together_share_one_pass_and_get_their_own_answers():
    model = SlowModel()
    batcher = MicroBatcher(model, k=1, max_batch=8)
    first = batcher.submit(_image(0))
    while not model.calls and not first.running():  # the worker took the first request and waits in the model
        pass
    rest = [batcher.submit(_image(v)) for v in range(1, 12)]
    model.release.set()
    assert first.result(10) == [{"label": "0", "prob": 1.0}]
    assert [f.result(10)[0]["label"] for f in rest] == [str(v) for v in range(1, 12)]
    assert model.calls == [1, 8, 3]  # 11 waiting requests: a full batch of 8, then the 3 left
    assert (batcher.batches, batcher.images) == (3, 12)
    batcher.close()
    assert not batcher.thread.is_alive()


def test_a_failing_batch_fails_its_requests_and_the_worker_lives_on():
    model = SlowModel()
    model.release.set()
    batcher = MicroBatcher(model, k=1)
    with pytest.raises(ValueError, match="bad image in the batch"):
        batcher.submit(_image(255)).result(10)
    assert batcher.submit(_image(7)).result(10)[0]["label"] == "7"
    batcher.close()
