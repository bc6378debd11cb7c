"""``envkit verify``: host preflight, the probe and benchmark in the image, the report.

preflight.py  host checks without a container (engine, NVIDIA runtime, driver, GPUs, disk)
runner.py     runs probe/bench in a container or natively, diagnoses, decides the verdict
report.py     the schema-versioned report, reference figures, the rich rendering
cli.py        the click command ``verify``
"""
