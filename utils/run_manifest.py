"""A record of what made a folder of results, so that a rerun resumes only the same run's files.

A script that resumes into an output folder writes MANIFEST_NAME there before its first
result: the model file's sha256 and every setting that changes a number. A later run with
other weights or settings would otherwise skip the complete files of the first run and
leave a folder whose evaluation reports the first model's numbers. The manifest also lists
the files the run writes and the script that wrote them, so that --no-resume removes those,
and never a file of the user's or of another script.

train.py keeps the same record per network, <name>_run.json (training_record_name), since
one --save_folder may hold a run of each network (the reference saves both into ./weights/):
prepare_training_folder never lets a fresh run write over another run's files, and never
replaces a file that no run recorded (the published weights in ./weights/).

    model_path = args.onnx_model or args.trained_model
    prepare_results_folder(args.save_folder, run_settings(model_path, detector.settings()), planned_files,
                           model_path, script='test_widerface.py', recompute=not args.resume,
                           recompute_flag='--no-resume')
"""
import json
import logging
import os
from collections.abc import Callable, Iterable

from utils.atomic import atomic_write_text
from utils.errors import InputError
from utils.input_files import file_sha256

logger = logging.getLogger(__name__)

MANIFEST_NAME = 'retinaface_run.json'
# train.py's record of a run of network <name> in --save_folder: <name>_run.json.
TRAINING_RECORD_SUFFIX = '_run.json'
# How many of a run's files a message names before it says "and N more".
_SHOWN_FILES = 4
# Format 2 added 'files'; a format-1 manifest (without it) is still read, its run's files
# found by the script's is_result in the event folders.
MANIFEST_FORMAT = 2
_SHOWN_HASH_CHARS = 12


def run_settings(model_path: str | os.PathLike, detector_settings: dict[str, object]) -> dict[str, object]:
    """What a run's results depend on, as JSON-ready values: the model file's sha256 and
    the detector's settings (models.detector.Detector.settings()).

    Args:
        model_path (str | PathLike): the file the network came from (the .pth, or the
            ONNX file it runs); identified by content, so a renamed copy is the same model.
        detector_settings (dict): every setting that changes a detection.
    """
    return {'model_sha256': file_sha256(model_path), **detector_settings}


def read_manifest(folder: str | os.PathLike, name: str = MANIFEST_NAME) -> dict[str, object] | None:
    """The manifest of folder (folder/name): a dict, None when there is none, {} when it is unreadable."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return None
    try:
        with open(path, 'r', encoding='utf-8-sig') as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def manifest_differences(manifest: dict[str, object] | None, settings: dict[str, object],
                         script: str | None = None) -> list[tuple[str, object, object]]:
    """[(key, value in manifest, value in settings)] for every setting that differs; with
    script, a manifest of another script differs too (its files are not this run's)."""
    old = manifest.get('settings', {}) if isinstance(manifest, dict) else {}
    if not isinstance(old, dict):
        old = {}
    keys = list(settings) + [k for k in old if k not in settings]
    differences = [(k, old.get(k), settings.get(k)) for k in keys if old.get(k) != settings.get(k)]
    recorded_script = manifest.get('script') if isinstance(manifest, dict) else None
    if script is not None and recorded_script is not None and recorded_script != script:
        differences.insert(0, ('script', recorded_script, script))
    return differences


def recorded_files(manifest: dict[str, object] | None) -> list[str]:
    """The result files a manifest lists (paths relative to its folder). Entries that are not
    plain relative paths inside the folder are ignored, so that an edited manifest can never
    make a run remove a file elsewhere."""
    files = manifest.get('files') if isinstance(manifest, dict) else None
    if not isinstance(files, list):
        return []
    return [f for f in files if isinstance(f, str) and f and not os.path.isabs(f) and os.path.normpath(f) == f
            and f != os.pardir and not f.startswith(os.pardir + os.sep)]


def _show(key, value):
    if key.endswith('_sha256') and isinstance(value, str):
        return value[:_SHOWN_HASH_CHARS] + '...'
    return json.dumps(value)


def describe_differences(manifest: dict[str, object], settings: dict[str, object], model_path: str | os.PathLike,
                         script: str | None = None) -> str:
    """'key old -> new' for each difference, the model file paths included for a model change."""
    parts = []
    for key, old, new in manifest_differences(manifest, settings, script):
        text = f"{key} {_show(key, old)} -> {_show(key, new)}"
        if key == 'model_sha256':
            text += f" ({manifest.get('model_file', '?')} -> {os.fspath(model_path)})"
        parts.append(text)
    return ", ".join(parts)


def write_manifest(folder: str | os.PathLike, settings: dict[str, object], model_path: str | os.PathLike | None,
                   script: str, files: Iterable[str] = (), name: str = MANIFEST_NAME) -> None:
    """Write folder/name (atomically) for a run of script with settings that writes files
    (model_path: the weights it started from, None for none)."""
    manifest = {'format': MANIFEST_FORMAT, 'script': script,
                'model_file': None if model_path is None else os.fspath(model_path),
                'settings': settings, 'files': sorted(files)}
    atomic_write_text(os.path.join(folder, name), json.dumps(manifest, indent=1) + "\n")


def _some(files):
    """'a, b, c, d and 3 more': the first few of files, for a message."""
    files = list(files)
    shown = ', '.join(files[:_SHOWN_FILES])
    return shown + (f" and {len(files) - _SHOWN_FILES} more" if len(files) > _SHOWN_FILES else '')


def _existing_results(folder, candidates, is_result):
    """The candidates that exist in folder, and the files for which is_result(path) holds
    directly inside the sub-folders (event folders) that hold a candidate."""
    found = {f for f in candidates if os.path.isfile(os.path.join(folder, f))}
    if is_result is not None:
        for sub in sorted({os.path.dirname(f) for f in candidates} - {''}):
            try:
                names = os.listdir(os.path.join(folder, sub))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                rel = os.path.join(sub, name)
                if rel not in found and os.path.isfile(os.path.join(folder, rel)) and \
                        is_result(os.path.join(folder, rel)):
                    found.add(rel)
    return sorted(found)


def prepare_results_folder(folder: str, settings: dict[str, object], planned_files: list[str], model_path: str,
                           script: str, recompute: bool, recompute_flag: str, folder_flag: str = '--save_folder',
                           is_result: Callable[[str], bool] | None = None) -> bool:
    """Make folder ready to receive the results of a run with settings; call before the first
    result, while holding the folder's lock (utils.folder_run.lock_results_folder).

    The result files of a folder are the files its manifest lists, the files this run will
    write, and, in the sub-folders (event folders) of either, the files is_result accepts
    (results of an older version, whose manifest listed no files, or of the reference).
    Nothing else is ever taken for a result: a user's notes.txt stays.

    - no result files yet: the manifest is written (replacing any other);
    - result files of the same run (equal settings and script): the run may resume; the
      manifest then lists the files of both;
    - result files of another run of this script, or of an unknown one (no or unreadable
      manifest): with recompute, those files are removed and the manifest rewritten, so
      that the folder never mixes two runs; without it, an InputError says what differs
      and names recompute_flag;
    - result files that the manifest records as another script's (test_widerface.py's in
      test_fddb.py's --save_folder): an InputError, with recompute too. They are not this
      script's to remove: recompute would delete files this run never writes.

    Args:
        folder (str): the output folder.
        settings (dict): run_settings() of this run.
        planned_files (list[str]): the files this run may write, relative to folder
            (recorded, so that a later run knows them for this run's).
        model_path (str): the model file (recorded for people reading the manifest).
        script (str): the script's name, recorded.
        recompute (bool): whether the user asked to recompute every result.
        recompute_flag (str): the flag that asks for it, for the message.
        folder_flag (str): the flag that names folder, for the message.
        is_result (callable | None): path -> whether a file in an event folder is a result.
    Returns:
        bool: True when folder holds results of this same run (they may be resumed).
    """
    manifest = read_manifest(folder)
    recorded = recorded_files(manifest)
    result_files = _existing_results(folder, set(recorded) | set(planned_files), is_result)
    same_run = bool(manifest) and not manifest_differences(manifest, settings, script)
    other_script = manifest.get('script') if manifest else None
    files = set(planned_files)
    if result_files and other_script is not None and other_script != script:
        n = len(result_files)
        raise InputError(f"{folder} holds {n} result file{'s' * (n != 1)} of {other_script} "
                         f"({os.path.join(folder, MANIFEST_NAME)}): {_some(result_files)}. {script} never "
                         f"replaces or removes another script's results: choose another {folder_flag}")
    if result_files:
        if same_run:
            files |= set(recorded)
        elif not recompute:
            n = len(result_files)
            if manifest is None:
                why = (f"but no {MANIFEST_NAME}, so which model and settings made them is unknown "
                       f"(another program or an older version wrote them)")
            elif not manifest:
                why = f"and an unreadable {os.path.join(folder, MANIFEST_NAME)}"
            else:
                why = (f"made by another run ({os.path.join(folder, MANIFEST_NAME)}): "
                       f"{describe_differences(manifest, settings, model_path, script)}")
            raise InputError(f"{folder} already holds {n} result file{'s' * (n != 1)} {why}. "
                             f"Pass {recompute_flag} to recompute every result here (the old files are "
                             f"removed first), or choose another {folder_flag}")
        else:
            for path in result_files:
                try:
                    os.unlink(os.path.join(folder, path))
                except FileNotFoundError:
                    pass
            logger.warning("removed %d result files of another run from %s (%s)", len(result_files), folder,
                           recompute_flag)
    if not same_run or set(recorded) != files or not isinstance(manifest.get('files'), list):
        write_manifest(folder, settings, model_path, script, files)
    return same_run and bool(result_files)


def training_record_name(name: str) -> str:
    """The file train.py records a run of network name (cfg['name']) in: <name>_run.json."""
    return name + TRAINING_RECORD_SUFFIX


def prepare_training_folder(folder: str, record_name: str, settings: dict[str, object], planned_files: Iterable[str],
                            *, script: str, resume: str | None, replace: bool, state_name: str,
                            model_path: str | None = None, inputs: Iterable[str] = (),
                            unrecorded_run: Callable[[list[str]], dict[str, object] | None] | None = None,
                            replace_flag: str = '--no-resume', folder_flag: str = '--save_folder',
                            check_only: bool = False) -> None:
    """Make folder ready for a training run's files, as prepare_results_folder does for the
    inference scripts; call before the first file is written, while holding the folder's
    lock (check_only=True: only the checks, before anything is created, then again under
    the lock).

    The run's files are planned_files (what it may write) and the files its record
    (folder/record_name) lists, of those that exist:

    - none: the record is written (replacing any other);
    - all recorded by an earlier run of script: a run resuming that same run (equal
      settings: its network, run id and seed) may continue and replace them; a fresh run is an
      InputError naming the ways out (resume the state_name, replace_flag, another
      folder_flag), unless replace: then exactly the recorded files are removed first
      (never one of the run's inputs: an InputError then);
    - any that no run recorded (the published weights, a user's own file, the files of
      another script): an InputError, whatever the flags, since nothing says whose they are.
      unrecorded_run(files), for a folder without a record, may return the record an older
      train.py would have written (it wrote none), so that its runs resume as before.

    Args:
        folder (str): --save_folder.
        record_name (str): training_record_name(cfg['name']).
        settings (dict): what identifies the run (its network, run id and seed).
        planned_files (Iterable[str]): the file names the run may write, in folder.
        script (str): the script's name, recorded.
        resume (str | None): the training state the run resumes (--resume), or None.
        replace (bool): replace_flag was given: a fresh run replaces an earlier one's files.
        state_name (str): the file name of the resumable state in folder, for the message.
        model_path (str | None): the weights the run starts from, recorded for people.
        inputs (Iterable[str]): the files the run reads, which replace must never remove.
        unrecorded_run (callable | None): see above.
        check_only (bool): check, but neither remove nor write anything.
    Raises:
        InputError: as above.
    """
    record_path = os.path.join(folder, record_name)
    written = manifest = read_manifest(folder, record_name)
    planned = set(planned_files)
    present = {f for f in planned | set(recorded_files(manifest)) if os.path.lexists(os.path.join(folder, f))}
    if manifest is None and present and unrecorded_run is not None:
        manifest = unrecorded_run(sorted(present))
    ours = bool(manifest) and manifest.get('script') == script
    recorded = set(recorded_files(manifest)) if ours else set()
    unrecorded = sorted(present - recorded)
    if unrecorded:
        if written == {}:
            why = f"and its record {record_path} is unreadable"
        elif written is not None and ours:
            why = f"which its record {record_path} does not list"
        elif written is not None:
            why = f"and {record_path} is a record of {written.get('script')}"
        else:
            why = "which no training run of this project recorded making"
        way_out = (f"resume into another folder ({folder_flag} OTHER --resume {resume})" if resume is not None
                   else f"pass {folder_flag} FOLDER to train into another folder")
        raise InputError(f"{folder_flag} {folder} holds {_some(unrecorded)}, {why}: {script} never replaces a file "
                         f"it did not make (such as the published weights), whatever the flags. {way_out[0].upper()}"
                         f"{way_out[1:]}")
    if present:
        state_path = os.path.join(folder, state_name)
        if resume is not None:
            differences = manifest_differences(manifest, settings, script)
            if differences:
                raise InputError(
                    f"{folder_flag} {folder} holds the files of another training run ({record_path}: "
                    f"{describe_differences(manifest, settings, resume, script)}), not of the run {resume} "
                    f"continues: resume into that run's own folder, or into another {folder_flag}")
        elif not replace:
            continue_it = f"continue it with --resume {state_path}, " if os.path.isfile(state_path) else ''
            source = record_path if written else f"an older version's run: {state_path}"
            raise InputError(f"{folder_flag} {folder} holds the files of an earlier training run: "
                             f"{_some(sorted(present))} ({source}). To keep them, {continue_it}or choose "
                             f"another {folder_flag}; to replace that run, pass {replace_flag} (its files are "
                             f"removed first)")
        else:  # replace: exactly the recorded files go, never one that this run reads
            read = {os.path.realpath(p) for p in inputs if p}
            for f in sorted(present):
                if os.path.realpath(os.path.join(folder, f)) in read:
                    raise InputError(f"{replace_flag} would remove {os.path.join(folder, f)}, which this run reads: "
                                     f"copy it out of {folder_flag} {folder} first, or choose another {folder_flag}")
            if not check_only:
                for f in sorted(present):
                    try:
                        os.unlink(os.path.join(folder, f))
                    except FileNotFoundError:
                        pass
                logger.warning("removed the %d files of an earlier training run from %s (%s): %s", len(present),
                               folder, replace_flag, _some(sorted(present)))
    if check_only:
        return
    # A resumed run's files are those of the run it continues, and those it may add.
    files = planned | recorded if resume is not None else planned
    if not written or set(recorded_files(written)) != files or manifest_differences(written, settings, script):
        write_manifest(folder, settings, model_path, script, files, name=record_name)
