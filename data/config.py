# config.py
# The two network configurations of the reference, key for key.
#
# ngpu and gpu_train are kept for compatibility with the reference's train.py:
# gpu_train=True means "train on CUDA when it is available" and ngpu is the
# number of GPUs the published batch_size was tuned for (the reference wrapped
# the model in DataParallel when ngpu > 1). Here the device comes from train.py's
# --device flag and multi-GPU training uses torchrun; see README.md.

from utils.errors import InputError

cfg_mnet = {
    'name': 'mobilenet0.25',
    'min_sizes': [[16, 32], [64, 128], [256, 512]],
    'steps': [8, 16, 32],
    'variance': [0.1, 0.2],
    'clip': False,
    'loc_weight': 2.0,
    'gpu_train': True,
    'batch_size': 32,
    'ngpu': 1,
    'epoch': 250,
    'decay1': 190,
    'decay2': 220,
    'image_size': 640,
    'pretrain': True,
    'return_layers': {'stage1': 1, 'stage2': 2, 'stage3': 3},
    'in_channel': 32,
    'out_channel': 64
}

cfg_re50 = {
    'name': 'Resnet50',
    'min_sizes': [[16, 32], [64, 128], [256, 512]],
    'steps': [8, 16, 32],
    'variance': [0.1, 0.2],
    'clip': False,
    'loc_weight': 2.0,
    'gpu_train': True,
    'batch_size': 24,
    'ngpu': 4,
    'epoch': 100,
    'decay1': 70,
    'decay2': 90,
    'image_size': 840,
    'pretrain': True,
    'return_layers': {'layer2': 1, 'layer3': 2, 'layer4': 3},
    'in_channel': 256,
    'out_channel': 256
}

# The mean BGR pixel subtracted from every input, in training and in detection (the
# reference calls it rgb_mean, but OpenCV's images are BGR and so are these values).
BGR_MEAN = (104, 117, 123)
# The reference's test scale (test_widerface.py without --origin_size): the short side
# becomes TARGET_SIZE unless the long side would then exceed MAX_SIZE, in which case the
# long side becomes MAX_SIZE. The defaults of the size rule
# (layers.functions.detection.resize_factor), which --target_size and --max_size replace.
TARGET_SIZE = 1600
MAX_SIZE = 2150

# The --network names the scripts accept, mapped to their configs.
NETWORKS = {'mobile0.25': cfg_mnet, 'resnet50': cfg_re50}


def cfg_for_network(network):
    """Return the config dict for a --network name ('mobile0.25' or 'resnet50')."""
    if network not in NETWORKS:
        raise InputError(f"unknown network {network!r}: expected one of {sorted(NETWORKS)}")
    return NETWORKS[network]
