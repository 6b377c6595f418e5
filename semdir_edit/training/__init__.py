"""Training: one loop (:mod:`.loop`) and one job per network (gan, encoder, directions); the classifier's epochs."""
