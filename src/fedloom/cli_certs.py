"""``fedloom certs``: make the CA and the server's and clients' certificates for mutual TLS.

``fedloom.transport.certs`` (and with it cryptography and grpc) is imported inside the
commands, so the rest of the command line starts without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedloom.console import console, user_errors

certs_app = typer.Typer(
    no_args_is_help=True,
    help="Certificates for mutual TLS: one CA, then one certificate per server and client.",
)
_DIR_HELP = "folder holding the CA and the issued certificates"


@certs_app.command()
def init(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help=_DIR_HELP)] = Path("certs"),
    force: Annotated[bool, typer.Option(help="replace an existing CA")] = False,
) -> None:
    """Create the certificate authority (ca.pem, ca.key) in DIR."""
    from fedloom.transport.certs import init_ca

    with user_errors():
        cert = init_ca(directory, force=force)
    console.print(f"wrote CA certificate {escape(str(cert))}")
    console.print(f"wrote CA key {escape(str(directory / 'ca.key'))} (keep it secret)")


@certs_app.command()
def issue(
    name: Annotated[
        str | None,
        typer.Argument(help="common name: 'server' or e.g. 'client-000003' (not with --clients)"),
    ] = None,
    directory: Annotated[Path, typer.Option("--dir", help=_DIR_HELP)] = Path("certs"),
    server: Annotated[bool, typer.Option("--server", help="issue a server certificate")] = False,
    host: Annotated[
        list[str],
        typer.Option(help="IP or DNS name the server is reached at (repeatable; --server only)"),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    clients: Annotated[
        int | None,
        typer.Option(
            "--clients",
            min=1,
            help="issue N client certificates at once: client-000000 to client-(N-1) "
            "(with --first F: client-F to client-(F+N-1)), one per partition client",
        ),
    ] = None,
    first: Annotated[
        int, typer.Option(min=0, help="--clients: index of the first client issued")
    ] = 0,
    force: Annotated[bool, typer.Option(help="replace an existing certificate")] = False,
) -> None:
    """Issue NAME.pem and NAME.key, signed by the CA in DIR (or N client certificates with
    --clients N, each with its bundle DIR/client-N/ to copy to that device)."""
    from fedloom.transport.certs import DEFAULT_HOSTS, CertError, bundle_dir, issue

    with user_errors():
        if clients is not None:
            if name is not None or server:
                raise CertError("--clients issues client certificates: give no NAME nor --server")
            names = [f"client-{i:06d}" for i in range(first, first + clients)]
            _refuse_existing(directory, names, force)  # all or none are issued
        elif name is None:
            raise CertError("give a NAME to issue, or --clients N")
        else:
            names = [name]
        if host and not server:
            raise CertError(f"--host {host[0]} names a server address; add --server")
        kind = "server" if server else "client"
        for one in names:
            cert, key = issue(directory, one, kind=kind, hosts=host or DEFAULT_HOSTS, force=force)
            if clients is None:
                console.print(f"wrote {kind} certificate {escape(str(cert))}")
                console.print(f"wrote {kind} key {escape(str(key))} (keep it secret)")
    if kind == "client" and clients is None:
        bundle = escape(str(bundle_dir(directory, names[0])))
        console.print(
            f"wrote bundle {bundle}/ (ca.pem, {names[0]}.pem, {names[0]}.key): copy it to the "
            f"device and run `fedloom client --certs {bundle}`"
        )
    elif clients is not None:
        where = escape(str(directory))
        console.print(
            f"wrote {clients} client certificates {names[0]} to {names[-1]} in {where}/ and "
            f"their bundles {where}/{names[0]}/ to {where}/{names[-1]}/: copy each bundle to "
            f"its device and run `fedloom client --certs {where}/{names[0]}` there"
        )


def _refuse_existing(directory: Path, names: list[str], force: bool) -> None:
    """Refuse before issuing any of ``names`` when one already has a certificate, so a
    batch is never left half issued."""
    from fedloom.transport.certs import CertError

    taken = [n for n in names if (directory / f"{n}.pem").exists()]
    if taken and not force:
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise CertError(
            f"{directory / (taken[0] + '.pem')} exists{more}; pass --force to replace, or "
            f"--first {int(taken[-1].split('-')[1]) + 1} to issue further clients"
        )
