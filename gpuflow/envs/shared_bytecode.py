"""Compile an env's bytecode once per source file across all envs, and hardlink it.

Run by the env's own interpreter (the magic number must be its own), with only the
standard library: ``python -I shared_bytecode.py SITE_PACKAGES STORE``. Prints one
JSON line: how many ``.pyc`` files were linked from the store and how many compiled.

Every envs' package sources are hardlinks of the same uv-cache inode, so a
timestamp ``.pyc`` (it records the source's mtime and size) compiled for one env is
valid for all of them, and the loader rewrites ``co_filename`` to the importing
path (``_imp._fix_co_filename``). uv's ``--compile-bytecode`` compiles every file
into every env (tens of seconds for torch); this compiles each one once. Store
entries are named by the source's device, inode, mtime and size, so a recycled
inode can never hand out bytecode of another file.
"""

# This loop visits every file of a torch-sized env (~15k): str paths and os calls
# instead of pathlib objects keep it fast.
# ruff: noqa: PTH103, PTH105, PTH108, PTH110, PTH116, PTH118, PTH120

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import sys
from concurrent.futures import ProcessPoolExecutor

_PARALLEL_FROM = 64  # below this many compilations a process pool costs more than it saves


def _compile(job: tuple[str, str]) -> bool:
    source, destination = job
    partial = f"{destination}.{os.getpid()}.partial"
    try:
        py_compile.compile(source, cfile=partial, doraise=True, quiet=2)
        os.replace(partial, destination)
    except (py_compile.PyCompileError, SyntaxError, OSError, ValueError):
        # Like compileall: a file this Python cannot compile (a template, another
        # version's syntax) is left to fail at import, if it is ever imported.
        if os.path.exists(partial):
            os.unlink(partial)
        return False
    return True


def _link(shared: str, target: str) -> bool:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(shared, target)
    except FileExistsError:
        os.unlink(target)
        os.link(shared, target)
    except FileNotFoundError:
        return False  # removed from the store meanwhile (GC): compile it in place
    return True


def compile_shared(site_packages: str, store: str) -> dict[str, int]:
    tag = sys.implementation.cache_tag
    os.makedirs(store, exist_ok=True)
    shared_targets: list[tuple[str, str, str]] = []  # (source, pyc in the env, pyc in store)
    missing: dict[str, str] = {}  # shared pyc to compile -> its source
    local: list[tuple[str, str]] = []  # (source, pyc in the env)
    for dirpath, dirnames, filenames in os.walk(site_packages):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            source = os.path.join(dirpath, name)
            target = importlib.util.cache_from_source(source)
            st = os.stat(source)
            if st.st_nlink < 2:  # not from the cache (written by the install): its own pyc
                local.append((source, target))
                continue
            key = f"{st.st_dev}-{st.st_ino}-{st.st_mtime_ns}-{st.st_size}.{tag}.pyc"
            shared = os.path.join(store, key)
            shared_targets.append((source, target, shared))
            if shared not in missing and not os.path.exists(shared):
                missing[shared] = source
    # Compile what no env compiled yet into the store, and this env's own files in place.
    jobs = [(source, shared) for shared, source in missing.items()] + local
    if len(jobs) >= _PARALLEL_FROM and (os.cpu_count() or 1) > 1:
        with ProcessPoolExecutor() as pool:
            list(pool.map(_compile, jobs, chunksize=64))
    else:
        for job in jobs:
            _compile(job)
    linked = 0
    for source, target, shared in shared_targets:
        if not os.path.exists(shared):
            continue  # it did not compile (see _compile)
        if _link(shared, target):
            linked += 1
        else:
            _compile((source, target))
    return {"linked": linked, "compiled": len(jobs)}


def main() -> None:
    site_packages, store = sys.argv[1], sys.argv[2]
    print(json.dumps(compile_shared(site_packages, store)))


if __name__ == "__main__":
    main()
