"""One handler per command: parse-free glue between the CLI and the stages."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from podvm_bootstrap.common.errors import EXIT_OK, EXIT_POLICY, EXIT_RUNTIME, PolicyFailure, UserDataError
from podvm_bootstrap.common.fsutil import write_if_changed
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.settings import load_settings
from podvm_bootstrap.runtime import stages
from podvm_bootstrap.runtime.stages import UserDataSource, read_raw_userdata


def _source(args: argparse.Namespace) -> UserDataSource:
    return UserDataSource(file=getattr(args, "user_data", None), provider=getattr(args, "provider", None),
                          endpoint=getattr(args, "endpoint", None), timeout=getattr(args, "timeout", None))


def cmd_userdata(args: argparse.Namespace, paths: Paths) -> int:
    settings = load_settings(paths.bootstrap_yaml)
    raw = read_raw_userdata(paths, settings.userdata, _source(args))
    if raw is not None:
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_bake(args: argparse.Namespace, paths: Paths) -> int:
    from podvm_bootstrap.cli.bake import bake
    from podvm_bootstrap.common.errors import UsageError

    if not args.root:
        raise UsageError("bake needs --root TREE (the image tree being built)")
    bake(paths, components_file=Path(args.components) if args.components else None, store=args.store)
    return EXIT_OK


def cmd_collect(args: argparse.Namespace, paths: Paths) -> int:
    from podvm_bootstrap.cli.collect import run_collect

    return run_collect(paths, args.output)


def cmd_provision(args: argparse.Namespace, paths: Paths) -> int:
    settings = load_settings(paths.bootstrap_yaml)
    try:
        raw = read_raw_userdata(paths, settings.userdata, _source(args))
    except UserDataError as exc:
        print(f"podvm-bootstrap: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    from podvm_bootstrap.userdata.cloudconfig import parse_userdata

    userdata = parse_userdata(raw) if raw is not None else None
    for problem in userdata.problems if userdata is not None else ():
        print(f"podvm-bootstrap: error: user-data: {problem}", file=sys.stderr)
    for result in stages.provision(paths, settings, userdata):
        print(result.line())
    # A refused entry is the user-data's fault and is reported on its line;
    # the step itself succeeded.
    return EXIT_OK


def cmd_plan(args: argparse.Namespace, paths: Paths) -> int:
    from podvm_bootstrap.attest.launch_measurement import predicted_measurement
    from podvm_bootstrap.config.planner import format_table

    boot_plan = stages.plan(paths, _source(args))
    plan = boot_plan.plan
    measurement = predicted_measurement(plan, boot_plan.settings.measure.pcr)
    measurement["initdata"] = predicted_initdata(boot_plan)
    if args.json:
        print(json.dumps({**plan.to_json(), "measurement": measurement}, indent=2))
    else:
        print(format_table(plan), end="")
    return EXIT_POLICY if plan.refused else EXIT_OK


def predicted_initdata(boot_plan: stages.BootPlan) -> dict[str, object] | None:
    """What binding this user-data's initdata (or the placeholder) gives the initdata PCR."""
    from podvm_bootstrap.attest.initdata_binding import predicted
    from podvm_bootstrap.userdata.cloudconfig import MAX_FILE_SIZE
    from podvm_bootstrap.userdata.provision import initdata_entry

    settings = boot_plan.settings
    files = boot_plan.userdata.write_files if boot_plan.userdata is not None else ()
    return predicted(settings.measure.initdata_pcr, initdata_entry(files, settings.provision.allowed_paths),
                     MAX_FILE_SIZE)


def cmd_render(args: argparse.Namespace, paths: Paths) -> int:
    from podvm_bootstrap.units.gate import unit_gate_dir
    from podvm_bootstrap.units.render import render_units

    plan = stages.plan(paths, _source(args)).plan
    if plan.refused:
        raise PolicyFailure("an override was refused and the policy says fail; no units written")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for name, text in render_units(plan, source=str(paths.components_yaml),
                                        gate_dir=unit_gate_dir(paths.root, paths.state_dir)).items():
        write_if_changed(output / name, text.encode(), 0o644)
    return EXIT_OK


def cmd_run(args: argparse.Namespace, paths: Paths) -> int:
    from podvm_bootstrap.runtime.early_start import head_start

    source = _source(args)
    head = head_start(paths)   # before the daemon's own imports: the first StartUnit as early as it can be
    # The fetch runs in a child, forked before the daemon starts any thread.
    child = None if source.file is not None else stages.ChildFetch.start(paths, head.settings.userdata, source)
    from podvm_bootstrap.runtime.daemon import Daemon

    return Daemon(paths, source, head, child).run()


def cmd_status(args: argparse.Namespace, paths: Paths) -> int:
    from podvm_bootstrap.cli.status import collect_status, format_status, no_state_line, status_exit

    status = collect_status(paths.state_dir)
    if status is None:
        if args.json:
            print(json.dumps({"error": no_state_line(paths.state_dir), "ok": False}))
        print(f"podvm-bootstrap: error: {no_state_line(paths.state_dir)}", file=sys.stderr)
        return EXIT_RUNTIME
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status), end="")
    return status_exit(status)


def cmd_verify(args: argparse.Namespace, paths: Paths) -> int:
    from podvm_bootstrap.cli.status import verify_lines
    from podvm_bootstrap.images.storage import PodmanImages

    settings = load_settings(paths.bootstrap_yaml)
    images = PodmanImages(settings.runtime.podman_socket)
    try:
        lines, ok = verify_lines(paths, images)
    finally:
        images.close()
    for line in lines:
        print(line)
    return EXIT_OK if ok else EXIT_RUNTIME


def cmd_measurements(args: argparse.Namespace, paths: Paths) -> int:
    from podvm_bootstrap.cli.measurements import show_measurements

    measure = load_settings(paths.bootstrap_yaml).measure
    path = Path(args.log) if args.log else paths.rooted(measure.eventlog)
    return show_measurements(path, args.expect_pcr, measure.pcr, as_json=args.json)
