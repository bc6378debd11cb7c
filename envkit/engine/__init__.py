"""The one way in to the Docker engine, and the docker-archive reader and writer."""
