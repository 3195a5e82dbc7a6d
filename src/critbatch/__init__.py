"""critbatch: find the critical batch size of TTUR GAN training."""
