"""Training loops, one file per job."""
