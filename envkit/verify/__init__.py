"""``envkit verify``: host preflight, the probe and benchmark in the image, the report.

doctor.py     which catalog images this host can run (`envkit doctor`)
preflight.py  host checks without a container (engine, NVIDIA runtime, driver, GPUs, disk)
runner.py     runs probe/bench in a container or natively, diagnoses, decides the verdict
report.py     the schema-versioned report, reference figures, the rich rendering

Both doctor and preflight read the driver and GPUs through envkit.host.gpu; the commands are in
envkit.cli.verify and envkit.cli.doctor.
"""
