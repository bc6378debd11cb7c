"""Running envkit images elsewhere: Kubernetes manifests (``k8s``) that run an image the way
``envkit run`` and ``envkit verify`` run it on one host."""
