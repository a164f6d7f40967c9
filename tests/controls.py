"""A RunControl for model tests: records progress, stops one job after N polls."""

from __future__ import annotations


class Control:
    """Stops `stop_index` once it has been asked more than `after` times; records progress."""

    def __init__(self, stop_index: int | None = None, after: int = 0) -> None:
        self.stop_index, self.after = stop_index, after
        self.asked: dict[int, int] = {}
        self.progress: dict[int, list[float]] = {}

    def should_stop(self, index: int) -> bool:
        self.asked[index] = self.asked.get(index, 0) + 1
        return index == self.stop_index and self.asked[index] > self.after

    def report_progress(self, index: int, fraction: float) -> None:
        self.progress.setdefault(index, []).append(fraction)
