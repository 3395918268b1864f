"""Micro-batching for the web demo: requests that arrive together share one forward pass.

A ResNet18 forward pass on a CPU costs far less per image at batch 16 than at batch 1 (the matrix
products get wide enough to use the cores), so one worker thread takes every image waiting in the
queue, up to `max_batch`, runs them as one batch, and hands each request its own answer. Nothing
waits on purpose: while one batch runs, the next requests queue up and form the next batch, so a
lone request is answered at batch-1 latency and a crowd at batch throughput.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np


class MicroBatcher:
    def __init__(self, model, k: int = 5, max_batch: int = 32):
        self.model, self.k, self.max_batch = model, k, max_batch
        self.queue: queue.Queue = queue.Queue()
        self.batches = 0  # forward passes run, and images through them: the mean batch is images / batches
        self.images = 0
        self.thread = threading.Thread(target=self._run, name="c100-batcher", daemon=True)
        self.thread.start()

    def submit(self, image: np.ndarray) -> Future:
        """One uint8 3 x 32 x 32 image; the future's result is its top-k list."""
        future: Future = Future()
        self.queue.put((image, future))
        return future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=5)

    def _take(self) -> list | None:
        first = self.queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            futures = [f for _, f in batch if f.set_running_or_notify_cancel()]
            images = [a for a, f in batch if f.running()]
            if not images:
                continue
            try:
                tops = self.model.predict(np.stack(images), self.k)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error, the thread lives on
                for f in futures:
                    f.set_exception(e)
                continue
            self.batches, self.images = self.batches + 1, self.images + len(images)
            for f, top in zip(futures, tops, strict=True):
                f.set_result(top)
