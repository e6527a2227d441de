"""Where a trial's epoch checkpoints and deploy weights live, whichever node trains it.

A trial's artifact folder is named by the driver (``TrialSpec.checkpoint_dir``) and is one of:

- a folder of the driver's run directory (the default): the driver's machine alone is sure to see
  it, so a worker on another node sends each file through Ray's object store to a small actor on the
  driver's node (:class:`DriverStore`), which writes it there, and asks it for the last checkpoint
  when a trial resumes. A worker on the driver's own node writes the folder directly.
- a URI that ``pyarrow.fs`` understands (``artifacts:`` in the study file: ``s3://bucket/prefix``,
  ``gs://...``, ``file:///shared/path``): every worker reads and writes it directly.

Either way no file is left at a path only one node can see: ``export --models`` on the driver finds
every trained member's weights, and a trial interrupted on one node resumes from its last epoch
checkpoint on another. The trainer itself always writes a local folder (a scratch folder on the
worker when the artifacts live elsewhere); :class:`TrialArtifacts` moves files between the two.

What a killed driver or worker leaves (a scratch folder ``effnas-trial-<writer>-*`` in the worker's
temporary folder, a ``.tmp`` file of :func:`~trainers.atomic.write_atomic`, a ``.partial`` upload)
names its writer (:func:`~trainers.atomic.writer_tag`): a worker removes the scratch folders of dead
workers of its node when it starts a trial, and temporary files of dead writers in the trial's
folder; a driver removes those in its run directory and artifact location when it starts
(:func:`clean_leftovers`). A live writer's files are never touched.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from trainers.atomic import is_stale, remove_stale_temp_files, write_atomic, writer_gone, writer_tag

__all__ = ["is_uri", "to_uri", "check_location", "DriverStore", "start_driver_store", "bind_driver_store",
           "trial_artifacts", "TrialArtifacts", "read_artifact", "clean_leftovers", "remove_stale_scratch"]

SCRATCH_PREFIX = "effnas-trial-"
_SCRATCH_NAME = re.compile(r"^effnas-trial-(\d+)-(\d+)-([A-Za-z0-9_]+)-")

_driver_store = None      # this worker process's handle on the driver's DriverStore (None: none bound)
_store_is_local = None    # whether that store runs on this worker's node (asked once per process)


def is_uri(location: str) -> bool:
    return "://" in location


def to_uri(location: str) -> str:
    """A configured ``artifacts:`` value as a URI: a plain path becomes ``file://`` + its absolute form."""
    return location if is_uri(location) else Path(location).resolve().as_uri()


def _filesystem(uri: str):
    from pyarrow import fs

    return fs.FileSystem.from_uri(uri)


def check_location(uri: str) -> str | None:
    """Why ``uri`` cannot hold artifacts (unknown scheme, missing driver for it), or None."""
    try:
        _filesystem(uri)
    except Exception as e:  # pyarrow raises ArrowInvalid, ArrowNotImplementedError, OSError, ...
        return str(e).strip().splitlines()[0][:300]
    return None


# -- the driver's store ----------------------------------------------------------------------------

class DriverStore:
    """Body of the actor that keeps artifacts in the driver's run directory (on the driver's node)."""

    def __init__(self, root: str):
        self.root = Path(root).resolve()

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def _inside(self, path: str) -> Path:
        target = Path(path).resolve()
        if self.root not in target.parents:
            raise ValueError(f"{path} is outside the run directory's artifacts {self.root}")
        return target

    def read(self, path: str) -> bytes | None:
        target = self._inside(path)
        return target.read_bytes() if target.is_file() else None

    def write(self, path: str, data: bytes) -> None:
        write_atomic(self._inside(path), data)


def start_driver_store(root: str):
    """A :class:`DriverStore` actor for ``root`` (the run directory's checkpoints), on this node."""
    import ray

    from search.sweep.backends._ray import on_driver_node

    return on_driver_node(ray.remote(num_cpus=0)(DriverStore), soft=False).remote(root)


def bind_driver_store(handle) -> None:
    """Make ``handle`` this worker process's way to the driver's run directory."""
    global _driver_store, _store_is_local
    if handle is not _driver_store:
        _driver_store, _store_is_local = handle, None


def _store_on_this_node() -> bool:
    global _store_is_local
    if _store_is_local is None:
        import ray

        _store_is_local = ray.get(_driver_store.node.remote()) == ray.get_runtime_context().get_node_id()
    return _store_is_local


# -- one trial's folder, seen from the worker ------------------------------------------------------

class TrialArtifacts:
    """A trial folder the trainer writes directly (``local_dir`` is the folder itself)."""

    via = "direct"  # how the files reach the location (kept in the trial record)

    def __init__(self, location: str):
        self.location = location
        self.local_dir = location

    def fetch(self, name: str) -> None:
        """Bring the stored ``name`` into ``local_dir``, if there is one (nothing to do here)."""

    def store(self, name: str) -> str | None:
        """Keep ``local_dir/name`` at the trial's location; its location, or None when absent."""
        path = Path(self.local_dir) / name
        return str(path) if path.is_file() else None

    def close(self) -> None:
        """Release what the worker held for the trial."""


class _ScratchArtifacts(TrialArtifacts):
    """The trainer writes a scratch folder on the worker; files are copied to and from the location."""

    def __init__(self, location: str):
        super().__init__(location)
        remove_stale_scratch()
        self.local_dir = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{writer_tag()}-")

    def _get(self, name: str) -> bytes | None:
        raise NotImplementedError

    def _put(self, name: str, data: bytes) -> str:
        raise NotImplementedError

    def fetch(self, name: str) -> None:
        data = self._get(name)
        if data is not None:
            write_atomic(Path(self.local_dir) / name, data)

    def store(self, name: str) -> str | None:
        path = Path(self.local_dir) / name
        return self._put(name, path.read_bytes()) if path.is_file() else None

    def close(self) -> None:
        shutil.rmtree(self.local_dir, ignore_errors=True)


class _DriverArtifacts(_ScratchArtifacts):
    """A folder of the driver's run directory, reached through the driver's store actor."""

    via = "driver store"

    def __init__(self, location: str, handle):
        super().__init__(location)
        self.handle = handle

    def _get(self, name: str) -> bytes | None:
        import ray

        return ray.get(self.handle.read.remote(os.path.join(self.location, name)))

    def _put(self, name: str, data: bytes) -> str:
        import ray

        path = os.path.join(self.location, name)
        ray.get(self.handle.write.remote(path, data))  # durable before the epoch is reported
        return path


class _FilesystemArtifacts(_ScratchArtifacts):
    """A folder at a ``pyarrow.fs`` URI every node reaches."""

    via = "pyarrow.fs"

    def __init__(self, location: str):
        super().__init__(location)
        self.fs, self.base = _filesystem(location)

    def _get(self, name: str) -> bytes | None:
        return _read_fs(self.fs, f"{self.base}/{name}")

    def _put(self, name: str, data: bytes) -> str:
        from pyarrow import fs

        self.fs.create_dir(self.base, recursive=True)
        # A temporary name of this write alone: two writers of one file (a retry next to a worker
        # still finishing, two drivers on a shared location) never write into each other's.
        final, tmp = f"{self.base}/{name}", f"{self.base}/.{name}.{writer_tag()}.{uuid.uuid4().hex}.partial"
        try:
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            # A reader never sees half a file: local filesystems rename atomically, object stores
            # publish an object whole.
            if self.fs.type_name == "local":
                self.fs.move(tmp, final)
            else:
                self.fs.copy_file(tmp, final)
                self.fs.delete_file(tmp)
        except BaseException:
            with contextlib.suppress(Exception):
                if self.fs.get_file_info(tmp).type == fs.FileType.File:
                    self.fs.delete_file(tmp)
            raise
        return f"{self.location.rstrip('/')}/{name}"


def trial_artifacts(location: str) -> TrialArtifacts:
    """How this worker reaches the trial folder ``location`` (see the module docstring)."""
    if is_uri(location):
        return _FilesystemArtifacts(location)
    if _driver_store is None or _store_on_this_node():
        if os.path.isdir(location):  # what a killed worker of an earlier attempt was writing
            remove_stale_temp_files(location)
        return TrialArtifacts(location)
    return _DriverArtifacts(location, _driver_store)


# -- leftovers of killed drivers and workers -------------------------------------------------------

def remove_stale_scratch(folder: str | None = None) -> int:
    """Remove the scratch folders of dead workers of this node (in ``folder``, the temporary folder
    by default); a folder whose writer lives, or that this process cannot tell about, stays."""
    folder = folder or tempfile.gettempdir()
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if entry.name.startswith(SCRATCH_PREFIX) and writer_gone(entry.name, _SCRATCH_NAME):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


def _remove_stale_partials(uri: str) -> int:
    """Remove the stale ``.partial`` uploads (:func:`trainers.atomic.is_stale`) under a ``pyarrow.fs`` URI."""
    from pyarrow import fs

    filesystem, base = _filesystem(uri)
    removed = 0
    infos = filesystem.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
    for info in infos:
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        if info.type == fs.FileType.File and is_stale(info.base_name, mtime):
            with contextlib.suppress(OSError):
                filesystem.delete_file(info.path)
                removed += 1
    return removed


def clean_leftovers(cfg) -> int:
    """At a driver's start: the stale temporary files in the study's run directory and artifact
    location (a driver or worker killed mid-write left them); how many were removed."""
    removed = remove_stale_temp_files(cfg.run_path) if cfg.run_path.is_dir() else 0
    if cfg.artifacts:
        with contextlib.suppress(Exception):  # an unreachable location is the trials' error to report
            removed += _remove_stale_partials(f"{to_uri(cfg.artifacts).rstrip('/')}/{cfg.study}")
    return removed


# -- reading them back on the driver -------------------------------------------------------------

def _read_fs(filesystem, path: str) -> bytes | None:
    from pyarrow import fs

    if filesystem.get_file_info(path).type != fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as f:
        return f.read()


def read_artifact(location: str) -> bytes | None:
    """The bytes of a recorded artifact (a path on this machine or a URI), or None when absent."""
    if not is_uri(location):
        path = Path(location)
        return path.read_bytes() if path.is_file() else None
    filesystem, path = _filesystem(location)
    return _read_fs(filesystem, path)

