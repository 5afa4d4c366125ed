"""Sweeps on Ray: each run of a sweep is one Ray task with declared resources.

``run_sweep(spec, output_dir=..., backend="ray")`` (``kdlens sweep SPEC --backend ray``) trains and
evaluates every run that is not finished as a Ray task; the same spec runs on a laptop (a local Ray
started for the call), on one machine's many GPUs, or on a Ray cluster (``address``). Ray is an
optional extra (``pip install -e .[ray]``), imported only here and only when asked for.

Where results go: **a shared filesystem**, not Ray's object store. A task trains its run and
evaluates it exactly as a local worker does, writing the run directory under the sweep's
``output_dir``; only its timings come back through the object store. The driver (the process that
called :func:`kdlens.sweep.run_sweep`) then reads the run directory to compute the metrics and writes
the sweep's tables, as with the local backend. Checkpoints never travel through the object store
(a 135M student is half a gigabyte; a grid has dozens). The consequence: on a cluster of several
nodes, ``output_dir``, the data, local teachers and ``KDLENS_CACHE`` must be on a filesystem that
every node mounts at the same path (NFS, Lustre, ...). Each task works in the driver's working
directory, so relative paths of the spec resolve as they do for the driver; a node that cannot see
it, or a run whose ``done`` marker the driver cannot see after its task returned, fails with a
message saying so. The shared pieces of a sweep (prunes, the task-aware teacher, the teachers'
evaluations) are made by the driver itself, so start it where the base config's device is.

Failures: a task whose worker process dies (killed, the kernel's OOM killer, a lost node) is
retried up to ``max_retries`` times; a Python exception raised by a run is retried only with
``retry_exceptions=True`` (most are deterministic: a bad config fails again). A retried run resumes
from the last state it saved (``save_every``), like any interrupted run. Runs that still fail are
reported by name at the end, after the finished runs' tables are written.

Resume: when the driver dies, Ray ends its tasks (and a local Ray it started); finished runs keep
their ``done`` marker and interrupted ones their saved states, so running the sweep again trains
only the runs that are not done, each from its last saved state.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["RayBackend", "RayExecutor", "RayWorkerDied", "TASK_OPTIONS"]

#: Ray task options a sweep takes (``task_options`` of :func:`kdlens.sweep.run_sweep`, CLI flags)
TASK_OPTIONS = ("num_cpus", "num_gpus", "memory", "max_retries", "retry_exceptions")

#: environment a task gets from the driver (a cluster's workers do not inherit the driver's)
_FORWARDED_ENV = ("KDLENS_", "HF_", "TRANSFORMERS_", "CUBLAS_WORKSPACE_CONFIG")

_INSTALL_HINT = "the Ray backend needs ray: pip install -e .[ray] (or pip install 'kdlens[ray]')"


class RayWorkerDied(RuntimeError):
    """A run's Ray worker process died (killed, out of memory, a lost node) on every attempt."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ModuleNotFoundError(_INSTALL_HINT, name="ray") from None
    return ray


@dataclasses.dataclass(frozen=True)
class RayBackend:
    """Where and with what resources the runs of a sweep go as Ray tasks.

    Resources are execution settings, not experiment settings: they are not part of the sweep spec
    (nor of a run's identity), so one spec runs unchanged on a laptop or a cluster.

    Parameters
    ----------
    address : str, optional
        The Ray cluster to join (``"auto"``: the one running on this node; ``"ray://host:10001"``:
        a remote one through Ray Client). None starts a local Ray for the call, unless this process
        is already connected to one (``ray.init`` in a notebook), which is then used.
    num_cpus : float
        CPUs each run reserves (default 1); its torch uses that many threads (at least one).
    num_gpus : float, optional
        GPUs each run reserves; a fraction lets several runs share one (0.25: four per GPU). None: 1
        when the base config trains on CUDA (``device: cuda``, or ``auto`` on a cluster with GPUs), else 0.
    memory : float, optional
        Bytes of memory each run reserves (Ray's ``memory``; a scheduling reservation, not a limit).
    max_retries : int
        Times a run whose worker process died is retried (default 2).
    retry_exceptions : bool
        Also retry a run that raised a Python exception (default False).
    """

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float | None = None
    memory: float | None = None
    max_retries: int = 2
    retry_exceptions: bool = False

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus", "memory"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
                raise ValueError(f"Ray task option {name} must be a number >= 0, got {value!r}")
        if self.num_cpus == 0 and not self.num_gpus:
            raise ValueError("a run must reserve a CPU or a GPU: num_cpus=0 with no num_gpus")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if not isinstance(self.retry_exceptions, bool):
            raise ValueError(f"retry_exceptions must be true or false, got {self.retry_exceptions!r}")

    @classmethod
    def from_options(cls, address: str | None, options: Mapping[str, Any] | None) -> RayBackend:
        """A backend from ``task_options`` (names of :data:`TASK_OPTIONS`); an unknown name is an error."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(TASK_OPTIONS))
        if unknown:
            raise ValueError(f"unknown Ray task option(s) {unknown}; known: {', '.join(TASK_OPTIONS)}")
        return cls(address=address, **options)

    def check_installed(self) -> None:
        """Fail early, before anything is written, when ray is not installed."""
        _import_ray()

    def start(self, *, device: str, workers: int | None, say: Callable[[str], None]) -> RayExecutor:
        """Connect to (or start) Ray and return the executor of the sweep's runs.

        ``device`` is the base config's device (decides the default ``num_gpus``); ``workers`` caps
        the runs in flight, by default as many as the cluster's resources hold at once.
        """
        ray = _import_ray()
        owned = not ray.is_initialized()
        if owned:
            ray.init(address=self.address, include_dashboard=False)
        elif self.address is not None:
            raise ValueError(f"this process is already connected to Ray, so address={self.address!r} cannot "
                             "be used: call ray.shutdown() first, or leave address unset to use that session")
        try:
            resources = ray.cluster_resources()
            num_gpus = self.num_gpus if self.num_gpus is not None else _default_gpus(device, resources)
            options = {"num_cpus": self.num_cpus, "num_gpus": num_gpus, "max_retries": self.max_retries,
                       "retry_exceptions": self.retry_exceptions}
            if self.memory:
                options["memory"] = int(self.memory)
            capacity = _capacity(options, resources)
            if workers is None and capacity == 0:
                raise ValueError(f"each run asks for {_describe(options)} but the Ray cluster has "
                                 f"{_describe(resources)}: lower --num-cpus/--num-gpus/--memory, or pass "
                                 "--workers N to submit anyway (a cluster that scales up)")
        except BaseException:
            if owned:
                ray.shutdown()
            raise
        slots = workers if workers is not None else capacity
        say(f"Ray: each run is a task with {_describe(options)} (retried up to {self.max_retries} time(s) when "
            f"its worker dies); {slots} at a time on a cluster of {_describe(resources)}")
        env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV)}
        return RayExecutor(ray, options, slots=slots, owned=owned, env=env)


def _default_gpus(device: str, resources: Mapping[str, float]) -> float:
    if device == "cuda":
        return 1.0
    return 1.0 if device == "auto" and resources.get("GPU", 0) > 0 else 0.0


def _capacity(options: Mapping[str, Any], resources: Mapping[str, float]) -> int:
    """How many runs the cluster's resources hold at once (0: not even one)."""
    wanted = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], "memory": options.get("memory", 0)}
    fits = [resources.get(name, 0.0) / amount for name, amount in wanted.items() if amount]
    return int(math.floor(min(fits) + 1e-9)) if fits else 1


def _describe(amounts: Mapping[str, Any]) -> str:
    """Task options (``num_cpus``, ...) or cluster resources (``CPU``, ...) in words."""
    parts = [f"{amounts[key]:g} {unit}" for keys, unit in ((("num_cpus", "CPU"), "CPU"), (("num_gpus", "GPU"), "GPU"))
             for key in keys if amounts.get(key)]
    if amounts.get("memory"):
        parts.append(f"{amounts['memory'] / 2**30:.1f} GiB memory")
    return ", ".join(parts) or "no resources"


class RayExecutor:
    """Runs functions as Ray tasks; the futures-like side that :class:`kdlens.sweep._session.SweepSession` uses.

    Attributes
    ----------
    slots : int
        Runs the session keeps in flight at once.
    """

    def __init__(self, ray: Any, options: Mapping[str, Any], *, slots: int, owned: bool,
                 env: Mapping[str, str]) -> None:
        self._ray, self._owned, self.slots = ray, owned, slots
        self._max_retries = int(options["max_retries"])
        self._threads = max(1, int(options["num_cpus"]))
        runtime_env = {"env_vars": dict(env)} if env else None
        self._task = ray.remote(_run_task).options(**options, runtime_env=runtime_env)
        self._refs: dict[Any, cf.Future] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` as a Ray task in the driver's working directory; its future."""
        ref = self._task.remote(fn, os.getcwd(), self._threads, args, kwargs)
        out: cf.Future = cf.Future()
        self._refs[ref] = out
        ref.future().add_done_callback(lambda done, ref=ref: self._settle(ref, done))
        return out

    def _settle(self, ref: Any, done: cf.Future) -> None:
        out = self._refs.pop(ref, None)
        if out is None or out.done():
            return
        err = done.exception()
        if err is None:
            out.set_result(done.result())
        else:
            out.set_exception(self._plain(err))

    def _plain(self, err: BaseException) -> BaseException:
        """The run's own exception (Ray wraps it with the remote traceback), or a died worker in one line."""
        exceptions = self._ray.exceptions
        if isinstance(err, exceptions.RayTaskError) and isinstance(err.cause, Exception):
            return err.cause
        died = tuple(getattr(exceptions, name) for name in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")
                     if hasattr(exceptions, name))
        if isinstance(err, died):
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return RayWorkerDied(f"{type(err).__name__} on each of {self._max_retries + 1} attempt(s) "
                                 f"(max_retries={self._max_retries}): {first}")
        return err

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Cancel the tasks in flight, or wait for them; end the Ray this executor started.

        A cancelled run stops like a killed one: it keeps the states it saved, and the next call resumes it.
        """
        refs = list(self._refs)
        if cancel_futures:
            for ref in refs:
                self._ray.cancel(ref)
                out = self._refs.get(ref)
                if out is not None:
                    out.cancel()
        elif wait and refs:
            self._ray.wait(refs, num_returns=len(refs))
        if self._owned:
            self._ray.shutdown()


def _run_task(fn: Callable[..., Any], cwd: str, threads: int, args: tuple, kwargs: dict) -> Any:
    """The Ray task: ``fn`` in the driver's working directory (a shared filesystem) with its CPU share."""
    import ray
    import torch

    if not os.path.isdir(cwd):
        raise FileNotFoundError(f"the driver's working directory {cwd} does not exist on Ray node "
                                f"{ray.util.get_node_ip_address()}: a Ray cluster needs output_dir, the data and "
                                "the models on a filesystem that every node mounts at the same path")
    os.chdir(cwd)
    torch.set_num_threads(threads)
    result = fn(*args, **kwargs)
    return {**result, "node": ray.util.get_node_ip_address()} if isinstance(result, dict) else result
