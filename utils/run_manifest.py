"""A record of what made a folder of results, so that a rerun resumes only the same run's files.

A script that resumes into an output folder writes MANIFEST_NAME there before its first
result: the model file's sha256 and every setting that changes a number. A later run with
other weights or settings would otherwise skip the complete files of the first run and
leave a folder whose evaluation reports the first model's numbers. The manifest also lists
the files the run writes, so that --no-resume removes those, and never a file of the user's.

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


def read_manifest(folder: str | os.PathLike) -> dict[str, object] | None:
    """The manifest of folder: a dict, None when there is none, {} when it is unreadable."""
    path = os.path.join(folder, MANIFEST_NAME)
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


def write_manifest(folder: str | os.PathLike, settings: dict[str, object], model_path: str | os.PathLike, script: str,
                   files: Iterable[str] = ()) -> None:
    """Write folder/MANIFEST_NAME (atomically) for a run with settings that writes files."""
    manifest = {'format': MANIFEST_FORMAT, 'script': script, 'model_file': os.fspath(model_path),
                'settings': settings, 'files': sorted(files)}
    atomic_write_text(os.path.join(folder, MANIFEST_NAME), json.dumps(manifest, indent=1) + "\n")


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
    - result files of another run, or of an unknown one (no or unreadable manifest): with
      recompute, those files are removed and the manifest rewritten, so that the folder
      never mixes two runs; without it, an InputError says what differs and names
      recompute_flag.

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
    files = set(planned_files)
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
