"""Where a run writes: every output of every script and tool checked in one place, before any work.

A script names what it reads and what it will write, then calls check():

    outputs = RunOutputs()
    outputs.reads('--image', files, 'the input image')
    outputs.folder('--output', args.output)
    for f, out in zip(files, out_paths):
        outputs.file('--output', out, given=args.output, what=f"the annotated copy of {f}", source=f)
    outputs.file('--json', args.json, stream=True)
    outputs.check()

check() raises InputError, one line naming the flag, the path and what would be lost, for:

- an output that is, or resolves to (a symbolic link, a hard link, '..', a relative path
  for an absolute one), one of the run's inputs, or another of its own outputs;
- a folder, a device, a FIFO or a socket where a file is meant, and a file where a folder
  is meant (a stream is accepted only by outputs declared with stream=True: `-`,
  /dev/stdout, /dev/stderr, a character device such as /dev/null, or a FIFO, each
  written in place by utils.atomic);
- a location where no file can be created (utils.atomic.check_writable's probe);
- a numbered family of outputs (face crops, <stem>_<k>.jpg, k known only after the
  detection) whose names an input or another output already has.

Files are compared by what they are (device and inode) once they exist, and by where they
would be created (their folder's real path) before.
"""
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from utils.atomic import check_writable, stream_kind, write_target
from utils.errors import InputError
from utils.input_files import file_type, printable


@dataclass
class _Entry:
    flag: str  # the flag that names it, e.g. '--json'
    given: str  # the flag's value (an output folder, for a file made in it)
    path: str  # the file itself
    what: str | None = None  # what it holds, e.g. 'the annotated copy of a.jpg'
    source: str | None = None  # the input it is made from (two inputs with one output: "rename one")
    may_replace: tuple[str, ...] = ()  # input flags this output is meant to replace (see RunOutputs.file)
    stream: bool = False  # it may be a stream, written in place
    key: tuple | None = None  # (st_dev, st_ino) of an existing file, else ('at', where it would be created)
    is_stream: bool = False  # it is one (set by the check)

    @property
    def label(self) -> str:
        return f"{self.flag} {printable(self.given)}"


@dataclass
class _Family:
    """Outputs named <stem><suffix>, suffix a pattern (e.g. _<k>.jpg), one stem per source."""
    flag: str
    given: str
    suffix: re.Pattern
    shown: str  # the suffix as the messages show it, e.g. '_<k>.jpg'
    stems: dict = field(default_factory=dict)  # real folder -> {stem name: (stem path, source)}

    @property
    def label(self) -> str:
        return f"{self.flag} {printable(self.given)}"


def _real_folder(path: str, cache: dict) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    real = cache.get(folder)
    if real is None:
        real = cache[folder] = os.path.realpath(folder)
    return real


def _location(path: str, cache: dict) -> str:
    """Where path's directory entry is: its folder's real path and its own name (a link not followed)."""
    return os.path.join(_real_folder(path, cache), os.path.basename(os.path.abspath(path)))


def _identity(path: str, cache: dict) -> tuple[os.stat_result | None, tuple]:
    """(os.stat of path or None, key): two paths with one key are one file. An existing file
    is its (device, inode), links followed; a missing one is where it would be created."""
    try:
        st = os.stat(path)
        return st, (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        pass
    if os.path.islink(path):  # a link to a file not made yet: the write creates its target
        return None, ('at', os.path.realpath(path))
    return None, ('at', _location(path, cache))


def _input_name(entry: _Entry) -> str:
    """An input as a message names it: 'the weights w.pth (-m)'."""
    return f"{entry.what} {printable(entry.path)}" + (f" ({entry.flag})" if entry.flag else '')


def _how_same(path: str, other: str) -> str:
    """How two paths of one file differ, for a message ('' when they are the same path)."""
    if os.path.abspath(path) == os.path.abspath(other):
        return ''
    if os.path.realpath(path) == os.path.realpath(other):
        return f" ({printable(path)} leads to it)"
    return f" ({printable(path)} is a hard link to it)"


class RunOutputs:
    """The inputs and outputs of one run, checked together by check() (see the module's doc)."""

    def __init__(self) -> None:
        self._inputs: list[_Entry] = []
        self._files: list[_Entry] = []
        self._folders: list[_Entry] = []
        self._families: list[_Family] = []
        self._real = {}  # folder -> its real path, shared by every lookup

    # -- what the run reads and writes --------------------------------------------------------

    def reads(self, flag: str, paths: str | os.PathLike | Iterable[str | os.PathLike] | None, what: str) -> None:
        """The run reads paths (one or many; None: nothing), given by flag ('' for a positional
        argument); what names them in a message: "would overwrite {what} {path} ({flag})",
        e.g. 'the weights'. Missing inputs are not this check's business (their reader says so)."""
        if paths is None:
            return
        for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
            self._inputs.append(_Entry(flag, os.fspath(path), os.fspath(path), what))

    def file(self, flag: str, path: str | os.PathLike | None, *, given: str | os.PathLike | None = None,
             what: str | None = None, source: str | None = None, stream: bool = False,
             may_replace: Iterable[str] = ()) -> None:
        """The run writes the file path (None: nothing).

        Args:
            flag: the flag that names it.
            given: the flag's value when path is made from it (a file in an output folder).
            what: what the file holds, for the messages ('the annotated copy of a.jpg').
            source: the input it is made from: two inputs with one output are told to rename one.
            stream: the output may be a stream, written in place: `-` and /dev/stdout (stdout),
                /dev/stderr, a character device (/dev/null) or a FIFO.
            may_replace: flags of inputs this output is meant to replace, as a resumed
                training replaces the state it was resumed from.
        """
        if path is None:
            return
        path = os.fspath(path)
        self._files.append(_Entry(flag, os.fspath(given) if given is not None else path, path, what, source,
                                  tuple(may_replace), stream))

    def folder(self, flag: str, path: str | os.PathLike | None) -> None:
        """The run writes files into the folder path (made if missing; None: nothing)."""
        if path is not None:
            self._folders.append(_Entry(flag, os.fspath(path), os.fspath(path)))

    def numbered(self, flag: str, given: str | os.PathLike, stems: Iterable[tuple[str, str]],
                 suffix: str = r'_\d+\.jpg', shown: str = '_<k>.jpg') -> None:
        """The run writes files <stem><suffix> for each (stem path, source), the numbers in suffix
        known only during the run (face crops: <stem>_<k>.jpg, k the detection's index).

        Raises:
            InputError: two sources have one stem (a.jpg and a.png: their crops would overwrite each other).
        """
        family = _Family(flag, os.fspath(given), re.compile(r'(.*)' + suffix + r'\Z', re.DOTALL), shown)
        for stem, source in stems:
            folder, name = _real_folder(stem, self._real), os.path.basename(stem)
            earlier = family.stems.setdefault(folder, {}).setdefault(name, (stem, source))
            if earlier[1] != source:
                raise InputError(f"{printable(earlier[1])} and {printable(source)} would both be written to "
                                 f"{printable(stem)}{shown} ({family.label}): rename one of them")
        self._families.append(family)

    # -- the check ------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise InputError for the first output that cannot be written, or would destroy an
        input or another output (see the module's doc); nothing is created."""
        folders = [self._check_folder(f) for f in self._folders]
        inputs = {}
        for entry in self._inputs:
            st, entry.key = _identity(entry.path, self._real)
            if st is not None and stat.S_ISREG(st.st_mode):
                inputs.setdefault(entry.key, entry)
        written, probed = {}, set()
        for out in self._files:
            self._check_file_type(out)
            if out.is_stream:
                continue  # written in place, never over a file
            victim = inputs.get(out.key)
            if victim is not None and victim.flag not in out.may_replace:
                raise InputError(self._over_input(out, victim))
            earlier = written.setdefault(out.key, out)
            if earlier is not out:
                raise InputError(self._clash(earlier, out))
            if out.key[0] == 'at':  # not there yet: no output folder may be it, or below it
                for folder, real in folders:
                    if out.key[1] == real or real.startswith(out.key[1] + os.sep):
                        where = 'is' if out.key[1] == real else 'holds'
                        raise InputError(f"{out.label} would be a file where {folder.label} needs a folder (it "
                                         f"{where} {printable(folder.path)}): choose another {out.flag}")
            # Its folder must take new files (the temporary file of the atomic write): one
            # probe per folder, not one per file of a results folder.
            nearest = os.path.dirname(write_target(out.path))
            while not os.path.lexists(nearest) and os.path.dirname(nearest) != nearest:
                nearest = os.path.dirname(nearest)  # the folders on the way would be made
            if nearest not in probed:
                check_writable(out.path, out.flag)
                probed.add(nearest)
        for family in self._families:
            self._check_family(family, inputs)

    def _check_folder(self, entry):
        """The folder's own checks; returns (entry, its real path)."""
        try:
            st = os.stat(entry.path)
        except (OSError, ValueError):
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            kind = 'a file' if stat.S_ISREG(st.st_mode) else file_type(st.st_mode)
            raise InputError(f"cannot write {entry.label}: it is {kind}, not a folder")
        check_writable(entry.path, entry.flag, folder=True)
        return entry, os.path.realpath(entry.path)

    def _check_file_type(self, out):
        """Check what is at out.path; sets out.key, or out.is_stream for a stream it accepts."""
        kind = stream_kind(out.path)
        subject = 'it' if out.given == out.path else printable(out.path)
        if kind is not None:
            if out.stream:
                out.is_stream = True
                return
            if kind in ('stdout', 'stderr'):
                raise InputError(f"cannot write {out.label}: {out.flag} writes a file, not {kind}: give it a "
                                 f"file name")
            raise InputError(f"cannot write {out.label}: {subject} is {kind}, not a file")
        st, out.key = _identity(out.path, self._real)
        if st is not None and not stat.S_ISREG(st.st_mode):
            holds = f" ({out.what} goes there)" if out.what else ''
            raise InputError(f"cannot write {out.label}: {subject} is {file_type(st.st_mode)}, not a file{holds}")

    @staticmethod
    def _over_input(out, victim, what=None, path=None):
        """The message for out (an output, or a family with what and path given) over an input."""
        what = what or out.what
        path = path or out.path
        return (f"{out.label} would overwrite {_input_name(victim)}{f' with {what}' if what else ''}"
                f"{_how_same(path, victim.path)}: choose another {out.flag}")

    @staticmethod
    def _clash(earlier, out):
        if earlier.flag == out.flag and earlier.source is not None and out.source is not None:
            return (f"{printable(earlier.source)} and {printable(out.source)} would both be written to "
                    f"{printable(out.path)} ({out.label}): rename one of them")
        held = f" ({earlier.what})" if earlier.what else ''
        return (f"{out.label} and {earlier.label} would both write {printable(out.path)}{held}"
                f"{_how_same(out.path, earlier.path)}: only one would survive; choose another {out.flag}")

    def _check_family(self, family, inputs):
        """No input and no other output has a name of the family; no existing file of the
        family's names leads to an input."""
        def member(path):
            """(stem path, source) of the family name path has, or None."""
            names = family.stems.get(_real_folder(path, self._real))
            match = family.suffix.match(os.path.basename(path)) if names else None
            return names.get(match.group(1)) if match else None

        def what(stem, source):
            return f"a crop of {printable(source)} ({printable(stem)}{family.shown})"

        for entry in self._inputs:
            hit = member(entry.path)
            if hit is not None:
                raise InputError(self._over_input(family, entry, what(*hit), entry.path))
        for out in self._files:
            hit = None if out.is_stream else member(out.path)
            if hit is not None:
                raise InputError(f"{out.label} and {family.label} would both write {printable(out.path)} "
                                 f"({what(*hit)}): only one would survive; choose another {out.flag}")
        # A file of the family's names that is already there (an earlier run's crop, or a
        # link) is replaced through its links: it must not lead to an input.
        for folder, names in family.stems.items():
            try:
                listed = os.listdir(folder)
            except OSError:
                continue
            for name in listed:
                match = family.suffix.match(name)
                hit = names.get(match.group(1)) if match else None
                if hit is None:
                    continue
                path = os.path.join(folder, name)
                st, key = _identity(path, self._real)
                if st is not None and not stat.S_ISREG(st.st_mode):
                    raise InputError(f"cannot write {family.label}: {printable(path)} is {file_type(st.st_mode)}, "
                                     f"not a file ({what(*hit)} goes there)")
                victim = inputs.get(key)
                if victim is not None:
                    raise InputError(self._over_input(family, victim, what(*hit), path))
