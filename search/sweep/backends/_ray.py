"""What every Ray-based backend shares: joining or starting the Ray instance the study file names,
probing a cluster before joining it, counting trial slots (at start, and on the live nodes left after
a node loss, with the error once none is left), placing small actors on the driver's node,
pricing on a pricer actor with its inline fallback, preparing a worker process, and the message for
workers that cannot load effnas."""
from __future__ import annotations

import contextlib
import os
from typing import Any

from search.exceptions import ResourcesError, WorkerStartError

__all__ = ["check_reachable", "start_ray", "trial_slots", "live_slots", "no_room_error", "on_driver_node", "Pricing",
           "prepare_worker", "worker_start_error", "WORKER_ENV_HINT"]

# What a worker that cannot even load effnas is told to fix.
WORKER_ENV_HINT = "effnas must be installed in the Python environment of every Ray node"


def worker_start_error(detail: str) -> WorkerStartError:
    return WorkerStartError(f"Ray workers could not start ({detail[:400]}); {WORKER_ENV_HINT}")


def prepare_worker(threads: int, family_modules: tuple = ()) -> None:
    """What a trial process does before its first trial: its CPU threads, and the study's outside
    families (``family_modules:``) registered here too."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    if family_modules:
        from space.registry import load_family_modules

        load_family_modules(family_modules)


class _PricerActor:
    """Runs the cost model next to the driver (not on a trial slot: it asks for no CPU)."""

    def __init__(self, price_fn, family_modules: tuple = ()):
        prepare_worker(1, family_modules)
        self.price_fn = price_fn

    def price(self, family: str, knobs: dict):
        return self.price_fn(family, knobs)


class Pricing:
    """Prices proposals on a pricer actor on the driver's node (overlapping the driver's database
    work); once that actor fails, it prices inline, here, from then on."""

    def __init__(self, price_fn, family_modules: tuple = ()):
        self.price_fn, self.family_modules, self.actor = price_fn, family_modules, None

    def start(self, ray) -> None:
        self.actor = on_driver_node(ray.remote(num_cpus=0)(_PricerActor)).remote(self.price_fn, self.family_modules)

    def remote(self, family: str, knobs: dict):
        """A future of the price, or None when pricing runs inline."""
        return None if self.actor is None else self.actor.price.remote(family, knobs)

    def inline(self, token: int, family: str, knobs: dict):
        from search.sweep.backends import Priced

        return Priced(token, *self.price_fn(family, knobs))

    def settle(self, token: int, family: str, knobs: dict, get_result):
        """The pricer's answer as a ``Priced`` event (``get_result()`` raises if the actor died)."""
        from ray.exceptions import RayActorError

        from search.sweep.backends import Priced

        try:
            return Priced(token, *get_result())
        except RayActorError:  # the pricer died: price here, and from now on always here
            self.actor = None
        except Exception:  # the cost model failed on this proposal: the same call here says why
            pass
        return self.inline(token, family, knobs)


def _cluster_address(address: str) -> str | None:
    """``host:port`` of the cluster an address names (``auto``: $RAY_ADDRESS, else the address file
    ``ray start`` leaves in /tmp/ray), or None when ``auto`` finds no cluster at all."""
    if address.startswith("ray://"):
        return address[len("ray://"):].split("/")[0]
    if address != "auto":
        return address
    env = os.environ.get("RAY_ADDRESS")
    if env and env not in ("auto", "local"):
        return env[len("ray://"):] if env.startswith("ray://") else env
    try:
        with open("/tmp/ray/ray_current_cluster") as f:
            return f.read().strip() or None
    except OSError:
        return None


def check_reachable(address: str, timeout_s: float, where: str) -> None:
    """The cluster's head answers on its port within ``timeout_s``, else one clear error."""
    import socket

    target = _cluster_address(address)
    fix = "start it (`ray start --head` on the head node) or set ray.address: null for a local instance"
    if target is None:
        raise WorkerStartError(f"{where}: ray.address is 'auto' but no running Ray cluster was found; {fix}")
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise WorkerStartError(f"{where}: the Ray cluster at {target} (ray.address {address!r}) did not answer "
                               f"within {timeout_s:g} s ({e}); {fix}") from None


def on_driver_node(actor_cls, soft: bool = True):
    """An actor handle placed on the driver's node (costs are tiny messages, specs stay local).
    ``soft=False``: there and nowhere else (an actor that keeps the driver's files)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        here = ray.get_runtime_context().get_node_id()
        return actor_cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=soft))
    except Exception:  # a client-mode driver has no node of its own
        return actor_cls



@contextlib.contextmanager
def _without_token_notice():
    """Drops Ray's notice that token authentication is on ("Set RAY_AUTH_MODE=disabled to opt out"),
    logged when ray.init starts an instance: for the private instance of one driver it is nothing
    its user can act on. Authentication itself stays as Ray sets it; every other line Ray logs
    passes, and joining a cluster is never filtered."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")

    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def start_ray(address: str | None, num_cpus: int | None, num_gpus: int | None, connect_timeout_s: float,
              where: str):
    """The ``ray`` module, initialised on the study file's ``ray.address`` (None or ``local``: a
    private local instance with ``num_cpus``/``num_gpus``); an initialised Ray is used as it is."""
    import signal
    import threading

    import ray

    if ray.is_initialized():
        return ray
    # ray.init replaces the process's SIGTERM handler with one that aborts; the caller's (`run`
    # stops cleanly on SIGTERM) is put back.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
        if address and address != "local":
            # Ray waits for an absent cluster for minutes, deaf to Ctrl-C: probe it first (the
            # driver's preflight did too; the cluster may have gone since).
            check_reachable(address, connect_timeout_s, where)
            ray.init(address=address, **kwargs)
        else:
            # "local": a private instance, whatever RAY_ADDRESS or a left-behind cluster address
            # file says (plain ray.init() would try to join that cluster).
            with _without_token_notice():
                ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return ray


def _fitting(total: dict, cpus: float, gpus: float, no_cpu_key: float) -> int:
    """Trials of ``cpus``/``gpus`` each that the resources ``total`` hold at once."""
    slots = int(total.get("CPU", no_cpu_key) // cpus)
    if gpus:
        slots = min(slots, int(total.get("GPU", 0) // gpus))
    return slots


def live_slots(ray, cpus: float, gpus: float, max_concurrent: int | None) -> int:
    """Concurrent trials the cluster's live nodes hold now (0 when not one fits), capped by
    ``max_concurrent``: what is left after a node was lost."""
    slots = _fitting(ray.cluster_resources(), cpus, gpus, no_cpu_key=0)
    return min(slots, max_concurrent or slots)


def no_room_error(ray, where: str, cpus: float, gpus: float) -> ResourcesError:
    """What a sweep ends with once the cluster lost the node(s) its trials ran on and no live node
    holds a trial of ``cpus``/``gpus``: a trial left to start would wait for ever."""
    left = ray.cluster_resources().get("CPU", 0)
    return ResourcesError(
        f"{where}: the Ray cluster lost the node(s) the trials ran on and its live nodes ({left:g} CPU) have "
        f"no room for a trial ({cpus:g} CPU, {gpus:g} GPU each); add a node and `run` again to go on where it "
        f"stopped")


def trial_slots(ray, cpus: float, gpus: float, max_concurrent: int | None, where: str) -> int:
    """Concurrent trials the instance holds at ``cpus``/``gpus`` each, capped by ``max_concurrent``."""
    total = ray.cluster_resources()
    slots = _fitting(total, cpus, gpus, no_cpu_key=1)
    if gpus and slots == 0:
        raise ResourcesError(
            f"{where}: resources.gpus_per_trial is {gpus} but the Ray "
            f"instance has {total.get('GPU', 0)} GPUs; lower it or set it to 0")
    return max(1, min(slots, max_concurrent or slots))
