"""Direction sources besides the trained deformators: the baselines (PCA, SeFa, random, per-class PCA), W sampling
and statistics, and the direction bank built from them."""
