"""utils.train.log_file.RunLogFile: train.py's <name>_train.log, with the records logged
before it could be opened."""
import logging

from utils.train.log_file import RunLogFile

log = logging.getLogger('tests.log_file')


def _messages(path):
    return [line.split(' ', 2)[2] for line in path.read_text().splitlines()]


def test_the_file_starts_with_the_records_kept_before_it_opened(tmp_path):
    log.setLevel(logging.INFO)
    log_file = RunLogFile()
    try:
        log_file.buffer()
        log.info('checking the inputs')
        log_file.open(tmp_path / 'run_train.log')
        log.info('training')
        log.debug('below INFO: not in the file')
    finally:
        log_file.close()
        log.setLevel(logging.NOTSET)
    log.info('after close: not in the file')
    assert _messages(tmp_path / 'run_train.log') == ['checking the inputs', 'training']


def test_a_resumed_run_appends_and_a_closed_buffer_drops_its_records(tmp_path):
    path = tmp_path / 'run_train.log'
    path.write_text('2024-01-01 00:00:00 the first run\n')
    root = logging.getLogger()
    handlers = root.handlers[:]
    log.setLevel(logging.INFO)
    try:
        dropped = RunLogFile()
        dropped.buffer()
        log.info('a refused run: never written')
        dropped.close()
        resumed = RunLogFile()
        resumed.open(path)
        log.info('the resumed run')
        resumed.close()
    finally:
        log.setLevel(logging.NOTSET)
    assert _messages(path) == ['the first run', 'the resumed run']
    assert root.handlers == handlers
