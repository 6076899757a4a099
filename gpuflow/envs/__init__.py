"""The environment fabric: ``catalog`` (resolve, build, lookup; no Prefect) and ``fabric``
(the same catalog as a Prefect block).

``key``: what an environment's content key hashes, and the stat index that makes a
warm resolve cheap. ``records``: the files on the NAS (metadata, job pointers,
pins). ``builder``: the uv build. ``gc``: eviction. ``consumers``: what the
Kubernetes, ECS and Ray backends need to run a job in an environment.
"""
