"""The ``fedloom`` command line."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fedloom.cli_audit import audit as audit_command
from fedloom.cli_certs import certs_app
from fedloom.cli_compare import compare as compare_command
from fedloom.cli_export import export as export_command
from fedloom.cli_sweep import sweep as sweep_command
from fedloom.console import (
    JsonSummary,
    LogFile,
    Output,
    Quiet,
    Verbose,
    console,
    dumps,
    reporting,
    reporting_options,
    stderr_console,
    user_errors,
)
from fedloom.errors import CheckpointError, DataError, FedloomError, RunInterrupted

if TYPE_CHECKING:
    pass

# markdown: the docstrings' ``code`` shows as code, not as backticks
app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode="markdown"
)


def _show_version(value: bool) -> None:
    if value:
        from fedloom import __version__

        print(f"fedloom {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="show the version and exit"
        ),
    ] = False,
) -> None:
    """fedloom: federated learning across edge devices."""


@app.command()
def run(
    config: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs Optional here
        typer.Argument(help="TOML config; omit for the built-in digits/FedAvg experiment"),
    ] = None,
    set_: Annotated[
        list[str],
        typer.Option("--set", help="override one setting, e.g. --set server.clients_per_round=20"),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="continue the run in this directory from its last checkpoint; with "
            "--set rounds=N, extend a finished run to N rounds"
        ),
    ] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
    log_file: LogFile = None,
    json_: JsonSummary = False,
) -> None:
    """Run a simulated federated experiment (or resume or extend one).

    Under ``torchrun --nproc_per_node=N -m fedloom run ...`` the cohort of every round is
    sharded over the N processes; rank 0 shows progress and writes the run directory.
    """
    from fedloom.config import load_config

    with user_errors():
        out = reporting_options(quiet, verbose, log_file, json_)
    with reporting(out), user_errors():
        if resume is not None:
            if config is not None:
                raise FedloomError("--resume takes the run's saved config; drop CONFIG")
            from fedloom.assemble import extend_run
            from fedloom.runs import RunDirectory

            run_dir = RunDirectory.open(resume)
            if set_:
                before = run_dir.config_path.read_text(encoding="utf-8")
                for key, (was, now) in extend_run(resume, set_).items():
                    out.say(f"{key}: {was} -> {now}")
            cfg = run_dir.load_config()
        else:
            cfg = load_config(config, set_)
        from fedloom.assemble import resume_simulation, start_simulation
        from fedloom.distributed.runtime import shard_from_env, shutdown

        shard = shard_from_env(cfg.shard_mode)
        sim = None
        try:
            if resume is None:
                sim = start_simulation(cfg, shard)
            else:
                try:
                    sim = resume_simulation(resume, shard)
                except FedloomError:
                    if set_:  # e.g. more rounds than the privacy budget allows: as it was
                        from fedloom.atomic import atomic_write_text

                        atomic_write_text(run_dir.config_path, before)
                    raise
            if shard is None or shard.is_writer:
                _run_with_progress(sim, out)
            else:
                sim.run()
        except RunInterrupted as err:
            out.note(f"stopped: {err}")
            out.note(f"resume with: uv run fedloom run --resume {sim.run_dir.path}")
            raise typer.Exit(143 if err.signal_name == "SIGTERM" else 130) from None
        except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, mid-round
            where = sim.run_dir.path if sim is not None else resume
            out.note("stopped at once: the rounds after the last checkpoint are lost")
            if where is not None:
                out.note(f"resume with: uv run fedloom run --resume {where}")
            raise typer.Exit(130) from None
        finally:
            shutdown()


@app.command()
def server(
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Argument(help="TOML config of the run; omit for the built-in experiment"),
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override one setting")] = [],  # noqa: B006
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (0: any free port)")] = 50051,
    certs: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="folder from `fedloom certs` (ca.pem, server.pem, server.key)"),
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="plaintext and unauthenticated clients: local experiments only")
    ] = False,
    min_clients: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="online clients needed to start a round (default: the cohort size)"),
    ] = None,
    max_transfers: Annotated[int, typer.Option(help="concurrent model transfers")] = 16,
    client_timeout: Annotated[
        float, typer.Option(help="seconds of silence after which a client counts as gone")
    ] = 10.0,
    secagg_stage_timeout: Annotated[
        float, typer.Option(help="SecAgg+: seconds each stage after key advertising waits")
    ] = 60.0,
    round_timeout: Annotated[
        float,
        typer.Option(
            help="without server.deadline_s, a round still ends after this many seconds "
            "(pending clients fail as 'deadline')"
        ),
    ] = 600.0,
    start_timeout: Annotated[
        float,
        typer.Option(
            help="without --min-clients, a round that waited this long for its clients to "
            "come online starts with those online (the first round: --round-timeout)"
        ),
    ] = 60.0,
    min_transfer_kbps: Annotated[
        float, typer.Option(help="a model transfer slower than this is cancelled (stalled)")
    ] = 64.0,
    transfer_grace: Annotated[
        float, typer.Option(help="seconds a transfer may take before its rate is checked")
    ] = 10.0,
    max_client_transfers: Annotated[
        int, typer.Option(help="concurrent transfers one client may hold")
    ] = 2,
    resume: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="continue the run in this directory from its last checkpoint"),
    ] = None,
    eval_data: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="central evaluation set (.npz with x, y) the rounds are evaluated on "
            "(without it: what clients report on their hold-outs; again with --resume)"
        ),
    ] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
    log_file: LogFile = None,
    json_: JsonSummary = False,
) -> None:
    """Serve a federated run to client processes over gRPC (mTLS unless --insecure).

    The server holds no client data: the model's shape and the number of clients come
    from the config, each client's data size from its join. At the end it writes the
    same report plots as a simulation and shows the run's summary."""
    from fedloom.config import load_config

    with user_errors():
        out = reporting_options(quiet, verbose, log_file, json_)
    with reporting(out), user_errors():
        from fedloom.assemble import deployment_server, open_deployment
        from fedloom.transport.server import ServerOptions, check_settings, listen

        if resume is not None and (config is not None or set_):
            raise FedloomError("--resume takes the run's saved config; drop CONFIG and --set")
        options = ServerOptions(
            host=host,
            port=port,
            certs=certs,
            insecure=insecure,
            min_clients=min_clients,
            max_transfers=max_transfers,
            client_timeout_s=client_timeout,
            secagg_stage_timeout_s=secagg_stage_timeout,
            round_timeout_s=round_timeout,
            start_timeout_s=start_timeout,
            min_transfer_kbps=min_transfer_kbps,
            transfer_grace_s=transfer_grace,
            max_transfers_per_client=max_client_transfers,
        )
        if insecure:
            out.say("[bold yellow]warning:[/] serving without TLS; clients are not authenticated")
        cfg = None if resume else load_config(config, set_)
        if cfg is not None:
            check_settings(cfg, options)
        listener = listen(options)  # before the run directory: a bad address leaves none
        sim = open_deployment(cfg, resume, eval_data)
        deployment = deployment_server(sim, options)
        bound = deployment.start(listener)
        out.say(f"run directory: [bold]{sim.run_dir.path}[/]")
        out.say(f"listening on {host}:{bound}")
        try:
            deployment.run()
        except KeyboardInterrupt:
            out.note("stopped: the rounds after the last checkpoint are lost")
            out.note(f"resume with: uv run fedloom server --resume {sim.run_dir.path}")
            raise typer.Exit(130) from None
        finally:
            deployment.stop()
        from fedloom.report import write_plots

        _finish_run(sim.run_dir.path, write_plots(sim.run_dir), out)


@app.command()
def client(
    server: Annotated[str, typer.Option(help="server address HOST:PORT")],
    data: Annotated[Path, typer.Option(help="this client's folder from `fedloom data export`")],
    certs: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="folder holding ca.pem and this client's NAME.pem / NAME.key"),
    ] = None,
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="client name (default: the data folder's name, e.g. client-000003)"),
    ] = None,
    insecure: Annotated[bool, typer.Option(help="plaintext: local experiments only")] = False,
    max_upload_kbps: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="cap on the upload rate"),
    ] = None,
    patience: Annotated[
        float, typer.Option(help="give up after the server is unreachable this many seconds")
    ] = 120.0,
    share_labels: Annotated[
        bool,
        typer.Option(help="report this client's label histogram at join (default: counts only)"),
    ] = False,
    trust: Annotated[
        list[str],
        typer.Option(
            help="a package whose code the server may name (a module: model or transform); "
            "repeat for several"
        ),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    attack: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="MALICIOUS client, to test a run's defences: send what this attack crafts "
            "from the honestly trained update (sign_flip, scaling, gaussian, ipm, backdoor) "
            "or poison this client's data when it loads (label_flip, backdoor). alie, "
            "min_max and min_sum are refused: they need the other clients' honest updates, "
            "and from this client's own update alone they send it unchanged. The backdoor's "
            "boost defaults to 1 here (the cohort size is unknown): set boost"
        ),
    ] = None,
    attack_param: Annotated[
        list[str],
        typer.Option(help="one parameter of --attack as name=value (e.g. scale=100); repeat"),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    claim_examples: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            min=1,
            help="MALICIOUS client: declare this example count in every upload (the join "
            "reports the true count; the server clamps a larger claim to it)",
        ),
    ] = None,
    profile: Annotated[
        str,
        typer.Option(
            help="the device profile declared at join: 'detect' (this machine) or a built-in "
            "one (x86_server, high_end_phone, mid_phone, low_end_phone, iot)"
        ),
    ] = "detect",
    memory_mb: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(min=0.001, help="memory local training may use (default: the profile's)"),
    ] = None,
    ms_per_sample: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            min=1e-6,
            help="profiled training cost of one example (the server plans local steps with "
            "it until it has measured this client)",
        ),
    ] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
    log_file: LogFile = None,
    json_: JsonSummary = False,
) -> None:
    """Join a federated run as one client process and train until the server is done."""
    with user_errors():
        out = reporting_options(quiet, verbose, log_file, json_)
    with reporting(out), user_errors():
        from fedloom.transport.client import (
            DeploymentClient,
            RetryPolicy,
            attack_params,
            malicious_attack,
        )

        if insecure:
            out.say("[bold yellow]warning:[/] connecting without TLS")
        if attack_param and attack is None:
            from fedloom.errors import ConfigError

            raise ConfigError(f"--attack-param {attack_param[0]!r}: needs --attack")
        malicious = (
            None if attack is None else malicious_attack(attack, attack_params(attack_param))
        )
        from fedloom.edge.profiles import builtin_profile, detect_profile, with_memory

        device = detect_profile() if profile == "detect" else builtin_profile(profile)
        if memory_mb is not None:
            device = with_memory(device, memory_mb)
        if ms_per_sample is not None:
            device = dataclasses.replace(device, ms_per_sample=ms_per_sample)
        worker = DeploymentClient(
            server,
            data,
            name=name,
            certs=certs,
            insecure=insecure,
            max_upload_kbps=max_upload_kbps,
            retry=RetryPolicy(patience_s=patience),
            share_labels=share_labels,
            trust=tuple(trust),
            attack=malicious,
            claim_examples=claim_examples,
            profile=device,
        )
        stats = worker.run()
    if out.json:
        print(dumps(dataclasses.asdict(stats)), flush=True)
    else:
        out.say(
            f"done: {stats.rounds} rounds trained, {stats.retries} retries, "
            f"{stats.duplicates} duplicate uploads acknowledged, {stats.refused} tasks refused"
        )


app.add_typer(certs_app, name="certs")
app.command("export")(export_command)
app.command("audit")(audit_command)
app.command("compare")(compare_command)
app.command("sweep")(sweep_command)

data_app = typer.Typer(no_args_is_help=True, help="Prepare client data.")
app.add_typer(data_app, name="data")


@data_app.command("export")
def data_export(
    out: Annotated[Path, typer.Argument(help="folder to write, one sub-folder per client")],
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="TOML config whose data and partition to export"),
    ] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override one setting")] = [],  # noqa: B006
    eval_out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--eval", help="also write the test split here (.npz) for `fedloom server --eval-data`"
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="replace an earlier export in OUT: its client folders are removed first "
            "(refused if OUT holds anything an export did not write)"
        ),
    ] = False,
) -> None:
    """Write a config's client partition as per-client folders (for real client processes).

    OUT must be new or empty: an earlier export there is replaced only with --force, and
    only when OUT holds nothing but that export (manifest.json and client-NNNNNN folders of
    train.npz / holdout.npz), so no stale client folder survives and nothing else is lost."""
    from fedloom.config import load_config

    with user_errors():
        if out.exists() and not out.is_dir():
            raise DataError(f"OUT = {str(out)!r} is an existing file, expected a folder to write")
        cfg = load_config(config, set_)
        stale = _previous_export(out, force)
        from fedloom.data.federated import build_federated_data
        from fedloom.data.storage import write_eval_set, write_partition

        data = build_federated_data(cfg.data, cfg.partition, cfg.seed)
        if stale:
            import shutil

            for folder in stale:
                shutil.rmtree(folder)
            console.print(f"removed {len(stale)} client folders of the earlier export")
        write_partition(out, data.train, data.holdout)
        if eval_out is not None:
            write_eval_set(eval_out, data.test)
            console.print(f"wrote the evaluation set to [bold]{eval_out}[/]")
    console.print(f"wrote {data.train.num_clients} client folders to [bold]{out}[/]")


def _status(r: dict) -> str:
    if r["quarantined"]:
        return f"held to {r['quarantined_until']}"
    return f"probation {r['probation']}" if r["probation"] else ""


# column -> (its value for CSV/JSON, its text in the table)
CLIENT_COLUMNS: dict[str, tuple[Callable[[dict], Any], Callable[[dict], str]]] = {
    "id": (lambda r: r["id"], lambda r: str(r["id"])),
    "tier": (lambda r: r["tier"], lambda r: str(r["tier"])),
    "examples": (lambda r: r["data_size"], lambda r: str(r["data_size"])),
    "selected": (lambda r: r["selected"], lambda r: str(r["selected"])),
    "aggregated": (lambda r: r["completed"], lambda r: str(r["completed"])),
    "reliability": (lambda r: r["reliability"], lambda r: f"{r['reliability']:.2f}"),
    "time_s": (lambda r: r["duration"], lambda r: _num(r["duration"], 1)),
    "loss": (lambda r: r["loss"], lambda r: _num(r["loss"], 3)),
    "holdout_acc": (lambda r: r["last_accuracy"], lambda r: _num(r["last_accuracy"], 3)),
    "contribution": (lambda r: r["mean_contribution"], lambda r: _num(r["mean_contribution"], 3)),
    "reputation": (lambda r: r["reputation"], lambda r: f"{r['reputation']:.2f}"),
    "status": (_status, _status),
    "flags": (lambda r: list(r["flags"]), lambda r: ",".join(r["flags"])),
}
# what fits 80 columns (`--columns all` for every one)
DEFAULT_CLIENT_COLUMNS = (
    "id",
    "selected",
    "aggregated",
    "reliability",
    "loss",
    "reputation",
    "status",
    "flags",
)


_EXPORTED = re.compile(r"^client-\d{6,}$")


def _previous_export(out: Path, force: bool) -> list[Path]:
    """The client folders of an earlier export in ``out`` that ``--force`` removes (none
    when ``out`` is new or empty). Refused: a non-empty ``out`` without ``--force``, and
    with it any file an export does not write (named, so nothing is deleted unseen)."""
    if not out.is_dir() or not any(out.iterdir()):
        return []
    if not force:
        raise DataError(
            f"OUT = {str(out)!r} is not empty; choose a new folder, or add --force to replace "
            "the earlier export there"
        )
    folders, foreign = [], []
    for entry in sorted(out.iterdir()):
        if entry.name == "manifest.json" and entry.is_file():
            continue
        if entry.is_dir() and _EXPORTED.match(entry.name) and not entry.is_symlink():
            extra = [p for p in entry.iterdir() if p.name not in ("train.npz", "holdout.npz")]
            foreign += extra
            folders.append(entry)
        else:
            foreign.append(entry)
    if foreign:
        shown = ", ".join(str(p) for p in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise DataError(
            f"OUT = {str(out)!r} holds files an export did not write ({shown}{more}); "
            "--force replaces only an earlier export: move them away or choose a new folder"
        )
    return folders


@app.command()
def clients(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    top: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="rows, most selected first (0 = all; default 20, all with --csv/--json)"),
    ] = None,
    columns: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="comma-separated columns, or 'all' (default: "
            + ",".join(DEFAULT_CLIENT_COLUMNS)
            + "; every column with --csv/--json)"
        ),
    ] = None,
    csv: Annotated[bool, typer.Option("--csv", help="write CSV instead of the table")] = False,
    json_: Annotated[bool, typer.Option("--json", help="write JSON instead of the table")] = False,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="write --csv/--json to this file (default: stdout)", dir_okay=False),
    ] = None,
) -> None:
    """Per-client participation, reliability, speed, loss, contribution and reputation of a
    run (``status``: ``held to R`` when quarantined to round R, ``probation N`` with N clean
    rounds still needed), as a table that fits 80 columns, or as CSV or JSON; and the
    clients' plots in the run's report folder."""
    with user_errors():
        if csv and json_:
            raise FedloomError("--csv and --json: choose one")
        if out is not None and not (csv or json_):
            raise FedloomError("--out writes --csv or --json: add one of them")
        if top is not None and top < 0:
            raise FedloomError(f"--top {top}: must be >= 0 (0 = all)")
        machine = csv or json_
        names = _client_columns(columns, machine)
        from fedloom.runs import RunDirectory
        from fedloom.server.registry import ClientRegistry

        run = RunDirectory.open(run_dir)
        path = run.path / "clients.sqlite"
        if not path.is_file():
            raise FedloomError(f"{str(run_dir)!r} has no client registry (clients.sqlite)")
        try:
            registry = ClientRegistry(path)
        except CheckpointError as err:
            raise CheckpointError(
                f"{err}; `fedloom run --resume {run_dir}` keeps it aside and rebuilds it from "
                "the newest checkpoint"
            ) from None
        with registry:
            rows = registry.summary()
            reputation = registry.reputation_history()
        quarantine_below = run.load_config().anomaly.quarantine_below if reputation else None
        shown = sorted(rows, key=lambda r: (-r["selected"], r["id"]))
        limit = (0 if machine else 20) if top is None else top
        shown = shown[:limit] if limit else shown
        from fedloom.report import write_client_plots

        plots = write_client_plots(run, rows, reputation, quarantine_below)
        if machine:
            text = _clients_csv(shown, names) if csv else _clients_json(shown, names)
            if out is None:
                typer.echo(text, nl=False)
            else:
                from fedloom.atomic import atomic_write_text

                atomic_write_text(out, text)
            report = stderr_console()
            if out is not None:
                report.print(f"wrote {len(shown)} clients to {out}")
            for png in plots:
                report.print(f"plot: {png}")
            return
    table = Table(title=f"clients of {run_dir} ({len(rows)} registered)", box=None, pad_edge=False)
    for name in names:
        text = name in ("status", "flags")  # may wrap; the numbers and headers never do
        table.add_column(
            name, justify="left" if text else "right", min_width=len(name), no_wrap=not text
        )
    for r in shown:
        table.add_row(*(CLIENT_COLUMNS[name][1](r) for name in names))
    console.print(table)
    for png in plots:
        console.print(f"plot: {png}")


def _client_columns(text: str | None, machine: bool) -> list[str]:
    """``--columns``: known names in the order given (one line naming any unknown one)."""
    if text is None:
        return list(CLIENT_COLUMNS) if machine else list(DEFAULT_CLIENT_COLUMNS)
    if text.strip() == "all":
        return list(CLIENT_COLUMNS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CLIENT_COLUMNS]
    if unknown or not names:
        raise FedloomError(
            f"--columns {text!r}: unknown column {unknown[0] if unknown else '(none)'!r}; "
            f"valid: {', '.join(CLIENT_COLUMNS)} (or all)"
        )
    return names


def _clients_csv(rows: list[dict], names: list[str]) -> str:
    import csv as csv_module
    import io

    buf = io.StringIO()
    writer = csv_module.writer(buf, lineterminator="\n")
    writer.writerow(names)
    for r in rows:
        values = [CLIENT_COLUMNS[n][0](r) for n in names]
        writer.writerow(
            [
                ";".join(v) if isinstance(v, list) else "" if v != v else v  # NaN -> empty
                for v in values
            ]
        )
    return buf.getvalue()


def _clients_json(rows: list[dict], names: list[str]) -> str:
    data = [{n: CLIENT_COLUMNS[n][0](r) for n in names} for r in rows]
    return dumps(data) + "\n"


privacy_app = typer.Typer(no_args_is_help=True, help="Differential privacy tools.")
app.add_typer(privacy_app, name="privacy")


@privacy_app.command("sweep")
def privacy_sweep(
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Argument(help="TOML config; omit for the built-in experiment"),
    ] = None,
    epsilons: Annotated[
        str, typer.Option(help="comma-separated target epsilons; inf = no DP")
    ] = "0.5,1,2,4,8,inf",
    set_: Annotated[list[str], typer.Option("--set", help="override one setting")] = [],  # noqa: B006
) -> None:
    """Run the experiment at each privacy budget (noise calibrated for each) and plot
    accuracy against epsilon: the privacy-utility trade-off. A sweep (``fedloom sweep``)
    whose points are the epsilons: a new folder <output_dir>/sweeps/NAME-privacy each
    time, one run per epsilon, sweep.json (strict JSON: inf as "inf"), the comparison
    plots and accuracy_vs_epsilon.png."""
    import math

    from fedloom.assemble import trial_config
    from fedloom.config import load_config
    from fedloom.privacy.tradeoff import epsilon_trial
    from fedloom.report import write_sweep_plot
    from fedloom.sweep import SweepPoint, run_sweep, sweep_root

    def columns(point: SweepPoint, sim: Any) -> dict[str, Any]:
        return {
            "epsilon": point.settings["privacy.target_epsilon"],
            "noise_multiplier": sim.privacy.noise_multiplier if sim.privacy.enabled else 0.0,
            "spent_epsilon": sim.ledger.epsilon() if sim.ledger else math.inf,
        }

    def progress(row: dict[str, Any]) -> None:
        eps = row["settings"]["privacy.target_epsilon"]
        if row["error"]:
            console.print(f"epsilon {eps:g}: [bold red]refused:[/] {escape(row['error'])}")
        else:
            console.print(f"epsilon {eps:g}: run directory {row['run']}")

    with user_errors():
        targets = _epsilons(epsilons)
        if any(not (e > 0) for e in targets):
            raise FedloomError(f"--epsilons {epsilons!r}: every epsilon must be > 0 (or inf)")
        base = load_config(config, set_)
        points = [
            SweepPoint(i, {"privacy.target_epsilon": e}, trial_config(base, epsilon_trial(e)))
            for i, e in enumerate(targets, start=1)
        ]
        result = run_sweep(
            points,
            sweep_root(base),
            f"{base.name}-privacy",
            description={"config": None if config is None else str(config), "epsilons": targets},
            extra=columns,
            on_point=progress,
        )
    done = [r for r in result.rows if not r["error"]]
    table = Table(title="privacy-utility trade-off")
    for col in ("target epsilon", "noise multiplier", "spent epsilon", "final", "best"):
        table.add_column(col, justify="right")
    for r in done:
        table.add_row(
            f"{r['epsilon']:g}",
            f"{r['noise_multiplier']:.4g}",
            f"{r['spent_epsilon']:.4g}",
            f"{r['metric']} {r['final']:.4f}",
            f"{r['best']:.4f}",
        )
    console.print(table)
    console.print(f"table: {result.table}")
    for png in result.plots:
        console.print(f"plot: {png}")
    accuracy = [
        {"epsilon": r["epsilon"], "accuracy": r["final"]} for r in done if r["metric"] == "accuracy"
    ]
    if accuracy:
        console.print(f"plot: {write_sweep_plot(result.folder, accuracy)}")


@privacy_app.command("plan")
def privacy_plan(
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Argument(help="TOML config; omit for the built-in experiment"),
    ] = None,
    epsilon: Annotated[float, typer.Option(help="the fixed privacy budget")] = 4.0,
    clients_per_round: Annotated[str, typer.Option(help="candidates, comma-separated")] = "",
    rounds: Annotated[str, typer.Option(help="candidates, comma-separated")] = "",
    clip_norms: Annotated[str, typer.Option(help="candidates, comma-separated")] = "0.1,0.5,1",
    set_: Annotated[list[str], typer.Option("--set", help="override one setting")] = [],  # noqa: B006
) -> None:
    """Search clients per round, rounds and clip norm for the best accuracy at a fixed
    epsilon: each candidate's noise is calibrated to the budget and the experiment is run
    (``fedloom.privacy.plan``)."""
    import json

    from fedloom.assemble import trial_runner
    from fedloom.atomic import atomic_write_text
    from fedloom.config import load_config
    from fedloom.privacy import PlanRow, plan

    def progress(item: PlanRow | tuple[int, int, float, str]) -> None:
        if isinstance(item, PlanRow):
            console.print(
                f"k={item.clients_per_round} rounds={item.rounds} clip={item.clip_norm:g}: "
                f"accuracy {item.outcome.accuracy:.4f}"
            )
        else:
            k, r, c, why = item
            console.print(f"skipped k={k} rounds={r} clip={c:g}: {escape(why)}")

    with user_errors():
        if not epsilon > 0:
            raise FedloomError(f"--epsilon {epsilon!r}: must be > 0")
        base = load_config(config, set_)
        result = plan(
            epsilon,
            trial_runner(base),
            _grid(clients_per_round, int, base.server.clients_per_round),
            _grid(rounds, int, base.rounds),
            _grid(clip_norms, float, base.privacy.clip_norm),
            on_trial=progress,
        )
    out = Path(base.output_dir) / f"{base.name}-plan"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "plan.json", json.dumps(result.to_json(), indent=2))
    table = Table(title=f"settings at epsilon {epsilon:g}, best first")
    for col in ("clients/round", "rounds", "clip norm", "noise multiplier", "accuracy"):
        table.add_column(col, justify="right")
    for row in result.rows:
        table.add_row(
            str(row.clients_per_round),
            str(row.rounds),
            f"{row.clip_norm:g}",
            f"{row.outcome.noise_multiplier:.4g}",
            f"{row.outcome.accuracy:.4f}",
        )
    console.print(table)
    best = result.best
    console.print(
        "recommended: "
        f"--set server.clients_per_round={best.clients_per_round} "
        f"--set rounds={best.rounds} --set privacy.clip_norm={best.clip_norm:g} "
        f"--set privacy.mode='\"central\"' --set privacy.target_epsilon={epsilon:g}"
    )
    console.print(f"table: {out / 'plan.json'}")


def _epsilons(text: str) -> list[float]:
    """``--epsilons``: comma-separated numbers (``inf`` = no DP)."""
    out = []
    for item in text.split(","):
        try:
            out.append(float(item))
        except ValueError:
            raise FedloomError(
                f"--epsilons {text!r}: {item.strip()!r} is not a number (e.g. 0.5,1,2,inf)"
            ) from None
    return out


def _grid(text: str, kind: type, default: float) -> list:
    """Comma-separated candidates (the config's value when empty)."""
    try:
        values = [kind(v) for v in text.split(",")] if text else [default]
    except ValueError:
        raise FedloomError(f"cannot read {text!r} as comma-separated numbers") from None
    if any(v <= 0 for v in values):
        raise FedloomError(f"{text!r}: every candidate must be > 0")
    return values


def _num(value: float, digits: int) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN -> "-"


def _run_with_progress(sim, out: Output) -> None:  # noqa: ANN001 - Simulation lazily
    """Run ``sim`` showing its progress as ``out`` asks, then write its plots and show
    its summary (a table, the run directory alone with --quiet, or --json)."""
    from fedloom.progress import run_with_progress
    from fedloom.report import write_plots

    out.say(f"run directory: [bold]{sim.run_dir.path}[/]")
    run_with_progress(sim, quiet=out.quiet, stream=out.stream)
    _finish_run(sim.run_dir.path, write_plots(sim.run_dir), out)


def _finish_run(path: Path, plots: list[Path], out: Output) -> None:
    """The summary of a finished run, the same for a simulation and a deployment."""
    from fedloom.console import run_summary
    from fedloom.report import summary_rows
    from fedloom.runs import RunDirectory

    out.finish(path, run_summary(path, plots))  # --json, --quiet, and --log-file
    if out.json or out.quiet:
        return
    table = Table(title="summary", show_header=False)
    for key, value in summary_rows(RunDirectory(path)):
        table.add_row(key, value)
    for png in plots:
        table.add_row("plot", str(png))
    console.print(table)


def main() -> None:
    app()
