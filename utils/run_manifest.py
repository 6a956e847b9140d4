"""A record of what made a folder of results, so that a rerun resumes only the same run's files.

A script that resumes into an output folder writes MANIFEST_NAME there before its first
result: the model file's sha256 and every setting that changes a number. A later run with
other weights or settings would otherwise skip the complete files of the first run and
leave a folder whose evaluation reports the first model's numbers.

    model_path = args.onnx_model or args.trained_model
    prepare_results_folder(args.save_folder, run_settings(model_path, detector.settings()), existing_result_files,
                           model_path, script='test_widerface.py', recompute=not args.resume,
                           recompute_flag='--no-resume')
"""
import hashlib
import json
import logging
import os

from utils.atomic import atomic_write_text
from utils.errors import InputError

logger = logging.getLogger(__name__)

MANIFEST_NAME = 'retinaface_run.json'
MANIFEST_FORMAT = 1
_HASH_CHUNK = 1 << 20
_SHOWN_HASH_CHARS = 12


def file_sha256(path):
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def run_settings(model_path, detector_settings):
    """What a run's results depend on, as JSON-ready values: the model file's sha256 and
    the detector's settings (models.detector.Detector.settings()).

    Args:
        model_path (str | PathLike): the file the network came from (the .pth, or the
            ONNX file it runs); identified by content, so a renamed copy is the same model.
        detector_settings (dict): every setting that changes a detection.
    """
    return {'model_sha256': file_sha256(model_path), **detector_settings}


def read_manifest(folder):
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


def manifest_differences(manifest, settings):
    """[(key, value in manifest, value in settings)] for every setting that differs."""
    old = manifest.get('settings', {}) if isinstance(manifest, dict) else {}
    if not isinstance(old, dict):
        old = {}
    keys = list(settings) + [k for k in old if k not in settings]
    return [(k, old.get(k), settings.get(k)) for k in keys if old.get(k) != settings.get(k)]


def _show(key, value):
    if key.endswith('_sha256') and isinstance(value, str):
        return value[:_SHOWN_HASH_CHARS] + '...'
    return json.dumps(value)


def describe_differences(manifest, settings, model_path):
    """'key old -> new' for each difference, the model file paths included for a model change."""
    parts = []
    for key, old, new in manifest_differences(manifest, settings):
        text = f"{key} {_show(key, old)} -> {_show(key, new)}"
        if key == 'model_sha256':
            text += f" ({manifest.get('model_file', '?')} -> {os.fspath(model_path)})"
        parts.append(text)
    return ", ".join(parts)


def write_manifest(folder, settings, model_path, script):
    """Write folder/MANIFEST_NAME (atomically) for a run with settings."""
    manifest = {'format': MANIFEST_FORMAT, 'script': script, 'model_file': os.fspath(model_path),
                'settings': settings}
    atomic_write_text(os.path.join(folder, MANIFEST_NAME), json.dumps(manifest, indent=1) + "\n")


def prepare_results_folder(folder, settings, result_files, model_path, script, recompute, recompute_flag,
                           folder_flag='--save_folder'):
    """Make folder ready to receive the results of a run with settings; call before the first result.

    - no result files yet: the manifest is written (replacing any other);
    - result files of the same run (equal settings): nothing changes, the run may resume;
    - result files of another run, or of an unknown one (no or unreadable manifest): with
      recompute, those files are removed and the manifest rewritten, so that the folder
      never mixes two runs; without it, a ValueError says what differs and names
      recompute_flag.

    Args:
        folder (str): the output folder.
        settings (dict): run_settings() of this run.
        result_files (list[str]): the result files already in folder.
        model_path (str): the model file (recorded for people reading the manifest).
        script (str): the script's name, recorded.
        recompute (bool): whether the user asked to recompute every result.
        recompute_flag (str): the flag that asks for it, for the message.
        folder_flag (str): the flag that names folder, for the message.
    Returns:
        bool: True when folder holds results of this same run (they may be resumed).
    """
    manifest = read_manifest(folder)
    if result_files:
        if manifest and not manifest_differences(manifest, settings):
            return True
        if not recompute:
            n = len(result_files)
            if manifest is None:
                why = (f"but no {MANIFEST_NAME}, so which model and settings made them is unknown "
                       f"(another program or an older version wrote them)")
            elif not manifest:
                why = f"and an unreadable {os.path.join(folder, MANIFEST_NAME)}"
            else:
                why = (f"made by another run ({os.path.join(folder, MANIFEST_NAME)}): "
                       f"{describe_differences(manifest, settings, model_path)}")
            raise InputError(f"{folder} already holds {n} result file{'s' * (n != 1)} {why}. "
                             f"Pass {recompute_flag} to recompute every result here (the old files are "
                             f"removed first), or choose another {folder_flag}")
        for path in result_files:
            os.unlink(path)
        logger.warning("removed %d result files of another run from %s (%s)", len(result_files), folder,
                       recompute_flag)
    if manifest is None or manifest_differences(manifest, settings) or result_files:
        write_manifest(folder, settings, model_path, script)
    return False
