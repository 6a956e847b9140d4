"""Plot a training run's metrics file (``<name>_metrics.jsonl`` written by train.py) as one PNG.

    python -m curve.plot_metrics weights/mobilenet0.25_metrics.jsonl -o curve/run.png

Three panels over the epochs: the loss components (log scale), the learning rate (log
scale), and the validation AP of every setting with the best epoch marked (the epoch
train.py kept as ``<name>_best.pth``: the first maximum of the hard, or the single, AP).
train.py refreshes ``<name>_metrics.png`` beside the checkpoints after every epoch.
"""
import argparse
import json
import math
from pathlib import Path


from utils.atomic import atomic_write
from utils.cli import run_cli
from utils.errors import InputError
from utils.input_files import open_text
from utils.outputs import RunOutputs

LOSSES = (('loss', 'total (weighted sum)'), ('loc', 'box (Loc)'), ('cla', 'class (Cla)'), ('landm', 'landmarks (Landm)'))
SETTING_COLOURS = {'easy': 'tab:green', 'medium': 'tab:orange', 'hard': 'tab:red', 'all': 'tab:blue'}
# The fields of a record that are plotted or compared: numbers (or null) when present.
NUMBER_FIELDS = ('loss', 'loc', 'cla', 'landm', 'lr', 'step_time', 'data_time')


def read_records(path):
    """The records of a metrics file, one per epoch (a later line for an epoch replaces an
    earlier one), sorted by epoch. Raises ValueError naming the file and line."""
    by_epoch = {}
    with open_text(path, 'metrics file') as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise InputError(f"{path}:{lineno}: not a JSON record: {line[:80]!r}") from None
            if not isinstance(record, dict) or not isinstance(record.get('epoch'), int):
                raise InputError(f"{path}:{lineno}: a record without an integer 'epoch': {line[:80]!r}")
            _check_values(record, f"{path}:{lineno}")
            by_epoch[record['epoch']] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_values(record, where):
    """Raise InputError (naming where: file and line) unless the plotted fields hold numbers
    (or null) and 'val' maps settings to APs."""
    for key in NUMBER_FIELDS:
        value = record.get(key)
        if value is not None and not _is_number(value):
            raise InputError(f"{where}: {key!r} must be a number, got {value!r}")
    val = record.get('val')
    if val is None:
        return
    if not isinstance(val, dict) or not all(v is None or _is_number(v) for v in val.values()):
        raise InputError(f"{where}: 'val' must be an object of APs by setting, e.g. {{\"hard\": 0.61}}, "
                         f"got {val!r}")
    key = record.get('val_key')
    if key is not None and key not in val:
        raise InputError(f"{where}: 'val_key' {key!r} must be one of the settings of 'val' {sorted(val)}")


def best_epoch(records):
    """(epoch, setting, AP) of the best validation, as train.py chooses it, or None."""
    best = None
    for r in records:
        val = r.get('val')
        if not val:
            continue
        key = r.get('val_key') or ('hard' if 'hard' in val else next(iter(val)))
        ap = val.get(key)
        if ap is not None and not math.isnan(ap) and (best is None or ap > best[2]):
            best = (r['epoch'], key, ap)
    return best


def _positive(values):
    return [v for v in values if v is not None and v > 0]


def plot_records(records, path, title=None):
    """Draw records into the PNG at path (written atomically); returns {'best': (epoch,
    setting, AP) or None, 'epochs': the epochs with losses, 'val_epochs': with an AP}."""
    # A bare Figure renders with the Agg canvas: no pyplot, no GUI backend, no global state.
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    fig = Figure(figsize=(8, 9))
    ax_loss, ax_lr, ax_ap = fig.subplots(3, 1, sharex=True, gridspec_kw={'height_ratios': [3, 1.4, 3]})
    plain = FuncFormatter(lambda v, _: f'{v:g}')  # 20 rather than 2 x 10^1 on log axes
    train = [r for r in records if 'loss' in r]
    epochs = [r['epoch'] for r in train]

    for key, label in LOSSES:
        ax_loss.plot(epochs, [r.get(key) for r in train], marker='.', label=label)
    if _positive(r.get(k) for r in train for k, _ in LOSSES):
        ax_loss.set_yscale('log')
        ax_loss.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax_loss.yaxis.set_major_formatter(plain)
        ax_loss.yaxis.set_minor_formatter(NullFormatter())
    partial = [r['epoch'] for r in train if r.get('partial')]
    if partial:
        ax_loss.plot(partial, [r['loss'] for r in train if r.get('partial')], 'x', color='black',
                     label='epoch not complete')
    ax_loss.set(ylabel='mean loss per epoch', title=title or 'training loss')
    ax_loss.grid(True, which='both', linestyle=':')
    ax_loss.legend(loc='upper right', fontsize='small')

    lr_epochs = [r['epoch'] for r in train if r.get('lr') is not None]
    ax_lr.step(lr_epochs, [r['lr'] for r in train if r.get('lr') is not None], where='mid', color='tab:purple',
               marker='.', label='learning rate')
    lrs = _positive(r.get('lr') for r in train)
    if lrs:
        # Limits first: a single rate would otherwise give an empty range to the log scale.
        ax_lr.set_ylim(min(lrs) / 2, max(lrs) * 2)
        ax_lr.set_yscale('log')
    ax_lr.set(ylabel='learning rate')
    ax_lr.grid(True, which='both', linestyle=':')
    ax_lr.legend(loc='upper right', fontsize='small')

    val = [r for r in records if r.get('val')]
    settings = list(dict.fromkeys(s for r in val for s in r['val']))
    best = best_epoch(records)
    for s in settings:
        pts = [(r['epoch'], r['val'][s]) for r in val if s in r['val']]
        ax_ap.plot([e for e, _ in pts], [a for _, a in pts], marker='o', color=SETTING_COLOURS.get(s),
                   label=f'{s} AP' if s != 'all' else 'AP')
        if best is not None and s == best[1]:  # the values of the curve that picks the best
            for e, a in pts:
                ax_ap.annotate(f'{a:.3f}', (e, a), textcoords='offset points', xytext=(0, 10), ha='center',
                               fontsize='x-small', color=SETTING_COLOURS.get(s))
    if best is not None:
        e, s, ap = best
        ax_ap.plot([e], [ap], marker='*', markersize=18, color='gold', markeredgecolor='black', linestyle='none',
                   label=f'best: epoch {e}, {s} AP {ap:.3f}' if s != 'all' else f'best: epoch {e}, AP {ap:.3f}',
                   zorder=5)
        ax_ap.axvline(e, color='grey', linestyle='--', linewidth=1)
    if not val:
        ax_ap.text(0.5, 0.5, 'no validation in this run (train.py --val_dataset)', ha='center', va='center',
                   transform=ax_ap.transAxes, color='grey')
    else:
        ax_ap.legend(loc='upper left', fontsize='small')
    ax_ap.set(ylabel='validation AP', xlabel='epoch', ylim=(0, 1))
    ax_ap.grid(True, linestyle=':')
    ax_ap.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    all_epochs = [r['epoch'] for r in records]
    if all_epochs:
        ax_ap.set_xlim(min(all_epochs) - 0.5, max(all_epochs) + 0.5)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=80))
    return {'best': best, 'epochs': epochs, 'val_epochs': [r['epoch'] for r in val]}


def get_args_parser():
    parser = argparse.ArgumentParser(description="Plot train.py's metrics file (loss, LR, validation AP) as a PNG.")
    parser.add_argument('metrics', help='a <name>_metrics.jsonl written by train.py')
    parser.add_argument('-o', '--output', default=None, help='the PNG to write (default: beside the metrics, .png)')
    parser.add_argument('--title', default=None, help='title of the plot (default: the metrics file name)')
    return parser


def main(args):
    output = args.output or str(Path(args.metrics).with_suffix('.png'))
    outputs = RunOutputs()  # checked before any work: never over the metrics it plots
    outputs.reads('', args.metrics, 'the metrics file')
    outputs.file('-o', output, what='the plot')
    outputs.check()
    records = read_records(args.metrics)
    if not records:
        raise InputError(f"{args.metrics} holds no records")
    result = plot_records(records, output, title=args.title or Path(args.metrics).name)
    best = result['best']
    print(f"wrote {output}: {len(result['epochs'])} epochs"
          + (f", best epoch {best[0]} ({best[1]} AP {best[2]:.4f})" if best else ", no validation"))
    return result


if __name__ == '__main__':
    raise SystemExit(run_cli(main, get_args_parser()))
