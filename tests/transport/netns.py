"""Kernel-level network emulation for integration tests.

Deployment tests need a real, lossy, slow link between a server and its clients, not a mock.
This kernel has no netem, so a link is built from a network namespace joined to the host by a
veth pair: tbf on both veth ends limits the rate in each direction and an nftables table inside
the namespace drops a share of the packets crossing the veth. Everything a test creates lives in
its own namespace, so its traffic never leaves the machine and deleting the namespace undoes it.
"""

from __future__ import annotations

import atexit
import functools
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

APT_TIMEOUT_S = 180.0
CMD_TIMEOUT_S = 30.0
SUBNET = ipaddress.ip_network("10.231.0.0/16")
_BLOCKS = SUBNET.num_addresses // 4  # one /30 per namespace
_NAME = re.compile(r"fl-(\d+)-(\d+)")
_LOSS_TABLE = "fedloom_loss"

_counter = itertools.count()
_created: set[str] = set()  # namespaces this process made and has not removed yet


class NetnsError(RuntimeError):
    """A command that builds or shapes the emulated link failed."""


def _sh(args: Sequence[str], *, stdin: str | None = None) -> str:
    """Run a setup command, returning stdout; raise NetnsError with its stderr if it fails."""
    try:
        done = subprocess.run(
            list(args), input=stdin, capture_output=True, text=True, timeout=CMD_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"`{' '.join(args)}` failed: {exc}") from exc
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _quiet(args: Sequence[str]) -> None:
    """Run a cleanup command, ignoring every failure (the thing may already be gone)."""
    try:
        subprocess.run(list(args), capture_output=True, timeout=CMD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _nft_runs() -> bool:
    try:
        return subprocess.run(["nft", "--version"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def ensure_nft() -> bool:
    """Make `nft` available, installing nftables with apt-get once if we are root; say if it runs.

    The install is tried from the current package lists first and after `apt-get update` only if
    that fails; both share a budget of APT_TIMEOUT_S seconds.
    """
    if _nft_runs():
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    deadline = time.monotonic() + APT_TIMEOUT_S
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            done = subprocess.run(["apt-get", *args], env=env, capture_output=True, timeout=left)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0

    install = ("install", "-y", "-q", "nftables")
    if not apt(*install) and apt("update", "-q"):
        apt(*install)
    return _nft_runs()


@functools.cache
def netns_unavailable() -> str | None:
    """None when emulated links can be built here, else why not (a reason for pytest.skip)."""
    if os.geteuid() != 0:
        return "kernel network emulation needs root (network namespaces, tc, nftables)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"kernel network emulation needs `{tool}` (iproute2), which is not installed"
    if not ensure_nft():
        return "kernel network emulation needs `nft` (nftables), which could not be installed"
    try:
        with LinkedNamespace(rate="1mbit", loss_percent=1):
            pass
    except NetnsError as exc:
        return f"kernel network emulation unavailable: {exc}"
    return None


def _remove(name: str, host_if: str | None = None) -> None:
    """Delete a namespace, its veth pair and whatever still runs in it; ignore what is gone."""
    try:
        pids = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=CMD_TIMEOUT_S
        ).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        pids = []
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass
    if host_if is not None:
        _quiet(["ip", "link", "del", host_if])  # at once; the namespace's own teardown is lazy
    _quiet(["ip", "netns", "del", name])
    _created.discard(name)


def _reap_stale() -> None:
    """Remove namespaces left by earlier test processes that died before cleaning up."""
    try:
        listing = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=CMD_TIMEOUT_S
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return
    for line in listing.splitlines():
        match = _NAME.fullmatch(line.split(" ", 1)[0])
        if match is None or int(match[1]) == os.getpid():
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            _remove(match[0])
        except PermissionError:
            pass


@atexit.register
def _remove_all() -> None:
    for name in list(_created):
        _remove(name)


def _free_block(start: int) -> int:
    """The first /30 block from `start` on with no address already on the host."""
    used = set()
    for link in json.loads(_sh(["ip", "-j", "-4", "addr", "show"]) or "[]"):
        for addr in link.get("addr_info", []):
            ip = ipaddress.ip_address(addr["local"])
            if ip in SUBNET:
                used.add((int(ip) - int(SUBNET.network_address)) // 4)
    for offset in range(_BLOCKS):
        block = (start + offset) % _BLOCKS
        if block not in used:
            return block
    raise NetnsError(f"no free /30 left in {SUBNET}")


class LinkedNamespace:
    """A network namespace joined to the host by a veth pair, optionally slow and lossy.

    The host end has `host_ip`, the namespace end `ns_ip` (one /30 per instance). `rate`, `burst`
    and `latency` are tc tbf values (e.g. "4mbit", "32kb", "100ms") applied to both ends, so
    each direction is limited on its own; `loss_percent` drops that share of the packets crossing
    the veth in each direction. Leaving the context deletes the namespace, the veth pair and the
    nftables table, and kills every process still running in the namespace.
    """

    def __init__(
        self,
        *,
        rate: str | None = None,
        burst: str = "32kb",
        latency: str = "100ms",
        loss_percent: int = 0,
    ) -> None:
        n = next(_counter)
        pid = os.getpid()
        self.name = f"fl-{pid}-{n}"
        self.host_if = f"fl{pid}h{n}"  # interface names are at most 15 characters
        self.ns_if = f"fl{pid}n{n}"
        self._pid_n = (pid, n)
        self._shape = (rate, burst, latency)
        self._loss_percent = loss_percent
        self._procs: list[subprocess.Popen[Any]] = []
        self.host_ip = ""
        self.ns_ip = ""

    def __enter__(self) -> LinkedNamespace:
        _reap_stale()
        pid, n = self._pid_n
        base = int(SUBNET.network_address) + 4 * _free_block(pid * 16 + n)
        self.host_ip = str(ipaddress.ip_address(base + 1))
        self.ns_ip = str(ipaddress.ip_address(base + 2))
        _sh(["ip", "netns", "add", self.name])
        _created.add(self.name)
        try:
            veth = ["type", "veth", "peer", "name", self.ns_if, "netns", self.name]
            _sh(["ip", "link", "add", self.host_if, *veth])
            _sh(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if])
            _sh(["ip", "-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if])
            # One wire-sized packet per skb, so loss and shaping act on packets, not on 64 KB
            # segmentation-offload bundles.
            _sh(["ip", "link", "set", self.host_if, "gso_max_segs", "1", "up"])
            _sh(["ip", "-n", self.name, "link", "set", self.ns_if, "gso_max_segs", "1", "up"])
            _sh(["ip", "-n", self.name, "link", "set", "lo", "up"])
            rate, burst, latency = self._shape
            if rate is not None:
                self.set_rate(rate, burst=burst, latency=latency)
            if self._loss_percent:
                self.set_loss(self._loss_percent)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kill what runs in the namespace and delete it with its link; safe to call twice."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        self._procs.clear()
        _remove(self.name, self.host_if)

    def set_rate(self, rate: str, *, burst: str = "32kb", latency: str = "100ms") -> None:
        """Limit both directions with tbf (replacing any earlier limit)."""
        tbf = ["root", "tbf", "rate", rate, "burst", burst, "latency", latency]
        _sh(["tc", "qdisc", "replace", "dev", self.host_if, *tbf])
        _sh(["tc", "-n", self.name, "qdisc", "replace", "dev", self.ns_if, *tbf])

    def set_loss(self, percent: int) -> None:
        """Drop `percent`% of the packets crossing the veth each way (resets loss_counter)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss percent must be in [0, 100], got {percent}")
        drop = f"numgen random mod 100 < {percent} counter drop"
        rules = (
            f"table inet {_LOSS_TABLE} {{}}\n"  # so the delete below always has a table to delete
            f"delete table inet {_LOSS_TABLE}\n"
            f"table inet {_LOSS_TABLE} {{\n"
            f"  chain input {{ type filter hook input priority 0; policy accept;\n"
            f'    iifname "{self.ns_if}" {drop}; }}\n'
            f"  chain output {{ type filter hook output priority 0; policy accept;\n"
            f'    oifname "{self.ns_if}" {drop}; }}\n'
            f"}}\n"
        )
        _sh(["ip", "netns", "exec", self.name, "nft", "-f", "-"], stdin=rules)

    def _exec(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def popen(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a command inside the namespace; it is killed on exit if still running."""
        proc = subprocess.Popen(self._exec(args), **kw)
        self._procs.append(proc)
        return proc

    def run(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command inside the namespace to completion (subprocess.run's keywords)."""
        return subprocess.run(self._exec(args), **kw)

    def loss_counter(self) -> int:
        """Packets dropped so far by the loss rules, both directions together (0 if no loss)."""
        out = _sh(self._exec(["nft", "-j", "list", "ruleset"]))
        return sum(
            expr["counter"]["packets"]
            for item in json.loads(out)["nftables"]
            if item.get("rule", {}).get("table") == _LOSS_TABLE
            for expr in item["rule"]["expr"]
            if "counter" in expr
        )

    def tbf_stats(self) -> dict[str, dict[str, int]]:
        """tbf counters per direction: `host_to_ns` and `ns_to_host`, each with bytes, packets,
        drops and overlimits (overlimits > 0: the limiter held packets back). Needs a rate set."""
        return {
            "host_to_ns": _tbf(["tc", "-s", "-j", "qdisc", "show", "dev", self.host_if]),
            "ns_to_host": _tbf(
                ["tc", "-n", self.name, "-s", "-j", "qdisc", "show", "dev", self.ns_if]
            ),
        }


def _tbf(args: Sequence[str]) -> dict[str, int]:
    for qdisc in json.loads(_sh(args)):
        if qdisc.get("kind") == "tbf":
            return {key: int(qdisc[key]) for key in ("bytes", "packets", "drops", "overlimits")}
    raise NetnsError(f"no tbf qdisc in `{' '.join(args)}`")
