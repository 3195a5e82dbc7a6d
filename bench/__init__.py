"""Speed benchmarks of the trainer against a baseline written in the paper's style."""
