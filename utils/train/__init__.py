"""train.py's pieces below the model: the schedule (schedule), the --save_folder record and
claim (run_folder), where a run starts and what it continues (resume), and the log file
(log_file).

They log on train.py's logger, LOGGER_NAME, so that their lines are the run's log: on
stdout, in <name>_train.log, at the level train.py sets, and on rank 0 only.
"""
LOGGER_NAME = 'train'
