from .prior_box import PriorBox, prior_boxes
