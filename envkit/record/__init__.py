"""What is recorded about an image: snapshot manifests, drift, diff, SBOM, bundles, restore."""
