"""FDDB evaluation: discrete and continuous ROC against the ellipse annotations."""
