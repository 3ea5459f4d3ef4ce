"""Run tile kernels on Ray (tasks or actor pools, throttled, retried) or in-process.

Kernels have the form ``fn(shared, worker, item)``: ``shared`` is the run context (shipped once
through the object store), ``worker`` is built once per task or once per actor by ``factory``
(that is where a model is loaded), ``item`` is one tile. How a stage runs is one
:class:`~stseg_dist.lifecycle.Resources`, resolved by :func:`stage_resources` from what its
plugin declares and the run's ``resources.<stage>`` section. Training
that wants a GPU reaches one through :func:`train_where_gpu`.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from .lifecycle import Resources

log = logging.getLogger(__name__)
_POOL_IDS = itertools.count()

Kernel = Callable[[Any, Any, Any], Any]
Factory = Callable[[Any], Any]


@dataclass
class Outcome:
    item: Any
    result: Any = None
    error: BaseException | None = None
    node: str | None = None  # where it ran: Ray node ID ("local" in-process)


def _here() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class FailFast(RuntimeError):
    pass


def stage_resources(
    section: Resources, declared: Resources | None = None, has_gpu: bool = True, cpus: int = 1
) -> Resources:
    """A stage's resources: its ``resources.<stage>`` section over what its plugin declared
    (:meth:`Resources.resolve`).
    """
    return (declared or Resources()).resolve(section, has_gpu, cpus)


def train_where_gpu(train, num_gpus: float):
    """``train`` itself, or, when Ray runs with a GPU and the stage asks for GPUs, ``train``
    wrapped to run in a Ray task holding one (weights come back through the object store).
    """
    if "ray" not in sys.modules:
        return train
    import ray

    if not (ray.is_initialized() and num_gpus > 0 and ray.cluster_resources().get("GPU", 0) > 0):
        return train

    def remote(*args, **kwargs):
        kwargs.pop("log", None)  # a driver-side logger does not travel to the task
        task = ray.remote(train).options(num_gpus=1, max_retries=2)
        return ray.get(task.remote(*args, **kwargs))

    return remote


class LocalExecutor:
    """Same kernels, one process, no Ray: the reference the Ray run must reproduce."""

    def __init__(self, progress: bool = False, fail_fast: bool = False):
        self.progress = progress
        self.fail_fast = fail_fast

    def cpu_count(self) -> int:
        return 1

    def has_gpu(self) -> bool:
        return False

    def map(
        self,
        fn: Kernel,
        shared: Any,
        items: Sequence,
        *,
        desc: str = "",
        factory: Factory | None = None,
        resources: Resources | None = None,
        bar: bool = True,
    ) -> list[Outcome]:
        actors = bool(resources and resources.actors)
        worker = factory(shared) if (factory and actors) else None
        out = []
        for item in tqdm(items, desc=desc, disable=not (self.progress and bar)):
            try:
                w = worker if actors else (factory(shared) if factory else None)
                out.append(Outcome(item, fn(shared, w, item), node="local"))
            except Exception as exc:  # noqa: BLE001 - recorded per tile, like on Ray
                if self.fail_fast:
                    raise
                out.append(Outcome(item, error=exc))
        return out


def _run_task(fn, shared, factory, item):
    worker = factory(shared) if factory else None
    return fn(shared, worker, item), _here()


class _TileActor:
    """Builds its worker (loads the model) once per actor life, from the run context that comes
    boxed with each call rather than as a constructor argument: Ray flags restartable actors
    whose constructor arguments live in the object store, and a restarted actor here simply
    loads again on its next call (the map holds the context until its actors are killed).
    """

    def __init__(self, factory):
        self.factory = factory
        self.shared = self.worker = None

    def _load(self, box):
        if self.shared is None:
            import ray

            self.shared = ray.get(box[0])
            self.worker = self.factory(self.shared) if self.factory else None

    def ready(self, box) -> bool:
        self._load(box)
        return True

    def call(self, fn, box, item):
        self._load(box)
        return fn(self.shared, self.worker, item), _here()


class RayExecutor:
    """Throttled submission with ``ray.wait``; retries and actor restarts come from Ray."""

    def __init__(
        self,
        max_in_flight: int | None = None,
        max_retries: int = 3,
        progress: bool = True,
        fail_fast: bool = False,
    ):
        import ray

        self.ray = ray
        self.max_retries = max_retries
        self.progress = progress
        self.fail_fast = fail_fast
        self.max_in_flight = max_in_flight or max(2, 2 * self.cpu_count())

    def cpu_count(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 1))

    def has_gpu(self) -> bool:
        return self.ray.cluster_resources().get("GPU", 0) > 0

    def map(
        self,
        fn: Kernel,
        shared: Any,
        items: Sequence,
        *,
        desc: str = "",
        factory: Factory | None = None,
        resources: Resources | None = None,
        bar: bool = True,
    ) -> list[Outcome]:
        ray = self.ray
        resources = resources or Resources().resolve()
        actors = resources.actors > 0
        shared_ref = ray.put(shared)
        if actors:
            cls = ray.remote(_TileActor)
            opts = dict(
                resources.options(),
                max_restarts=self.max_retries,
                max_task_retries=self.max_retries,
            )
            tag = (
                f"stseg-{desc}-{os.getpid()}-{next(_POOL_IDS)}"  # named, so operators can find them
            )
            box = [shared_ref]  # nested, so Ray hands the ref itself to the actor (fetched once)
            n_pool = min(resources.actors, max(1, len(items)))  # no actor loads a model for nothing
            pool = [cls.options(name=f"{tag}-{i}", **opts).remote(factory) for i in range(n_pool)]
            ray.get([a.ready.remote(box) for a in pool])
            per_actor = max(1, self.max_in_flight // len(pool))
            submit_count = [0]

            def submit(item):
                actor = pool[submit_count[0] % len(pool)]
                submit_count[0] += 1
                return actor.call.remote(fn, box, item)

            limit = per_actor * len(pool)
        else:
            task = ray.remote(_run_task).options(
                **resources.options(), max_retries=self.max_retries, retry_exceptions=True
            )

            def submit(item):
                return task.remote(fn, shared_ref, factory, item)

            limit = self.max_in_flight
        outcomes: dict[int, Outcome] = {}
        pending: dict[Any, int] = {}
        queue = list(enumerate(items))
        bar = tqdm(
            total=len(queue), desc=desc, disable=not (self.progress and bar)
        )  # one finished line per stage (``bar=False``: work running beside a stage's own bar)
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    i, item = queue.pop(0)
                    pending[submit(item)] = i
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i = pending.pop(ref)
                    try:
                        result, node = ray.get(ref)
                        outcomes[i] = Outcome(items[i], result, node=node)
                    except Exception as exc:  # noqa: BLE001 - a poison tile, recorded
                        cause = getattr(exc, "cause", None) or exc
                        if self.fail_fast:
                            for r in pending:
                                ray.cancel(r, force=True)
                            if cause is exc:
                                raise
                            raise cause from exc
                        outcomes[i] = Outcome(items[i], error=cause)
                    bar.update(1)
        finally:
            bar.close()
            if actors:
                for a in pool:
                    ray.kill(a)
        return [outcomes[i] for i in range(len(items))]


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to a cluster (``address`` / ``RAY_ADDRESS``) or start Ray embedded.

    Returns True when this call started Ray, so the caller knows to shut it down.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address and "ray" not in sys.modules:
        # Token auth stays on for the embedded instance (Ray's default: it listens beyond
        # localhost), chosen here rather than left unset, which makes Ray warn on every run.
        # Ray reads the mode when it is imported, hence before the import; a mode the user set
        # is kept.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": always a new embedded instance, never a cluster some other `ray start` left
        # registered on this machine (where Ray would refuse num_cpus, or join a stranger)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    return True
