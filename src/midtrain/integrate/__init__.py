"""Integration rounds: a full midtraining mix (anchor + winners) trained against the mix before it."""
