"""What the command-line scripts share: flag types and ranges, threads, logging, and
turning errors into clear exit messages. (The detector's flags live with the detector,
in models/detector.py.)"""
import argparse
import logging
import math
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence

from utils.errors import InputError
from utils.signals import EXIT_TERMINATED, Terminated, terminate_as_interrupt
from utils.input_files import printable

logger = logging.getLogger(__name__)

_TRUE = ('true', '1', 'yes', 'y', 'on')
_FALSE = ('false', '0', 'no', 'n', 'off')


def str2bool(value: str | bool) -> bool:
    """Parse a boolean flag value: true/false, 1/0, yes/no, y/n, on/off (any case).

    The reference declares --origin_size with type=str, so '--origin_size False' gave the
    non-empty, truthy string 'False'; this parser makes the flag mean what it says.
    """
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, 1/0, yes/no), got {value!r}")


def optional_top_k(value: str | int | None) -> int:
    """An optional count: a positive int applies it; 0, a negative value or 'none' turns it
    off, as 0. (A flag left out keeps its default, None, so that a mode with a limit of its
    own, the pyramid's, can tell "not given" from "none".)"""
    if str(value).strip().lower() in ('none', 'off', ''):
        return 0
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer (or 'none'), got {value!r}") from None
    return max(n, 0)


def _number(kind, value):
    """value parsed as kind (int or float), or an ArgumentTypeError; nan and inf are refused."""
    try:
        x = kind(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if kind is float and not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return x


def number_in(kind: type[int] | type[float] = float, minimum: float | None = None, maximum: float | None = None,
              exclusive_minimum: bool = False, exclusive_maximum: bool = False,
              name: str | None = None) -> Callable[[str], int | float]:
    """An argparse type= function: a finite int or float within [minimum, maximum].

    argparse turns a refused value into one usage line naming the flag, e.g.
    "error: argument --confidence_threshold: expected a number in [0, 1], got '1.5'".

    Args:
        kind: int or float.
        minimum, maximum: the bounds (None: unbounded on that side).
        exclusive_minimum, exclusive_maximum (bool): that bound itself is refused (e.g. sizes > 0).
        name (str | None): the function's name (argparse shows it in some messages).
    """
    lo, hi = ('(' if exclusive_minimum else '['), (')' if exclusive_maximum else ']')
    if minimum is not None and maximum is not None:
        what = f"in {lo}{minimum:g}, {maximum:g}{hi}"
    elif minimum is not None:
        what = f"{'>' if exclusive_minimum else '>='} {minimum:g}"
    elif maximum is not None:
        what = f"{'<' if exclusive_maximum else '<='} {maximum:g}"
    else:
        what = ''
    noun = 'an integer' if kind is int else 'a number'

    def parse(value):
        x = _number(kind, value)
        too_low = minimum is not None and (x <= minimum if exclusive_minimum else x < minimum)
        too_high = maximum is not None and (x >= maximum if exclusive_maximum else x > maximum)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {noun} {what}, got {value!r}")
        return x

    parse.__name__ = name or f"{kind.__name__} {what}".strip()
    return parse


# The ranges shared by the scripts' flags (train.py may use them too).
probability = number_in(float, 0, 1, name='probability')                   # thresholds, ratios
positive_int = number_in(int, 0, exclusive_minimum=True, name='positive_int')          # counts, sizes
positive_float = number_in(float, 0, exclusive_minimum=True, name='positive_float')    # rates, tolerances > 0
non_negative_float = number_in(float, 0, name='non_negative_float')                   # tolerances, decays
non_negative_int = number_in(int, 0, name='non_negative_int')                         # workers, epochs


# --threads is refused above the larger of these: a fixed floor, so that a command line that
# works on one ordinary machine works on the next, and a few threads per core, for machines
# with more cores than the floor. Beyond a few per core threads only wait for each other,
# and thousands of them make a single image take many seconds (each is created and
# synchronised on every operation).
MIN_THREAD_LIMIT = 256
THREADS_PER_CORE_LIMIT = 4


def max_threads() -> int:
    """The largest --threads accepted: MIN_THREAD_LIMIT, or THREADS_PER_CORE_LIMIT per core when that is more."""
    return max(MIN_THREAD_LIMIT, THREADS_PER_CORE_LIMIT * (os.cpu_count() or 1))


def thread_count(value: str) -> int:
    """An argparse type= function for --threads: an integer in [1, max_threads()]."""
    return number_in(int, 1, max_threads(), name='thread_count')(value)


def add_threads_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--threads: CPU threads for inference (see set_threads), at most max_threads()."""
    parser.add_argument('--threads', default=None, type=thread_count,
                        help="CPU threads for the network (torch and onnxruntime); default: torch's default, "
                             "one per core. On a machine shared with other busy processes, fewer threads "
                             "than cores (e.g. --threads 1) can be many times faster")
    return parser


def set_threads(n: int | None = None) -> int | None:
    """Use n CPU threads for the network (None: leave the defaults).

    When torch is loaded, n becomes torch's intra-op thread count, and onnxruntime sessions
    made afterwards by the Detector use the same count. Without torch (the torch-free ONNX
    path) nothing is imported: n goes to the onnxruntime session as it is.
    Returns the thread count in effect: torch's when torch is loaded, else n.
    """
    if n is not None and int(n) < 1:
        raise ValueError(f"the thread count must be positive, got {n}")
    torch = sys.modules.get('torch')
    if torch is None:
        return None if n is None else int(n)
    if n is not None:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def _own_running_threads():
    """This process's threads that are running or runnable now (a library's worker threads,
    e.g. a BLAS pool that spins for a while after its first use, count as this process)."""
    running = 0
    for task in os.listdir('/proc/self/task'):
        try:
            with open(f'/proc/self/task/{task}/stat') as f:
                # The state follows the command name, which is in parentheses and may hold spaces.
                running += f.read().rpartition(')')[2].split()[0] == 'R'
        except (OSError, IndexError):
            continue
    return running


def other_busy_processes(samples: int = 8, interval: float = 0.015) -> float:
    """How many threads of other processes are keeping a core busy right now: the runnable
    tasks (/proc/stat's procs_running) less this process's own, the median of eight looks
    over a tenth of a second, so that a process starting or passing by does not count. The
    load average is used only where /proc is missing: it remembers this process's own last
    minute too. 0.0 where the system tells neither."""
    counts = []
    for k in range(samples):
        try:
            with open('/proc/stat') as f:
                total = [int(line.split()[1]) for line in f if line.startswith('procs_running')]
            counts += [max(0, n - _own_running_threads()) for n in total]
        except (OSError, ValueError, IndexError):
            break
        if k + 1 < samples:
            time.sleep(interval)
    if counts:
        return float(sorted(counts)[len(counts) // 2])
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return 0.0


# The OpenMP runtimes whose wait policy OMP_WAIT_POLICY sets (torch's wheels bring libgomp).
_OPENMP_LIBRARIES = ('libgomp', 'libiomp')


def openmp_runtime_loaded() -> bool:
    """Whether an OpenMP runtime is loaded into this process already. libgomp reads
    OMP_WAIT_POLICY once, when it is loaded (by `import torch`), not when its thread pool
    starts: set between the import and torch's first parallel operation, the variable
    changes nothing (bench/README.md, *CPU threads*). So once this is True the policy can
    no longer be chosen. Where /proc/self/maps cannot be read, 'torch is imported' stands in."""
    try:
        with open('/proc/self/maps') as f:
            return any(name in line for line in f for name in _OPENMP_LIBRARIES)
    except OSError:
        return 'torch' in sys.modules


def choose_openmp_wait_policy(busy: float | None = None) -> str:
    """Set OMP_WAIT_POLICY=PASSIVE for torch's OpenMP threads when other processes already
    keep a core busy, unless the user set a policy; returns the policy in effect.

    Eager PyTorch ends every operator at a barrier. With OpenMP's default policy the
    threads that arrive first spin there, which is fastest on an idle machine; next to
    other busy processes they take the very core the last thread is waiting for, and a
    forward pass can take many times longer. PASSIVE threads sleep at once: a little slower
    when idle, never collapsing when busy (bench/bench_threads.py measures both). The
    policy changes only how threads wait, never what they compute, so the detections are
    bit for bit the same either way; a machine that gets busy only after the start keeps
    the default (set OMP_WAIT_POLICY=PASSIVE yourself there).

    libgomp reads the variable once, when torch first loads it: this must run before the
    first `import torch`, and changes nothing afterwards (see openmp_runtime_loaded).

    Args:
        busy (float | None): other busy processes (default: other_busy_processes()).
    """
    if 'OMP_WAIT_POLICY' not in os.environ and not openmp_runtime_loaded():
        if (other_busy_processes() if busy is None else busy) >= 1:
            os.environ['OMP_WAIT_POLICY'] = 'PASSIVE'
    return os.environ.get('OMP_WAIT_POLICY', 'default').strip().upper() or 'DEFAULT'


def warn_if_cpus_busy(threads: int, busy: float | None = None) -> None:
    """Warn when other processes already keep a core busy: eager PyTorch's threads then
    wait for each other at the end of every operation (see choose_openmp_wait_policy), and
    one thread can be faster. The thread count is not changed automatically because it
    changes the last bits of the network's outputs.

    Args:
        threads (int): torch's thread count.
        busy (float | None): other busy processes (default: other_busy_processes()).
    """
    busy = other_busy_processes() if busy is None else busy
    if busy >= 1:
        logger.warning("the CPUs are busy (%.1f other busy processes): eager PyTorch's %d threads can run "
                       "several times slower next to them; --threads 1 avoids it", busy, threads)


def report_skipped(skipped: Sequence[tuple[str, str]], what: str = 'images') -> None:
    """Log the final count of skipped inputs, each with its reason."""
    if skipped:
        logger.warning("skipped %d unreadable %s:", len(skipped), what)
        for path, reason in skipped:
            logger.warning("  %s: %s", printable(path), printable(reason))
    else:
        logger.info("skipped 0 %s", what)


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message is logged (tqdm and
    test harnesses swap it), not to the stream that was current when it was made."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class PrintableFormatter(logging.Formatter):
    """A formatter that shows each message as one line: control characters and undecodable
    bytes (of a file name, say: Linux allows a newline in one) escaped by
    utils.input_files.printable. A traceback, added after the message, is left as it is."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)  # a copy: other handlers get the record as logged
        record.msg, record.args = printable(record.getMessage()), None
        return super().format(record)


def setup_logging(level: int = logging.INFO) -> None:
    """Plain messages on stderr, one line each (PrintableFormatter), for the scripts (library
    modules only create loggers)."""
    handler = _StderrHandler()
    handler.setFormatter(PrintableFormatter('%(message)s'))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def run_cli(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None, configure_logging: Callable[[], None] = setup_logging) -> int:
    """Parse argv, set up logging with configure_logging(), run main(args) and return the
    process exit status.

    Bad input (utils.errors.InputError: a missing or unwritable file, a malformed line, a
    value out of range) prints one clear line, 'error: ...', instead of a traceback, and
    gives status 1; Ctrl-C gives 130. SIGTERM (what `timeout`, `docker stop` and systemd
    send) is handled as Ctrl-C is, by the same code paths, so that the work a Ctrl-C keeps
    is kept (utils.signals), and gives 143. A reader of stdout that has gone (`detect.py ... | head`)
    stops the run quietly with 141, the status of a Unix tool stopped by SIGPIPE. Any other
    exception is a bug and keeps its traceback.
    """
    args = parser.parse_args(argv)
    configure_logging()
    try:
        with terminate_as_interrupt():
            main(args)
    except InputError as e:
        # Under torchrun every rank checks the same flags and files and fails the same way:
        # rank 0 says it once (torchrun's own summary names every rank that exited 1).
        if int(os.environ.get('WORLD_SIZE', '1')) <= 1 or os.environ.get('RANK', '0') == '0':
            print(f"error: {printable(str(e))}", file=sys.stderr)  # one line, whatever names it holds
        return 1
    except Terminated as e:
        print(f"terminated ({signal.Signals(e.signum).name})", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise
        # Python's own recipe: point stdout at /dev/null, so that flushing it at exit does
        # not raise a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    return 0


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe or socket whose reading end has closed (poll says POLLERR
    there), as opposed to a BrokenPipeError of some other pipe, which is a bug."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or stdout is not a file
        return False
