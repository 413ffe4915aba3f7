"""Real kernels on the local device (the only core package that imports torch, lazily)."""
