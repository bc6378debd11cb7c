"""Facts about the machine envkit runs on: GPUs, driver, NVIDIA runtime."""
