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
    name: Annotated[str, typer.Argument(help="common name: 'server' or e.g. 'client-000003'")],
    directory: Annotated[Path, typer.Option("--dir", help=_DIR_HELP)] = Path("certs"),
    server: Annotated[bool, typer.Option("--server", help="issue a server certificate")] = False,
    host: Annotated[
        list[str],
        typer.Option(help="IP or DNS name the server is reached at (repeatable; --server only)"),
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    force: Annotated[bool, typer.Option(help="replace an existing certificate")] = False,
) -> None:
    """Issue NAME.pem and NAME.key, signed by the CA in DIR."""
    from fedloom.transport.certs import DEFAULT_HOSTS, CertError, bundle_dir, issue

    with user_errors():
        if host and not server:
            raise CertError(f"--host {host[0]} names a server address; add --server")
        kind = "server" if server else "client"
        cert, key = issue(directory, name, kind=kind, hosts=host or DEFAULT_HOSTS, force=force)
    console.print(f"wrote {kind} certificate {escape(str(cert))}")
    console.print(f"wrote {kind} key {escape(str(key))} (keep it secret)")
    if kind == "client":
        bundle = escape(str(bundle_dir(directory, name)))
        console.print(
            f"wrote bundle {bundle}/ (ca.pem, {name}.pem, {name}.key): copy it to the "
            f"device and run `fedloom client --certs {bundle}`"
        )
