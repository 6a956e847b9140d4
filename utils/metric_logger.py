"""Running statistics for training logs (step time, data time, losses)."""
from collections import deque
import statistics


class SmoothedValue(object):
    """Track a series of values: a sliding window for smoothed readings (median, avg)
    and running totals for the mean since the last reset (global_avg)."""

    def __init__(self, window_size=20):
        self.window = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0

    def update(self, value, n=1):
        self.window.append(value)
        self.total += value * n
        self.count += n

    def reset(self):
        self.window.clear()
        self.total = 0.0
        self.count = 0

    @property
    def median(self):
        return statistics.median(self.window) if self.window else float('nan')

    @property
    def avg(self):
        return sum(self.window) / len(self.window) if self.window else float('nan')

    @property
    def global_avg(self):
        return self.total / self.count if self.count else float('nan')

    @property
    def value(self):
        return self.window[-1] if self.window else float('nan')


class MetricLogger(object):
    """A named set of SmoothedValues: meters.update(loss=0.3, data_time=0.01)."""

    def __init__(self, window_size=20):
        self.window_size = window_size
        self.meters = {}

    def update(self, **values):
        for name, value in values.items():
            self.meters.setdefault(name, SmoothedValue(self.window_size)).update(float(value))

    def __getitem__(self, name):
        return self.meters[name]

    def reset(self):
        for meter in self.meters.values():
            meter.reset()

    def global_avgs(self):
        """{name: mean since the last reset}."""
        return {name: meter.global_avg for name, meter in self.meters.items()}
