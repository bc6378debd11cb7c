"""Running dev images: Jupyter, TensorBoard, SSH, and commands in a container."""
