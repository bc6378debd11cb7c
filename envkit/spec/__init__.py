"""Reading specs: the strict model, the catalog, and the torch/CUDA/cuDNN compatibility tables."""
