"""The simulator's asynchronous runtime: FedBuff and FedAsync in virtual time.

``AsyncSimulation`` is a ``Simulation`` whose :meth:`~AsyncSimulation.step` plays one
continuous stream of events on the ``VirtualClock`` until the ``AsyncEngine`` closes one
server step. There are no rounds: whenever capacity frees up (at the start, after each
arrival or failure, when a backoff ends or a client comes online) the engine hands work
to idle online clients (``AsyncEngine.hand_out``), and each task plays out as events:

1. **download**: the model's float32 bytes over the client's downlink
   (``NetworkConditions.transfer_end``: latency once, then the link's rate with every
   network change it overlaps);
2. **training** ends after ``Population.compute_time`` of the samples it processes;
   the client trains lazily from the model version its task names, then runs its
   transform chain, local DP and compression as in a synchronous round. It trains when
   the first client training from the same version reaches its training's end, together
   with every other client of that version whose download is over and who is sure to
   reach its own training's end (its crash, window close and deadline all come later):
   the result is the same as training each at its end (nothing the training reads can
   change before then), in one cohort instead of one call per client;
3. **upload**: scheduled once the update is encoded, so a compressed upload takes its
   real payload bytes; on arrival the engine receives it (``AsyncEngine.receive``), and
   once the buffer is full the step closes.

Failures, each ``AsyncEngine.fail`` (which backs the client off):

- a **crash** (``failure_prob``) is drawn when the download starts from a generator keyed
  by the run seed and the task's seed, at a uniform point of the *planned* task (its
  download, training and an upload of the planned bytes: float32, or the codec's size
  bound); a client that crashes before its training ends is never trained;
- **offline**: its availability window closes before the upload ends;
- **deadline**: with ``server.deadline_s``, a task not delivered by then fails.

Server uplink (``asynchronous.server_uplink_kbps``), the admission policy: each download
reserves its client's base downlink rate, capped at the whole budget, for as long as it
runs; a download starts only once its reservation fits in what the downloads in progress
leave of the budget, else it waits in a first-come-first-served queue (head of line: no
later download overtakes it) until a download ends. A download capped at the budget
ends no sooner than its bytes at the budget's rate and no sooner than its own link allows;
network changes that lower a link leave its reservation as it was (conservative).

Each step's record (``fedloom.metrics.RoundRecord``) carries the engine's asynchronous
fields plus the virtual time, the seconds since the previous step, the events played,
the bytes of the downloads that ended and the uploads that arrived since it, refused
updates by kind, and the compression record. Everything needed to continue exactly is
checkpointed: the clock (every pending event), each task's phase and timing, the uploads
in flight (trained and encoded, not arrived) with the client states they staged, the
download queue and the record's counters; a resumed run ends with the same model.

When nothing is scheduled, the run stops once no client can contribute again (every
client at its contribution limit: ``"contributions"``, or ``"privacy_budget"`` when the
budget set the limit), waits for clients to come online, or raises naming why nothing
can happen (work out on links down for good without a deadline): it never spins.

Local DP noise is keyed by each task's seed (never by the step and client alone: a
client may upload twice between two steps), client transform noise by the seeds of the
tasks trained together. A resumed run repeats the tasks' seeds and the executor the run
began with, so a task redone after a resume uploads the same noisy update.

References: Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022 (FedBuff's simulated concurrency); Xie, Koyejo & Gupta, "Asynchronous
Federated Optimization", 2019; FedScale (Lai et al., ICML 2022) for event-driven timing.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from fedloom.client.schedule import examples_seen
from fedloom.client.trainer import TorchTrainer
from fedloom.compression.pipeline import compression_record
from fedloom.config import RunConfig
from fedloom.data.federated import FederatedData
from fedloom.errors import CheckpointError, FedloomError, UpdateRejected
from fedloom.privacy.ledger import release_digest
from fedloom.privacy.mechanisms import GeneratorNoise
from fedloom.records import ClientMetrics, Dispatch, Update
from fedloom.runs import RunDirectory
from fedloom.server.async_engine import AsyncEngine
from fedloom.server.asynchronous import AsyncServer
from fedloom.sim.clock import Event
from fedloom.sim.executor import Executor, run_dispatches
from fedloom.sim.runtime import Simulation
from fedloom.sim.timeline import VirtualTime
from fedloom.transforms.base import State, flatten_state, unflatten_state

log = logging.getLogger("fedloom")

META_KEY = "async_runtime"  # checkpoint meta: the runtime's own state
_ARRAYS = "sim.task."  # checkpoint arrays: uploads in flight and the states they staged
_CRASH_STREAM = 6  # the crash generator's stream id (as the synchronous timeline's)
_TRANSFORM_STREAM = 18  # client transform noise (as Simulation._transform)

# failure reasons (the record's ``dropped`` counts them)
CRASH, OFFLINE, DEADLINE = "device failure", "went offline", "deadline"
_FAILURES = {"crash": CRASH, "offline": OFFLINE, "deadline": DEADLINE}


@dataclass
class Upload:
    """A trained, encoded update not yet delivered, and the client states its training
    staged (kept once the server accepts the update, dropped otherwise)."""

    update: Update
    transform_state: State | None = None
    upload_state: State | None = None

    @property
    def nbytes(self) -> int:
        return len(self.update.payload) if self.update.payload is not None else 0


@dataclass
class Task:
    """One client's task as the runtime plays it. ``phase``: ``queued`` (waiting for
    server uplink), ``downloading``, ``training`` or ``uploading``."""

    dispatch: Dispatch
    phase: str = "queued"
    reserved: float = 0.0  # bytes / s of the server uplink held by its download
    train_end: float = math.inf
    fails_at: float = math.inf  # its earliest crash, window close or deadline
    upload: Upload | None = None


class TaskBook:
    """The asynchronous runtime's state between events: tasks by client (hand-out
    order), the download queue, and the counters of the step being played. Built before
    the engine, whose checkpoints carry :meth:`meta` and :meth:`arrays`."""

    def __init__(self) -> None:
        self.tasks: dict[int, Task] = {}
        self.queue: list[int] = []  # clients waiting for server uplink, first come first
        self.wake: float | None = None  # the pending wake-up (backoff end, availability)
        self.events = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.rejections: dict[str, int] = {}
        self.last_step_time = 0.0  # virtual time the previous step closed (or the start)

    def reset_counters(self, now: float) -> None:
        self.events = self.bytes_up = self.bytes_down = 0
        self.rejections = {}
        self.last_step_time = now

    def meta(self) -> dict[str, Any]:
        """JSON state (arrays in :meth:`arrays`)."""
        tasks = []
        for cid, t in self.tasks.items():
            d = t.dispatch
            entry: dict[str, Any] = {
                "client": cid,
                "round": d.round,
                "version": d.version,
                "seed": d.seed,
                "deadline": d.deadline,
                "compression": d.compression,
                "phase": t.phase,
                "reserved": t.reserved,
                "train_end": None if math.isinf(t.train_end) else t.train_end,
                "fails_at": None if math.isinf(t.fails_at) else t.fails_at,
            }
            if t.upload is not None:
                u = t.upload.update
                entry["upload"] = {
                    "num_examples": u.num_examples,
                    "metrics": asdict(u.metrics),
                    "payload": u.payload is not None,
                    "transform_state": t.upload.transform_state is not None,
                    "upload_state": t.upload.upload_state is not None,
                }
            tasks.append(entry)
        return {
            "tasks": tasks,
            "queue": list(self.queue),
            "wake": self.wake,
            "events": self.events,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "rejections": dict(self.rejections),
            "last_step_time": self.last_step_time,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The uploads in flight: each delta or payload, and the states it staged."""
        out: dict[str, np.ndarray] = {}
        for cid, t in self.tasks.items():
            if t.upload is None:
                continue
            u, key = t.upload.update, f"{_ARRAYS}{cid}."
            out[key + "delta"] = u.delta
            if u.payload is not None:
                out[key + "payload"] = np.frombuffer(u.payload, dtype=np.uint8)
            for name, state in (
                ("xform", t.upload.transform_state),
                ("compress", t.upload.upload_state),
            ):
                if state is not None:
                    out |= {f"{key}{name}.{k}": v for k, v in flatten_state(state).items()}
        return out

    def load(
        self, meta: dict[str, Any], arrays: dict[str, np.ndarray], server: AsyncServer
    ) -> None:
        """Restore what :meth:`meta` and :meth:`arrays` saved (dispatches get the server's
        plan)."""
        try:
            self.tasks = {}
            for e in meta["tasks"]:
                cid = int(e["client"])
                dispatch = Dispatch(
                    cid,
                    int(e["round"]),
                    int(e["version"]),
                    server.plan,
                    int(e["seed"]),
                    e["deadline"],
                    None,
                    e["compression"],
                )
                task = Task(dispatch, str(e["phase"]), float(e["reserved"]))
                if e["train_end"] is not None:
                    task.train_end = float(e["train_end"])
                if e["fails_at"] is not None:
                    task.fails_at = float(e["fails_at"])
                if "upload" in e:
                    task.upload = self._load_upload(cid, dispatch, e["upload"], arrays)
                self.tasks[cid] = task
            self.queue = [int(c) for c in meta["queue"]]
            self.wake = None if meta["wake"] is None else float(meta["wake"])
            self.events = int(meta["events"])
            self.bytes_up = int(meta["bytes_up"])
            self.bytes_down = int(meta["bytes_down"])
            self.rejections = {str(k): int(v) for k, v in meta["rejections"].items()}
            self.last_step_time = float(meta["last_step_time"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"malformed asynchronous runtime state: {err!r}") from None

    @staticmethod
    def _load_upload(
        cid: int, d: Dispatch, info: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> Upload:
        key = f"{_ARRAYS}{cid}."

        def state(name: str, flag: str) -> State | None:
            if not info[flag]:
                return None
            prefix = f"{key}{name}."
            return unflatten_state(
                {
                    k.removeprefix(prefix): np.array(v)
                    for k, v in arrays.items()
                    if k.startswith(prefix)
                }
            )

        payload = (
            bytes(np.asarray(arrays[key + "payload"], dtype=np.uint8)) if info["payload"] else None
        )
        update = Update(
            cid,
            d.round,
            d.version,
            np.asarray(arrays[key + "delta"], dtype=np.float32).copy(),
            int(info["num_examples"]),
            ClientMetrics(
                **{
                    **info["metrics"],
                    "loss_samples": tuple(info["metrics"].get("loss_samples", ())),
                }
            ),
            payload,
        )
        return Upload(update, state("xform", "transform_state"), state("compress", "upload_state"))


class AsyncSimulation(Simulation):
    """An asynchronous experiment (FedBuff, FedAsync) in virtual time."""

    engine: AsyncEngine  # type: ignore[assignment]

    def __init__(
        self,
        config: RunConfig,
        run: RunDirectory,
        engine: AsyncEngine,
        data: FederatedData,
        trainer: TorchTrainer,
        executor: Executor,
        executor_note: str,
        virtual_time: VirtualTime,
        book: TaskBook,
        deployment: bool = False,
    ) -> None:
        """Built by ``fedloom.assemble.build_simulation`` when ``asynchronous.mode`` is on;
        ``book`` is the state the engine's checkpoints carry."""
        super().__init__(
            config,
            run,
            engine,
            data,
            trainer,
            executor,
            executor_note,
            virtual_time,
            None,
            deployment,
        )
        self.book = book
        a = config.asynchronous
        self.uplink = None if a.server_uplink_kbps is None else a.server_uplink_kbps * 125.0
        self._sizes = data.train.sizes()

    @property
    def server(self) -> AsyncServer:  # type: ignore[override]
        return self.engine.server

    def restore(self, state: dict) -> None:
        """The runtime's state as of a checkpoint (the clock is restored by the caller)."""
        meta = state["meta"].get(META_KEY)
        if meta is None:
            raise CheckpointError("checkpoint has no asynchronous runtime state")
        self.book.load(meta, state["arrays"], self.server)
        for task in self.book.tasks.values():  # each plan fitted to its device again
            task.dispatch = self.engine.fit([task.dispatch])[0]

    # the event loop ----------------------------------------------------------------
    def step(self) -> dict[str, Any]:
        """Play events until the buffer is full, then close, record and checkpoint the
        step. Returns its record (empty if the run stopped without one: every client at
        its contribution limit)."""
        t0 = time.perf_counter()
        vt, server, book = self.virtual_time, self.server, self.book
        self._fill()
        while not server.ready:
            if len(vt.clock) == 0:
                self._idle()
                if self.engine.stopped is not None:
                    self.engine.last_report = None
                    self.engine.checkpoint(self.engine.stopped)
                    return {}
                continue
            ev = vt.clock.pop()
            book.events += 1
            self._handle(ev)
        payloads = server.received_payloads
        if self.privacy.local:  # the uploads this step releases (replays are not charged twice)
            buf = server.buffer
            self.engine.release_digest = release_digest(
                np.array([b.update.client_id for b in buf], dtype=np.int64),
                *[b.update.delta for b in buf],
            )
        result = self.engine.close_round()
        now = vt.now
        extra: dict[str, Any] = {
            "virtual_time": now,
            "round_virtual_s": now - book.last_step_time,
            "events": book.events,
            "bytes_up": book.bytes_up,
            "bytes_down": book.bytes_down,
        }
        if book.rejections:
            extra["rejections"] = dict(book.rejections)
        if server.compression is not None:
            extra["compression"] = compression_record(server.compression, payloads, server.dim)
        book.reset_counters(now)
        return self.engine.finish_step(result, t0, extra)

    def _handle(self, ev: Event) -> None:
        """One event of the stream."""
        book = self.book
        if ev.kind == "wake":
            if book.wake == ev.time:
                book.wake = None
            self._fill()
        elif ev.kind == "download_done":
            self._downloaded(ev.client)
        elif ev.kind == "train_done":
            self._trained(ev.client)
        elif ev.kind == "upload_done":
            self._arrived(ev.client)
        elif ev.kind in _FAILURES:
            self._failed(ev.client, _FAILURES[ev.kind])
        else:
            raise FedloomError(f"unknown event {ev.kind!r} at virtual time {ev.time}")

    def _fill(self) -> None:
        """Hand out work while capacity allows, start what the uplink admits, and wake up
        when a backoff ends or availability changes (if capacity is left)."""
        vt, book = self.virtual_time, self.book
        dispatches = self.engine.hand_out(vt.available())
        comp = self.server.compression
        if comp is not None and dispatches:
            dispatches = comp.assign(dispatches)
        avail = vt.population.availability
        for d in dispatches:
            cid = d.client_id
            task = book.tasks[cid] = Task(d)
            book.queue.append(cid)
            off = float(avail.next_change(np.array([cid]), vt.now)[0])
            if math.isfinite(off):
                vt.clock.schedule(off, "offline", cid)
                task.fails_at = off
            if d.deadline is not None:
                vt.clock.schedule(d.deadline, "deadline", cid)
                task.fails_at = min(task.fails_at, d.deadline)
        self._admit()
        self._schedule_wake()

    def _schedule_wake(self) -> None:
        """With capacity left and someone who may still contribute: a wake-up at the next
        backoff end or availability change (one pending at a time, the earliest)."""
        vt, engine, book = self.virtual_time, self.engine, self.book
        if len(self.server.in_flight) >= engine.scheduler.capacity(engine.registry.stats()):
            return
        if not self._eligible().any():
            return
        now = vt.now
        ids = np.arange(len(vt.population))
        times = [float(vt.population.availability.next_change(ids, now).min())]
        release = engine.scheduler.next_release(now)
        if release is not None:
            times.append(release)
        t = max(min(times), math.nextafter(now, math.inf))  # always later than now
        if not math.isfinite(t) or (book.wake is not None and now <= book.wake <= t):
            return
        vt.clock.schedule(t, "wake")
        book.wake = t

    def _eligible(self) -> np.ndarray:
        """Clients that could ever get work again: with data, under their contribution
        limit, neither working nor buffered."""
        ok = self._sizes > 0
        limit = self.engine.contribution_limit()
        if limit is not None:
            ok &= self.engine.contributed(np.arange(len(ok))) < limit
        busy = list(self.server.in_flight) + [b.update.client_id for b in self.server.buffer]
        ok[np.array(busy, dtype=np.int64)] = False
        return ok

    def _idle(self) -> None:
        """Nothing is scheduled: stop the run (nobody can contribute again), wait for
        clients to come online, or raise naming why nothing can happen."""
        vt, server, engine = self.virtual_time, self.server, self.engine
        if server.in_flight:
            raise FedloomError(
                f"at virtual time {vt.now:.0f} s clients {sorted(server.in_flight)} hold work "
                "that can never end (a link down for good) and server.deadline_s is not set"
            )
        stop = engine.out_of_contributions(self._sizes > 0)
        if stop is not None:
            engine.stopped = stop
            return
        if vt.wait_for_clients():
            self._fill()
            return
        raise FedloomError(
            f"at virtual time {vt.now:.0f} s no client will ever be online to fill the "
            f"buffer of asynchronous.buffer_size = {server.buffer_size}"
        )

    # a task's events -------------------------------------------------------------
    def _admit(self) -> None:
        """Start the queued downloads that the server uplink admits, in order."""
        book = self.book
        while book.queue:
            cid = book.queue[0]
            rate = self._reservation(cid)
            if self.uplink is not None:
                used = sum(t.reserved for t in book.tasks.values() if t.phase == "downloading")
                if used + rate > self.uplink * (1 + 1e-12):
                    return
            book.queue.pop(0)
            self._start_download(cid, rate)

    def _reservation(self, cid: int) -> float:
        if self.uplink is None:
            return 0.0
        rate = float(
            self.virtual_time.population.throughput_bytes_per_s(np.array([cid]), "down")[0]
        )
        return min(rate, self.uplink)

    def _start_download(self, cid: int, reserved: float) -> None:
        """The download starts now; the crash point is drawn over the planned task."""
        vt, task = self.virtual_time, self.book.tasks[cid]
        pop, now, d = vt.population, vt.now, task.dispatch
        ids = np.array([cid])
        nbytes = 4 * self.server.dim
        end = float(vt.network.transfer_end(ids, now, nbytes, "down")[0])
        if self.uplink is not None and reserved >= self.uplink:  # capped at the budget
            end = max(end, now + float(pop.latency_ms[cid]) / 1e3 + nbytes / self.uplink)
        task.phase, task.reserved = "downloading", reserved
        rng = np.random.default_rng([self.config.seed, _CRASH_STREAM, d.seed])
        crashes, point = rng.random(2)
        if crashes < pop.failure_prob[cid] and math.isfinite(end):
            train_end = end + self._compute_time(cid)
            planned = int(self._planned_upload([d])[0])
            up_end = float(vt.network.transfer_end(ids, train_end, planned, "up")[0])
            crash_at = now + point * (up_end - now)
            if math.isfinite(crash_at):
                vt.clock.schedule(crash_at, "crash", cid)
                task.fails_at = min(task.fails_at, crash_at)
        if math.isfinite(end):  # else its link is down for good: only a failure ends it
            vt.clock.schedule(end, "download_done", cid)

    def _compute_time(self, cid: int) -> float:
        ids = np.array([cid])
        samples = examples_seen(self._sizes[ids], self.book.tasks[cid].dispatch.plan)
        return float(self.virtual_time.population.compute_time(ids, samples)[0])

    def _downloaded(self, cid: int) -> None:
        vt, task = self.virtual_time, self.book.tasks[cid]
        self.book.bytes_down += 4 * self.server.dim
        task.phase, task.reserved = "training", 0.0
        task.train_end = vt.now + self._compute_time(cid)
        vt.clock.schedule(task.train_end, "train_done", cid)
        self._admit()

    def _trained(self, cid: int) -> None:
        """Training ended: train (if not trained yet, module docstring), then schedule
        the upload of the encoded bytes."""
        vt, task = self.virtual_time, self.book.tasks[cid]
        if task.upload is None:
            self._train_group(task)
        assert task.upload is not None
        nbytes = task.upload.nbytes or self._upload_bytes()
        end = float(vt.network.transfer_end(np.array([cid]), vt.now, nbytes, "up")[0])
        task.phase = "uploading"
        if math.isfinite(end):
            vt.clock.schedule(end, "upload_done", cid)

    def _train_group(self, first: Task) -> None:
        """Train ``first`` (its training ends now) and every client of its version sure
        to reach its training's end, as one cohort, through the transform chain, local
        DP and compression."""
        version = first.dispatch.version
        group = [
            t
            for t in self.book.tasks.values()
            if t is first
            or (
                t.phase == "training"
                and t.upload is None
                and t.dispatch.version == version
                and t.fails_at > t.train_end
            )
        ]
        dispatches = [t.dispatch for t in group]
        updates = run_dispatches(self.executor, self.server.model(version), dispatches)
        if self.adversary is not None:  # malicious clients replace what they trained
            updates = self.adversary.act(updates, self.server.round + 1)
        seeds = [d.seed for d in dispatches]
        server = self.server
        if server.client_states is not None:
            noise = GeneratorNoise(
                np.random.default_rng([self.config.seed, _TRANSFORM_STREAM, *seeds])
            )
            updates = self._transform(updates, noise)
        if self.privacy.local:  # one noise stream per task
            updates = [
                replace(
                    u,
                    delta=self.privacy.privatize_locally(
                        u.delta, self.config.seed, d.seed, u.client_id
                    ),
                )
                for u, d in zip(updates, dispatches, strict=True)
            ]
        if server.compression is not None:
            updates = self._compress(updates, {d.client_id: d for d in dispatches})
        for t, u in zip(group, updates, strict=True):
            cid = u.client_id
            staged = [
                None if states is None else states.pending.pop(cid, None)
                for states in (server.client_states, server.upload_states)
            ]
            t.upload = Upload(u, *staged)

    def _arrived(self, cid: int) -> None:
        """The upload arrived: the engine buffers it (or refuses it)."""
        vt, book, server = self.virtual_time, self.book, self.server
        task = book.tasks.pop(cid)
        vt.clock.cancel_client(cid)
        upload = task.upload
        assert upload is not None
        book.bytes_up += upload.nbytes or self._upload_bytes()
        try:
            self.engine.receive(upload.update)
        except UpdateRejected as err:
            book.rejections[err.kind] = book.rejections.get(err.kind, 0) + 1
            log.info("%s", err)
        else:  # kept once the step holding the update closes (AsyncServer.close_round)
            for states, staged in (
                (server.client_states, upload.transform_state),
                (server.upload_states, upload.upload_state),
            ):
                if states is not None and staged is not None:
                    states.pending[cid] = staged
        if not server.ready:
            self._fill()

    def _failed(self, cid: int, reason: str) -> None:
        """The task fails (crash, offline, deadline); its client is backed off."""
        vt, book = self.virtual_time, self.book
        del book.tasks[cid]
        vt.clock.cancel_client(cid)
        if cid in book.queue:
            book.queue.remove(cid)
        self.engine.fail(cid, reason)
        self._fill()  # a freed reservation admits queued downloads there too
