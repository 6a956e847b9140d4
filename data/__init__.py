from .config import cfg_mnet, cfg_re50, cfg_for_network, NETWORKS
