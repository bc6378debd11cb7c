"""From a resolved spec to an image: render, build context, base, build, seal, export/import."""
