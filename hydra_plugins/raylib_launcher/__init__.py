"""`hydra/launcher=ray_jobs`: each point of a Hydra sweep (`-m`) runs as its own Ray job on a cluster.

Hydra finds this package by scanning the `hydra_plugins` namespace (installed with the project:
pyproject.toml). `config.py` registers the launcher's settings; `ray_jobs_launcher.py` is the launcher."""
