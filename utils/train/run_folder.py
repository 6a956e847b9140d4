"""--save_folder as one training run's: the files a run writes there, <name>_run.json, the
record that says whose they are (utils.run_manifest.prepare_training_folder), and the claim
on the folder (its lock) made once every input is checked."""
import argparse
import functools
import logging
import os
import uuid
from dataclasses import dataclass

from utils.atomic import FolderLock, check_writable, remove_stale_temp_files
from utils.errors import InputError
from utils.run_manifest import prepare_training_folder, training_record_name
from utils.train import LOGGER_NAME
from utils.train.schedule import saves_checkpoint_after
from utils.train_state import load_training_state

logger = logging.getLogger(LOGGER_NAME)

SCRIPT = 'train.py'
# The files of a run in --save_folder besides the epoch checkpoints: <name><suffix>.
FINAL_SUFFIX = '_Final.pth'
STATE_SUFFIX = '_last_state.pth'
BEST_SUFFIX = '_best.pth'
METRICS_SUFFIX = '_metrics.jsonl'
LOG_SUFFIX = '_train.log'
RUN_FILE_SUFFIXES = (FINAL_SUFFIX, STATE_SUFFIX, BEST_SUFFIX, METRICS_SUFFIX, '_metrics.png', LOG_SUFFIX)


def run_files(cfg: dict) -> list[str]:
    """The names of the files a run of cfg (train.build_config's) may write in --save_folder:
    the epoch checkpoints before the last epoch (whose weights are <name>_Final.pth) and the rest."""
    name = cfg['name']
    return [name + suffix for suffix in RUN_FILE_SUFFIXES] + [
        f"{name}_epoch_{epoch}.pth" for epoch in range(1, cfg['epoch']) if saves_checkpoint_after(epoch, cfg['decay1'])]


def state_run_id(state: dict) -> str:
    """The run_id of the run a training state belongs to: its history's, or for a state saved
    before histories had one, one made from its seed (the same at every resume)."""
    run_id = (state.get('history') or {}).get('run_id')
    return str(run_id) if run_id else f"seed-{state['seed']}"


@dataclass(frozen=True)
class RunRecord:
    """What <name>_run.json in --save_folder says of a run (utils.run_manifest's
    prepare_training_folder): its network, its run_id (RunHistory's, kept in the training
    state, so that a --resume is known for the same run) and seed, the files it may write,
    and the weights it started from."""
    cfg: dict
    run_id: str
    seed: int
    start_weights: str | None
    resume: str | None
    replace: bool
    inputs: tuple[str, ...]  # the files the run reads, which --no-resume must never remove

    @classmethod
    def of(cls, args: argparse.Namespace, cfg: dict, state: dict | None, seed: int,
           start_weights: str | None) -> 'RunRecord':
        """The record of the run args describe; start_weights is the file its model starts from
        (the state's, --resume_net's or the pretrained backbone's), or None."""
        inputs = tuple(p for p in (start_weights, args.training_dataset, args.val_dataset) if p)
        return cls(cfg=cfg, run_id=state_run_id(state) if state is not None else uuid.uuid4().hex[:12], seed=seed,
                   start_weights=start_weights, resume=args.resume, replace=args.no_resume, inputs=inputs)

    @property
    def settings(self) -> dict:
        return {'network': self.cfg['name'], 'run_id': self.run_id, 'seed': self.seed}

    def prepare(self, folder: str, check_only: bool = False) -> None:
        """Check (check_only) or prepare folder for this run's files; InputError if it holds
        files this run must not write over."""
        name = self.cfg['name']
        if check_only:
            check_writable(folder, '--save_folder', folder=True)
        prepare_training_folder(
            folder, training_record_name(name), self.settings, run_files(self.cfg), script=SCRIPT,
            resume=self.resume, replace=self.replace, state_name=name + STATE_SUFFIX,
            model_path=self.start_weights, inputs=self.inputs, check_only=check_only,
            unrecorded_run=functools.partial(_older_run_record, folder, name))


def _older_run_record(folder: str, name: str, files: list[str]) -> dict | None:
    """For a --save_folder without <name>_run.json: the record an older train.py (which kept
    none) would have written for the run whose <name>_last_state.pth is there, or None when
    there is no such state. Its <name>_Final.pth is that run's only once the state says it
    finished (the published weights in ./weights/ sit beside no state, or beside an
    unfinished one)."""
    state_path = os.path.join(folder, name + STATE_SUFFIX)
    try:
        state = load_training_state(state_path)
    except InputError:
        return None
    if state['cfg'].get('name') != name:
        return None
    finished = 'max_iter' in state and int(state['iteration']) >= int(state['max_iter'])
    return {'script': SCRIPT, 'settings': {'network': name, 'run_id': state_run_id(state), 'seed': state['seed']},
            'files': [f for f in files if f != name + FINAL_SUFFIX or finished]}


def claim_save_folder(folder: str, lock: FolderLock, record: RunRecord) -> None:
    """Make --save_folder this run's: create it, take its lock (a second run into it fails at
    once, naming the first one's PID, instead of silently replacing its checkpoints, state
    and metrics), prepare it for the run's files (record.prepare: the check made before the
    inputs, made again now that no other run can change the folder), then remove the
    temporary files a killed save left there. Only files directly in it: a sub-folder may be
    another run's --save_folder, busy now."""
    lock.acquire()
    record.prepare(folder)
    removed = remove_stale_temp_files(folder, recursive=False)
    if removed:
        logger.info("removed %d temporary file(s) that an interrupted save left in %s: %s", len(removed), folder,
                    ', '.join(os.path.basename(p) for p in removed))


def finished_run_weights(state_path: str) -> str | None:
    """The <name>_Final.pth beside a <name>_last_state.pth, if there is one."""
    if not state_path.endswith(STATE_SUFFIX):
        return None
    final = state_path[:-len(STATE_SUFFIX)] + FINAL_SUFFIX
    return final if os.path.isfile(final) else None
