"""The asynchronous deployment server: FedBuff and FedAsync driven by real clients.

``AsyncDeploymentServer`` is the ``DeploymentServer`` for an ``AsyncEngine``: instead of
rounds, its loop (one server step per ``_play_round``) hands a task to every idle online
client the engine's ``WorkScheduler`` makes room for (``AsyncEngine.hand_out``; a task
trains from the newest version), fails work whose client went silent for
``client_timeout_s`` or whose deadline (``server.deadline_s``; else ``round_timeout_s``)
passed, which backs the client off, and closes the step once the buffer is full
(``close_round``, then ``finish_step``: registry, evaluation, ledger, record, checkpoint).

Uploads are applied as they arrive (``AsyncEngine.receive``) by the RPC threads: an
update staler than ``asynchronous.max_staleness`` is refused with a status naming its
staleness, and counted in the step's ``dropped_stale``. While the buffer is full, an
arriving upload waits for the step to close, so a step holds exactly ``buffer_size``
updates and every staleness is measured against the version its step will publish from.
A task id names the task's step, base version, seed and hand-out time, so a retried
upload is known after a restart as long as its task is (see below).

Durability and restarts: an upload is acknowledged only after it is committed to the
run's durable inbox (``fedloom.transport.inbox``). Every step is checkpointed as
configured; inbox entries a checkpoint covers are then deleted. A server killed and
resumed from the checkpoint of step ``R`` replays the inbox's entries awaiting later
steps into its buffer in arrival order (closing steps as they fill, exactly as before the
kill) before it hands out work or takes uploads, so no acknowledged update is lost.
Outstanding work: a task in the checkpoint's ``in_flight`` is still open (its client
gets it again from ``GetTask``, and its upload is accepted); a task handed out after
the checkpoint is unknown, so its upload is refused as a stale task and its client asks
for new work. A retry of a client's last acknowledged upload is acknowledged as a
duplicate (the inbox remembers it across restarts); a different upload for the same
task is refused.

Bandwidth: model downloads share the server's uplink budget
``asynchronous.server_uplink_kbps`` through one token bucket (every chunk of every
concurrent download takes from it, first come first served, with a burst of one chunk),
so the downloads together never exceed the budget however many run at once; the
scheduler also caps the clients training at once where their downloads would ask for
more than the budget (``WorkScheduler.capacity``), and ``max_transfers`` caps the
transfers in progress. A budget so low that a download falls under
``--min-transfer-kbps`` gets it cancelled as stalled: size the two together.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from fedloom.compression.adaptive import AdaptivePolicy
from fedloom.errors import FedloomError, UpdateRejected
from fedloom.errors import RejectionKind as _K
from fedloom.records import Dispatch, RoundResult
from fedloom.server.async_engine import AsyncEngine
from fedloom.server.asynchronous import Work
from fedloom.transport import fedloom_pb2 as pb
from fedloom.transport.inbox import FILE, Entry, Inbox
from fedloom.transport.messages import CompressionSpec, ModelSpec, plan_to_pb
from fedloom.transport.secure_round import SecureStages
from fedloom.transport.server import (
    DeploymentServer,
    ServerOptions,
    TokenBucket,
    _names,
    _Round,
    metric_text,
    upload_update,
)

log = logging.getLogger("fedloom.server")


def task_id(work: Work) -> str:
    """A task's id: its step, base version, seed and hand-out time (microseconds), all
    of which the checkpoint keeps for outstanding work, so a checkpointed task keeps its
    id after a restart, and work handed out again after one gets a new id."""
    stamp = round(work.handed_out * 1e6)
    return f"s{work.round}.v{work.version}.{work.seed & 0xFFFFFFFF:08x}.{stamp:x}"


class AsyncDeploymentServer(DeploymentServer):
    """Serves one asynchronous run (new or resumed) to client processes until it ends."""

    engine: AsyncEngine

    def __init__(
        self,
        engine: AsyncEngine,
        options: ServerOptions,
        model_spec: ModelSpec,
        client_transforms: Sequence[tuple[str, Mapping[str, Any]]] = (),
        *,
        max_examples: int,
        compression: CompressionSpec | None = None,
        adaptive: AdaptivePolicy | None = None,
    ) -> None:
        """As ``DeploymentServer``; the engine is asynchronous. Opens the run's inbox and
        deletes what the loaded checkpoint covers; the rest is replayed by ``run``."""
        super().__init__(
            engine,
            options,
            model_spec,
            client_transforms,
            max_examples=max_examples,
            compression=compression,
            adaptive=adaptive,
        )
        srv = engine.server
        if engine.scheduler.uplink is not None:
            self._bandwidth = TokenBucket(engine.scheduler.uplink, options.chunk_bytes)
        # the models outstanding work trains from (a resumed run's tasks), and the newest
        self._models = {v: m.copy() for v, m in srv.history.items()}
        self._inbox = Inbox(engine.run_dir.path / FILE)
        covered = self._inbox.cover(srv.round)
        self._replay: list[Entry] = self._inbox.after(srv.round)
        if covered or self._replay:
            log.info(
                "inbox: %d accepted updates are in the checkpoint of step %d; %d go back "
                "into the buffer",
                covered,
                srv.round,
                len(self._replay),
            )
        self._step = _Round("", time.perf_counter(), {}, None)  # the step in progress
        self._dispatches: dict[int, Dispatch] = {}  # outstanding work, as handed out
        self._answered: dict[int, str] = {}  # the step's buffered updates: client -> task
        deadline_s = engine.settings.deadline_s
        now = time.time()
        for cid, work in srv.in_flight.items():  # a resumed run's outstanding work
            deadline = None if deadline_s is None else work.handed_out + deadline_s
            d = Dispatch(cid, work.round, work.version, srv.plan, work.seed, deadline)
            self._dispatches[cid] = d if srv.compression is None else srv.compression.assign([d])[0]
            self._last_seen[cid] = now  # its client has client_timeout_s to show up

    # the loop -------------------------------------------------------------------
    def _play_round(self) -> None:
        """One server step: hand out work and fail lost work until the buffer is full,
        then close, record and checkpoint the step (holding the lock throughout the
        close, so the checkpoint and the inbox agree on what the step holds)."""
        engine, srv = self.engine, self.engine.server
        with self._cond:
            if not self._played:
                if not self._await_online():
                    return
                self._played = True
                self._step.started = time.perf_counter()  # the first step starts with work
            self._readmit()
            while not srv.ready and not self._replay and not self._stop.is_set():
                self._apply_reports()
                now = time.time()
                online = np.array(self._online(now), dtype=np.int64)
                self._expire(now)
                stop = engine.out_of_contributions(self.sizes > 0)
                if stop is not None:
                    engine.stopped = stop
                    return
                busy = srv.pending | srv.buffered
                idle = online[[int(c) not in busy for c in online]] if online.size else online
                handed = self._choose_settings(engine.hand_out(online), now) if idle.size else []
                for d in handed:
                    self._dispatches[d.client_id] = d
                    self._step.dispatches[d.client_id] = d
                if handed:
                    log.info(
                        "step %d: work for %s on version %d",
                        srv.round + 1,
                        _names([d.client_id for d in handed]),
                        srv.version,
                    )
                    self._cond.notify_all()
                if not srv.ready:
                    self._cond.wait(0.2)
            if self._stop.is_set() or not srv.ready:
                return
            self._close_step()

    def _readmit(self) -> None:
        """Put the inbox's entries back into the buffer, in arrival order, until it is
        full (the loop closes that step and calls again)."""
        srv = self.engine.server
        while self._replay and not srv.ready:
            entry = self._replay.pop(0)
            update = upload_update(entry.client, entry.header, entry.payload, srv)
            try:
                srv.readmit(update, entry.handed_out, entry.arrival)
            except UpdateRejected as err:  # e.g. a setting changed since: counted
                log.warning("inbox entry of client-%06d not buffered again: %s", entry.client, err)
                self._inbox.remove(entry.seq)
                continue
            self._dispatches.pop(entry.client, None)
            self._answered[entry.client] = entry.task
            self._step.applied[entry.client] = entry.header.sha256
            self._step.arrival[entry.client] = time.perf_counter()
            self._step.bytes_up += len(entry.payload)
            log.info(
                "readmitted client-%06d task %s (accepted before the restart) into step %d",
                entry.client,
                entry.task,
                srv.round + 1,
            )
        if not self._replay:
            self._cond.notify_all()  # uploads waiting for the replay may go on

    def _expire(self, now: float) -> None:
        """Fail outstanding work whose client went silent or whose deadline passed."""
        srv = self.engine.server
        silent = now - self.options.client_timeout_s
        for cid, work in sorted(srv.in_flight.items()):
            d = self._dispatches.get(cid)
            deadline = d.deadline if d is not None and d.deadline is not None else None
            if deadline is None:
                deadline = work.handed_out + self.options.round_timeout_s
            reason = None
            if self._last_seen.get(cid, -math.inf) < silent:
                reason = "disconnected"
            elif now >= deadline:
                reason = "deadline"
            if reason is not None:
                self.engine.fail(cid, reason)
                self._dispatches.pop(cid, None)
                log.info("client %d dropped from step %d: %s", cid, srv.round + 1, reason)

    def _close_step(self) -> None:
        """Close, record and checkpoint the step (under the lock); then delete the inbox
        entries its checkpoint covers and offer the new version for download."""
        engine, srv, step = self.engine, self.engine.server, self._step
        step.payloads = srv.received_payloads
        result = engine.close_round()
        tasks = ", ".join(f"client-{c:06d}:{self._answered.get(c, '?')}" for c in result.completed)
        log.info("step %d holds: %s", result.round, tasks or "no updates")
        self._finish_step(step, result)
        self._step, self._answered = _Round("", time.perf_counter(), {}, None), {}
        if engine.run_dir.checkpoint_path(srv.round).exists():
            self._inbox.cover(srv.round)
        self._models[srv.version] = srv.start_params.copy()
        keep = set(sorted(self._models)[-self.options.keep_versions :]) | set(srv.history)
        for old in [v for v in self._models if v not in keep]:
            del self._models[old]
        self._cond.notify_all()

    def _finish_step(self, step: _Round, result: RoundResult) -> None:
        """Registry bandwidth, reported evaluations, then the engine's step record."""
        engine = self.engine
        self._report_clients(step, result)
        record = engine.finish_step(
            result,
            step.started,
            {
                "bytes_up": step.bytes_up,
                "bytes_down": step.bytes_down,
                "refused_messages": dict(self.refused),
                "refused_in_round": dict(self.refused - self._refused_mark),
            }
            | self._compression_record(step),
        )
        self._refused_mark = self.refused.copy()
        log.info(
            "step %d %s: %d updates (staleness %s), %d dropped as stale, accuracy %s",
            result.round,
            result.status,
            len(result.completed),
            record.get("staleness"),
            record.get("dropped_stale", 0),
            metric_text(record.get("accuracy")),
        )

    # RPCs -----------------------------------------------------------------------
    def _accounting(self) -> _Round | None:
        return self._step

    def _downloaded(self, rnd: _Round | None, cid: int, payload_bytes: int, kbps: float) -> None:
        """Count a finished download towards the step open now (work crosses steps)."""
        with self._cond:
            step = self._step
            step.bytes_down += payload_bytes
            step.downloads.append(payload_bytes)
            step.down_kbps[cid] = kbps

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> pb.Task:
        cid = self._client(context)
        wait = min(max(float(request.wait_s), 0.0), 30.0)
        until = time.time() + wait
        with self._cond:
            while True:
                if self._done.is_set() or self.engine.finished:
                    return pb.Task(kind=pb.Task.DONE)
                work = self.engine.server.in_flight.get(cid)
                d = self._dispatches.get(cid)
                if work is not None and d is not None:
                    log.info("client-%06d fetched task %s", cid, task_id(work))
                    return self._async_task(work, d)
                left = until - time.time()
                if left <= 0 or self._stop.is_set() or not context.is_active():
                    return pb.Task(kind=pb.Task.WAIT, retry_after_s=self.options.heartbeat_s)
                self._cond.wait(min(left, 1.0))
                self._last_seen[cid] = time.time()

    def _async_task(self, work: Work, d: Dispatch) -> pb.Task:
        return pb.Task(
            kind=pb.Task.TRAIN,
            task_id=task_id(work),
            round=d.round,
            version=d.version,
            seed=d.seed,
            plan=plan_to_pb(d.plan),
            deadline_unix=d.deadline or 0.0,
            max_steps=d.max_steps or 0,
            local_dp=self._local_dp,
            compression=d.compression,
        )

    def _upload_task(
        self, cid: int, task: str
    ) -> tuple[bool, Dispatch | None, SecureStages | None]:
        with self._cond:
            work = self.engine.server.in_flight.get(cid)
            if work is not None and task_id(work) == task:
                return True, self._dispatches.get(cid), None
            last = self._inbox.applied(cid)
            return last is not None and last[0] == task, None, None  # a retry

    def _apply(
        self,
        cid: int,
        h: pb.UploadHeader,
        payload: bytes,
        context: grpc.ServicerContext,
        kbps: float,
    ) -> pb.UploadReply:
        """Buffer the update, commit it to the inbox, then acknowledge it."""
        evaluation = self._reported(cid, h, context)
        engine, srv = self.engine, self.engine.server
        update = upload_update(cid, h, payload, srv)
        with self._cond:
            # a full buffer closes first (and a resumed server replays its inbox first)
            while (srv.ready or self._replay) and not self._stop.is_set():
                self._cond.wait(0.2)
            last = self._inbox.applied(cid)
            work = srv.in_flight.get(cid)
            if last is not None and last[0] == h.task_id:
                if last[1] == h.sha256:
                    return pb.UploadReply(accepted=True, duplicate=True)
                code, kind = grpc.StatusCode.ALREADY_EXISTS, _K.REPLAY
                why = f"a different update from client-{cid} was already applied to this task"
            elif work is None or task_id(work) != h.task_id or self._stop.is_set():
                code, kind = grpc.StatusCode.FAILED_PRECONDITION, _K.STALE_TASK
                why = (
                    f"update for task {h.task_id!r} from client-{cid} is stale: the task is "
                    "not open (failed, answered, or handed out before a restart and not "
                    "checkpointed)"
                )
            elif engine.finished:  # no step will ever hold it: not acknowledged
                code, kind = grpc.StatusCode.FAILED_PRECONDITION, _K.STALE_TASK
                why = f"update for task {h.task_id!r} from client-{cid}: the run is finished"
            else:
                step = srv.round + 1
                try:
                    engine.receive(update)
                except UpdateRejected as err:
                    self._step.rejected[cid] = err
                    self._dispatches.pop(cid, None)
                    stale = err.kind == _K.STALE_VERSION
                    code = grpc.StatusCode.FAILED_PRECONDITION
                    if not stale:
                        code = grpc.StatusCode.INVALID_ARGUMENT
                    kind, why = err.kind, f"client-{cid}, task {h.task_id!r}: {err}"
                else:
                    now = time.time()
                    try:
                        self._inbox.add(cid, h, payload, step, work.handed_out, now)
                    except FedloomError:
                        log.exception("client-%06d: accepted update not made durable", cid)
                        raise
                    self._dispatches.pop(cid, None)
                    self._answered[cid] = h.task_id
                    self._applied(self._step, cid, h, len(payload), evaluation, kbps)
                    log.info(
                        "acknowledged client-%06d task %s (step %d, staleness %d)",
                        cid,
                        h.task_id,
                        step,
                        srv.version - work.version,
                    )
                    self._cond.notify_all()
                    return pb.UploadReply(accepted=True)
            # counted under the lock: the next step's record sees the refusal it drops
            self._refuse(context, code, kind, why)
