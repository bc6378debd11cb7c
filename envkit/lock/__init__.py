"""Lock files: the Python set (exact versions, sha256) and the apt pins."""
