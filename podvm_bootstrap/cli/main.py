"""The `podvm-bootstrap` command line (docs/operating.md "Command line")."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from podvm_bootstrap import __version__
from podvm_bootstrap.common.errors import EXIT_RUNTIME, BootstrapError
from podvm_bootstrap.common.log import LEVELS, setup_logging
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.settings import PROVIDER_CHOICES, endpoint_ok

Handler = Callable[[argparse.Namespace, Paths], int]


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # The same options are accepted before and after the command; after it
    # they must not reset what was given before (SUPPRESS keeps it).
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--config-dir", metavar="D", default=default, help="baked configuration (/etc/podvm-bootstrap)")
    parser.add_argument("--state-dir", metavar="D", default=default, help="runtime state (/run/podvm-bootstrap)")
    parser.add_argument("--root", metavar="D", default=default, help="prefix for every path of the pod VM")
    parser.add_argument("--log-level", metavar="L", choices=LEVELS,
                        default=argparse.SUPPRESS if suppress else "info", help=" | ".join(LEVELS))


def _source_options(parser: argparse.ArgumentParser, *, provider: bool = True) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--user-data", metavar="FILE", help="read user-data from FILE instead of a provider")
    if provider:
        group.add_argument("--provider", choices=PROVIDER_CHOICES,
                           help="user-data provider (bootstrap.yaml's by default)")
        parser.add_argument("--endpoint", metavar="URL", type=_endpoint_url,
                            help="metadata service URL for the provider")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podvm-bootstrap",
        description="Boots the components of a peer-pods pod VM from verified container images.")
    parser.add_argument("--version", action="store_true",
                        help="print the version and the sha256 of the baked components.yaml, then exit")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        _global_options(p, suppress=True)
        p.set_defaults(handler=handler)
        return p

    p = command("run", "run", "the daemon: provision, resolve, start and supervise components")
    _source_options(p)
    p.add_argument("--unit-dir", metavar="D", help="where to write units (/run/systemd/system)")

    p = command("plan", "plan", "show what would run, with no side effects")
    _source_options(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    p = command("render", "render", "write the unit files `run` would write into DIR")
    _source_options(p)
    p.add_argument("--output", metavar="DIR", required=True)

    p = command("userdata", "userdata", "fetch and print this VM's user-data")
    p.add_argument("--provider", choices=PROVIDER_CHOICES)
    p.add_argument("--endpoint", metavar="URL", type=_endpoint_url)
    p.add_argument("--timeout", metavar="S", type=_positive_float, help="seconds for the whole fetch")

    p = command("provision", "provision", "write the files carried by user-data, then exit")
    _source_options(p)

    p = command("bake", "bake", "image build: pull every default and variant into the tree at --root, pin them")
    p.add_argument("--components", metavar="FILE", help="the manifest to bake (the tree's components.yaml)")
    p.add_argument("--store", metavar="PATH", help="a read-only store in the image (additionalimagestores)")

    p = command("collect", "collect", "write a debug bundle (journals, status, plan, event log; secrets redacted)")
    p.add_argument("--output", metavar="FILE",
                   help="the tar.gz to write, - for stdout (default: podvm-collect-<host>-<boot>-<time>.tar.gz here)")

    p = command("status", "status", "per-component state of the running daemon")
    p.add_argument("--json", action="store_true")

    command("verify", "verify", "check every planned image in local storage against its digest")

    p = command("measurements", "measurements", "replay the measured launch's event log (no TPM needed)")
    p.add_argument("--log", metavar="FILE",
                   help="the records file (measure.eventlog) or a whole attester log (TCG2, with its header)")
    p.add_argument("--expect-pcr", metavar="[INDEX=]HEX", action="append", default=[],
                   help="repeatable: exit 0 when every register replays to its value (a bare HEX is measure.pcr) "
                        "and the launch is complete, 1 when not")
    p.add_argument("--json", action="store_true", help="Trustee's uefi_event_logs claims, registers, launch set")
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _endpoint_url(text: str) -> str:
    if not endpoint_ok(text):
        raise argparse.ArgumentTypeError(
            f"expected an http:// or https:// URL with a host, a valid port and no query, got {text!r}")
    return text


class _NotParsed(Exception):
    pass


class _SilentParser(argparse.ArgumentParser):
    """A first look at the options: its errors are left to the full parser."""

    def error(self, message: str) -> NoReturn:
        raise _NotParsed(message)


def _version_request(argv: Sequence[str] | None) -> int | None:
    """`--version` (with the global options, no command needed): print
    "podvm-bootstrap VERSION manifest sha256:HEX" and return the exit code;
    None when not asked."""
    pre = _SilentParser(add_help=False, allow_abbrev=False)  # no abbreviations: `--log` is not `--log-level`
    pre.add_argument("--version", action="store_true")
    _global_options(pre, suppress=False)
    try:
        known, _ = pre.parse_known_args(argv)
    except _NotParsed:  # a malformed global option: the full parser reports it
        return None
    if not known.version:
        return None
    from podvm_bootstrap.config.manifest import manifest_digest

    paths = Paths.build(root=known.root, config_dir=known.config_dir)
    try:
        digest = manifest_digest(paths.components_yaml)
    except BootstrapError as exc:
        print(f"podvm-bootstrap {__version__} manifest unavailable")
        print(f"podvm-bootstrap: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"podvm-bootstrap {__version__} manifest {digest}")
    return 0


def _handler(name: str) -> Handler:
    from podvm_bootstrap.cli import commands

    return getattr(commands, f"cmd_{name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if (version := _version_request(argv)) is not None:
        return version
    args = parser.parse_args(argv)  # usage errors: argparse exits 2
    if getattr(args, "user_data", None) and getattr(args, "endpoint", None):
        parser.error("--endpoint goes with a provider; it has no meaning with --user-data")
    setup_logging(args.log_level)
    paths = Paths.build(root=args.root, config_dir=args.config_dir, state_dir=args.state_dir,
                        unit_dir=getattr(args, "unit_dir", None))
    try:
        return _handler(args.handler)(args, paths)
    except BootstrapError as exc:
        print(f"podvm-bootstrap: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # The host's fault (permissions, full disk): one line, not a traceback.
        print(f"podvm-bootstrap: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
