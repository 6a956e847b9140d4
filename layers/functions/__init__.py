from .prior_box import PriorBox, cached_priors, prior_boxes
