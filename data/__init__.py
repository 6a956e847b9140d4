# The reference's exports: the dataset, its collate function, the augmentation and the configs.
from .wider_face import WiderFaceDetection, detection_collate
from .data_augment import *
from .config import *
from .config import cfg_mnet, cfg_re50, cfg_for_network, NETWORKS
