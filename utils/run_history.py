"""A training run's per-epoch records, its best validation AP, and the metrics file.

The records live in the resumable training state, and ``<name>_metrics.jsonl`` is rewritten
from them (atomically) after every epoch. So:

- a fresh run starts an empty file: two runs into one folder never interleave their records
  (every record also carries the run's ``run_id``);
- ``--resume`` continues the records saved with the state: no gap and no duplicate, even if
  the process died after writing an epoch's record but before saving the state;
- an epoch stopped by a signal carries its running sums in the state, so its record after
  ``--resume`` covers the whole epoch (``iterations`` counts its steps).
"""
import json
import logging
import math
import os
import uuid

from utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)


def is_better(ap, best_ap):
    """Whether ap beats best_ap (None: nothing yet). Ties keep the earlier epoch; NaN never wins."""
    return ap is not None and not math.isnan(ap) and (best_ap is None or ap > best_ap)


class RunHistory:
    def __init__(self, metrics_path, run_id=None):
        self.metrics_path = metrics_path
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.records = []  # one dict per completed epoch (and epoch 0: the starting weights' AP)
        self.best = None  # {'epoch', 'setting', 'ap'}
        self._partial = None  # running sums of an epoch interrupted by a signal

    # -- validation --------------------------------------------------------------------

    def add_validation(self, epoch, result):
        """Note a validation result (see models.validation.Validator); True if it is the new best."""
        ap = result['ap'][result['key']]
        if is_better(ap, self.best and self.best['ap']):
            self.best = {'epoch': epoch, 'setting': result['key'], 'ap': ap}
            return True
        return False

    # -- records and the file ------------------------------------------------------------

    def add_record(self, record):
        record = {'run_id': self.run_id, **record}
        self.records = [r for r in self.records if r['epoch'] != record['epoch']] + [record]
        return record

    @property
    def plot_path(self):
        root, _ = os.path.splitext(self.metrics_path)
        return root + '.png'

    def write(self, plot=None):
        """Rewrite the metrics file from the records (atomically), and its PNG beside it.

        Args:
            plot (callable | None): plot(records, png_path, title=...) draws the PNG
                (train.py passes curve.plot_metrics.plot_records); None draws nothing.
        """
        atomic_write_text(self.metrics_path, ''.join(json.dumps(r) + '\n' for r in self.records))
        if plot is None:
            return
        if not self.records:
            # A fresh run: no picture of another run's curve beside this run's files.
            if os.path.exists(self.plot_path):
                os.unlink(self.plot_path)
            return
        try:
            plot(self.records, self.plot_path, title=os.path.basename(self.metrics_path))
        except Exception as e:  # a picture must never stop a training run
            logger.warning("could not plot %s: %s: %s", self.plot_path, type(e).__name__, e)

    # -- resumable state -----------------------------------------------------------------

    def state_dict(self, meters=None, iteration=None):
        """For the training state; meters (a MetricLogger) are the epoch in progress, if any."""
        state = {'run_id': self.run_id, 'records': [dict(r) for r in self.records], 'best': self.best}
        if meters is not None:
            state['partial'] = {'iteration': iteration, 'meters': {
                name: {'window': list(m.window), 'total': m.total, 'count': m.count}
                for name, m in meters.meters.items()}}
        return state

    @classmethod
    def resume(cls, metrics_path, train_state, completed_epochs):
        """The history saved in a training state (train.py's --resume). A state saved before
        histories existed keeps the metrics file's records of its completed epochs (the last
        one of each epoch)."""
        state = train_state.get('history')
        if state is None:
            history = cls(metrics_path)
            history._read_file(completed_epochs)
            return history
        history = cls(metrics_path, run_id=state.get('run_id'))
        history.records = [dict(r) for r in state.get('records', []) if r.get('epoch', 0) <= completed_epochs]
        history.best = state.get('best')
        history._partial = state.get('partial')
        return history

    def _read_file(self, completed_epochs):
        try:
            with open(self.metrics_path) as f:
                lines = f.read().splitlines()
        except OSError:
            return
        by_epoch = {}
        for line in lines:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and isinstance(r.get('epoch'), int) and r['epoch'] <= completed_epochs:
                by_epoch[r['epoch']] = r
        self.records = [by_epoch[e] for e in sorted(by_epoch)]

    def restore_partial(self, meters, iteration):
        """Put back the running sums of the epoch that a signal interrupted at this iteration;
        False if the state holds none for it (then the record covers the steps from here)."""
        partial, self._partial = self._partial, None
        if not partial or partial.get('iteration') != iteration:
            return False
        for name, saved in partial['meters'].items():
            meters.update(**{name: 0.0})  # creates the meter
            m = meters[name]
            m.reset()
            m.window.extend(saved['window'])
            m.total, m.count = saved['total'], saved['count']
        return True
