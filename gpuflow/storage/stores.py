"""The object store types a stack can use, and the store that a URI's scheme picks.

A new store scheme is a module (an ``ObjectStore`` subclass naming its ``schemes``) and a
line in ``OBJECT_STORES``; a new S3-compatible store is a line in
``gpuflow.storage.s3.S3_COMPATIBLE``.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpuflow.core.errors import UriError
from gpuflow.storage.base import ObjectStore
from gpuflow.storage.https import HttpSource
from gpuflow.storage.local import LocalObjectStore
from gpuflow.storage.s3 import S3ObjectStore
from gpuflow.storage.uri import ObjectUri

OBJECT_STORES: tuple[type[ObjectStore], ...] = (LocalObjectStore, S3ObjectStore, HttpSource)


def store_for(uri: str, stores: Iterable[ObjectStore]) -> ObjectStore:
    """The first of ``stores`` that serves ``uri``; else a store of a registered type that
    serves its scheme without settings (``s3://`` with the environment's credentials,
    ``https://``); else a ``UriError`` naming the scheme and what would serve it."""
    scheme = ObjectUri.parse(uri).scheme
    configured = list(stores)
    for store in configured:
        if store.serves(uri):
            return store
    for store_type in OBJECT_STORES:
        default = store_type.for_scheme(scheme)
        if default is not None:
            return default
    served = sorted({s for store in configured for s in store.served_schemes})
    raise UriError(
        uri,
        f"no store of this stack serves {scheme}:// URIs (it has stores for "
        f"{', '.join(f'{s}://' for s in served) or 'nothing'}): set the stack's model_store",
    )
