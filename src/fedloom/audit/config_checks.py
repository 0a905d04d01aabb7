"""Checks of a run's configuration: transport, differential privacy, secure aggregation,
robust aggregation against a Byzantine fraction, compression under secure aggregation.

Secure aggregation's dropout risk follows Bell et al. 2020 (SecAgg+): a client's input is
recovered only if at least ``t`` of its ``h`` share holders survive; with each surviving
independently with probability ``p`` the round fails with probability ``P[Bin(h, p) < t]``.
The robust rules' breakdown bounds are those ``fedloom.aggregation.robust`` enforces
(Blanchard et al. 2017; El Mhamdi et al. 2018; Yin et al. 2018).
"""

from __future__ import annotations

import math

from scipy.stats import binom

from fedloom.aggregation.robust import build_reducer
from fedloom.audit.findings import Finding
from fedloom.config import RunConfig
from fedloom.errors import ConfigError
from fedloom.secagg.cohort import SecureAggregator
from fedloom.secagg.protocol import share_holders

DROPOUT_RISK = 0.05  # a secure sum failing more often than this is high
LARGE_LOCAL_EPSILON = 10.0
_MEDIAN_LIKE = ("median", "geometric_median")
_NO_BREAKDOWN = ("centered_clip", "norm_bound", "fltrust")


def transport_findings(insecure: bool, certs_given: bool) -> list[Finding]:
    """TLS is a deployment flag, not a config setting: ``--insecure`` says the server runs
    without it; without ``--certs`` nothing can be said about the certificates."""
    if insecure:
        return [
            Finding(
                "transport.no_tls",
                "high",
                "no TLS",
                "--insecure: updates, models and client identities travel in clear text and "
                "any client can claim any id",
                "run `fedloom certs init` and `fedloom certs issue`, then serve with --certs",
            )
        ]
    if certs_given:
        return []
    return [
        Finding(
            "transport.unchecked",
            "info",
            "TLS not checked",
            "a deployment's TLS is not in the config; no --certs folder was given",
            "pass --certs DIR (the `fedloom certs` folder) to check the certificates",
        )
    ]


def privacy_findings(config: RunConfig) -> list[Finding]:
    """Whether a formal guarantee exists, its budget, its noise source and local epsilon."""
    p = config.privacy
    if p.mode == "off":
        return [
            Finding(
                "privacy.off",
                "medium",
                "no differential privacy",
                "privacy.mode = 'off': the released models carry no formal guarantee",
                "set privacy.mode = 'central' (or 'distributed' with secagg) and a noise level",
            )
        ]
    noise = (
        f"privacy.noise_multiplier = {p.noise_multiplier}"
        if p.noise_multiplier is not None
        else f"privacy.target_epsilon = {p.target_epsilon}"
        if p.target_epsilon is not None
        else f"privacy.local_epsilon = {p.local_epsilon} ({p.local_mechanism})"
    )
    out = [
        Finding(
            "privacy.mechanism",
            "info",
            "clipping and noise",
            f"privacy.mode = {p.mode!r}, privacy.clip_norm = {p.clip_norm}"
            f"{' (adaptive)' if p.adaptive_clipping else ''}, {noise}, "
            f"privacy.accountant = {p.accountant!r}",
        ),
        Finding(
            "privacy.noise_source",
            "info",
            "noise source",
            f"privacy.secure_noise = {str(p.secure_noise).lower()}: a simulation draws its noise "
            f"{'from the OS CSPRNG' if p.secure_noise else 'from the run seed (reproducible)'}; "
            "a deployment always draws from the OS",
        ),
    ]
    if p.budget_epsilon is None:
        out.append(
            Finding(
                "privacy.no_budget",
                "medium",
                "no privacy budget",
                "privacy.budget_epsilon is not set: nothing stops a run or its resumption from "
                "spending more epsilon than planned",
                "set privacy.budget_epsilon (and privacy.budget_policy)",
            )
        )
    if p.mode == "local" and p.local_epsilon is not None and p.local_epsilon > LARGE_LOCAL_EPSILON:
        out.append(
            Finding(
                "privacy.local_epsilon",
                "medium",
                "weak local DP",
                f"privacy.local_epsilon = {p.local_epsilon} > {LARGE_LOCAL_EPSILON}: each "
                "upload is barely protected from the server",
                f"lower privacy.local_epsilon to {LARGE_LOCAL_EPSILON:g} or less, or use "
                "distributed DP under secure aggregation",
            )
        )
    return out


def secagg_threshold(config: RunConfig, cohort: int) -> tuple[int, int]:
    """(share holders h, Shamir threshold t) of a cohort, as the server computes them."""
    s = config.secagg
    aggregator = SecureAggregator(
        dim=1, max_examples=1, neighbours=s.neighbours, threshold=s.threshold
    )
    degree, t = aggregator.graph(cohort)
    return share_holders(cohort, degree), t


def secagg_findings(
    config: RunConfig, survival: float | None, survival_source: str
) -> list[Finding]:
    """The threshold against dropout, a cohort of one, and updates seen in the clear."""
    s, n = config.secagg, config.server.clients_per_round
    if not s.enabled:
        if config.privacy.mode == "central":
            return []
        return [
            Finding(
                "secagg.off",
                "medium",
                "the server sees each update",
                f"secagg.enabled = false with privacy.mode = {config.privacy.mode!r}: every "
                "client's update reaches the server individually",
                "set secagg.enabled = true (and consider privacy.mode = 'distributed')",
            )
        ]
    out: list[Finding] = []
    smallest = min(n, s.min_clients)
    if smallest <= 1:
        field = "server.clients_per_round" if n <= 1 else "secagg.min_clients"
        out.append(
            Finding(
                "secagg.cohort_of_one",
                "high",
                "secure sum of one client",
                f"{field} = {smallest}: a sum of one masked input is that client's update",
                "set server.clients_per_round and secagg.min_clients to 2 or more",
            )
        )
    if survival is None:
        out.append(
            Finding(
                "secagg.dropout",
                "info",
                "dropout risk not estimated",
                f"{survival_source}: no single survival probability to check "
                f"secagg.threshold = {s.threshold} against",
                "audit the finished run: its registry measures each client's reliability",
            )
        )
        return out
    holders, t = secagg_threshold(config, n)
    risk = float(binom.cdf(t - 1, holders, survival))
    detail = (
        f"secagg.threshold = {s.threshold} needs t = {t} of h = {holders} share holders "
        f"(server.clients_per_round = {n}, secagg.neighbours = {s.neighbours!r}); with "
        f"survival p = {survival:.3g} ({survival_source}) P[fewer than t survive] = {risk:.3g}"
    )
    if risk > DROPOUT_RISK:
        out.append(
            Finding(
                "secagg.dropout",
                "high",
                "secure sum likely to fail",
                f"{detail} > {DROPOUT_RISK}",
                "lower secagg.threshold (0.5 is the least that stays safe), raise "
                "server.clients_per_round or secagg.neighbours, or improve client reliability",
            )
        )
    else:
        out.append(Finding("secagg.dropout", "info", "dropout risk", detail))
    return out


def byzantine_rows(config: RunConfig) -> tuple[int, str]:
    """The rows one aggregation holds and the setting that says so."""
    if config.asynchronous.enabled:
        return config.asynchronous.buffer, "asynchronous.buffer_size"
    return config.server.clients_per_round, "server.clients_per_round"


def default_byzantine_fraction(config: RunConfig) -> float | None:
    """``attack.clients`` when a simulated attack is configured, else none."""
    if not config.attack.enabled:
        return None
    c = config.attack.clients
    if isinstance(c, list):
        return len(c) / config.partition.num_clients if config.partition.num_clients else None
    return float(c)


def robust_findings(config: RunConfig, fraction: float | None) -> list[Finding]:
    """The aggregation rule against ``fraction`` Byzantine clients in each aggregation."""
    if fraction is None:
        return []
    agg = config.aggregation
    n, rows_field = byzantine_rows(config)
    s = agg.bucketing
    rows = math.ceil(n / s) if s >= 2 else n
    bad = min(rows, math.ceil(fraction * n - 1e-9))  # each bad client spoils one bucket
    where = (
        f"aggregation.rule = {agg.rule!r} over {rows} "
        f"{'buckets' if s >= 2 else 'rows'} ({rows_field} = {n}"
        f"{f', aggregation.bucketing = {s}' if s >= 2 else ''}) with {bad} Byzantine "
        f"(fraction {fraction:g})"
    )
    problem = _breakdown(agg.rule, dict(agg.params), s, n, rows_field, rows, bad)
    if problem is None:
        if agg.rule in _NO_BREAKDOWN:
            return [Finding("aggregation.byzantine", "info", "no breakdown bound", where)]
        return [Finding("aggregation.byzantine", "info", "robust aggregation holds", where)]
    return [
        Finding(
            "aggregation.byzantine",
            "high",
            "aggregation breaks down",
            f"{where}: {problem}",
            "use a robust rule whose bound holds (krum, bulyan, trimmed_mean, median), "
            "raise its f or beta, or aggregate more rows per round",
        )
    ]


def _breakdown(
    rule: str, params: dict, s: int, n: int, rows_field: str, rows: int, bad: int
) -> str | None:
    """Why ``rule`` cannot tolerate ``bad`` of ``rows`` rows, or None."""
    if bad == 0:
        return None
    if rule in ("mean", "fednova"):
        return "an unbounded mean follows any single Byzantine row"
    if rule in ("krum", "multi_krum", "bulyan"):
        f = int(params.get("f", 1))
        try:
            build_reducer(rule, {**params, "f": max(f, bad)}, s, rows=n, rows_field=rows_field)
        except ConfigError as err:
            return str(err)
        if f < bad:
            return f"aggregation.params.f = {f} assumes fewer Byzantine rows than {bad}"
        return None
    if rule == "trimmed_mean":
        beta = float(params.get("beta", 0.1))
        if beta * rows < bad:
            return f"aggregation.params.beta = {beta} trims {beta * rows:g} rows a side, < {bad}"
        return None
    if rule in _MEDIAN_LIKE and 2 * bad >= rows:
        return f"{bad} of {rows} is not a minority"
    return None


def compression_findings(config: RunConfig) -> list[Finding]:
    """What compresses under secure aggregation (the loader refuses the rest)."""
    c, s = config.compression, config.secagg
    if not s.enabled:
        return []
    parts = [f"secagg.bits = {s.bits} (the masked ring is a shared-scale quantizer)"]
    if c.enabled:
        parts.append(f"compression.codec = {c.codec!r} with a shared seed (linear)")
    if c.download != "none":
        parts.append(f"compression.download = {c.download!r} (the public model)")
    return [
        Finding(
            "compression.secagg",
            "info",
            "compression under secure aggregation",
            "; ".join(parts) + ": all survive the masked sum",
        )
    ]


def config_findings(
    config: RunConfig,
    *,
    insecure: bool = False,
    certs_given: bool = False,
    byzantine_fraction: float | None = None,
    survival: float | None = None,
    survival_source: str = "",
) -> list[Finding]:
    """Every config check. ``survival``: each client's probability to finish a round
    (default: ``1 - devices.failure_prob`` where the device model has one)."""
    if byzantine_fraction is not None and not 0 <= byzantine_fraction < 1:
        raise ConfigError(
            f"--byzantine-fraction {byzantine_fraction}: expected a fraction in [0, 1)"
        )
    if survival is None and config.devices.kind in ("uniform", "lognormal"):
        survival = 1.0 - config.devices.failure_prob
        survival_source = f"1 - devices.failure_prob = {config.devices.failure_prob}"
    elif survival is None:
        survival_source = f"devices.kind = {config.devices.kind!r} sets failures per device"
    fraction = byzantine_fraction
    if fraction is None:
        fraction = default_byzantine_fraction(config)
    return [
        *transport_findings(insecure, certs_given),
        *privacy_findings(config),
        *secagg_findings(config, survival, survival_source),
        *robust_findings(config, fraction),
        *compression_findings(config),
    ]
