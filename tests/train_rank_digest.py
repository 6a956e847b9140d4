"""Test helper that tests/test_train.py runs under torchrun: train.py's main() with the given
flags, then this rank's final iteration and a sha256 of its parameters written to
DIGEST_DIR/rank<RANK>.json. train.py writes files from rank 0 only, so this is how the test
sees that every rank ends with the same weights.

    python -m torch.distributed.run --nproc_per_node=2 tests/train_rank_digest.py DIGEST_DIR [train.py flags]
"""
import hashlib
import json
import logging
import os
import sys

import train


def params_digest(model):
    """sha256 over the parameter names and values, in named_parameters() order."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(digest_dir, argv):
    models = []  # the model train.main() builds (and trains in place)
    build_model = train.build_model

    def recording_build_model(*args, **kwargs):
        models.append(build_model(*args, **kwargs))
        return models[-1]

    train.build_model = recording_build_model
    args = train.get_args_parser().parse_args(argv)
    # As `python train.py` logs: progress on stdout.
    logging.basicConfig(level=logging.INFO, format=train.LOG_FORMAT, stream=sys.stdout, force=True)
    result = train.main(args)
    rank = int(os.environ.get('RANK', '0'))
    os.makedirs(digest_dir, exist_ok=True)
    with open(os.path.join(digest_dir, f'rank{rank}.json'), 'w') as f:
        json.dump({'rank': rank, 'iteration': result.iteration, 'params_sha256': params_digest(models[-1])}, f)
    return result.exit_code


if __name__ == '__main__':
    raise SystemExit(main(sys.argv[1], sys.argv[2:]))
