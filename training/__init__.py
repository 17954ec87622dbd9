"""Scripts that generate training data and train the bundled models; never run by the daemon."""
