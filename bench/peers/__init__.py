"""Model handlers that the benchmark's peer servers load: each serves the same TorchScript file."""
