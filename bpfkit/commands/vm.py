"""`bpfkit vm kernel [--source DIR] [--flavour F] [--json]` and
`bpfkit vm run [--kernel PATH] [--timeout S] [--mem M] [--cpus N] [--rwdir DIR]... [--json] -- CMD...`."""

import argparse
import json
from pathlib import Path

from bpfkit import fs
from bpfkit.kernel import kbuild, vm
from bpfkit.errors import UsageError, VmError, VmPanic

# Boots `vm selftests` adds to a plan after the guest kernel died in a script (see _run_plan_in_vm).
MAX_SELFTEST_REBOOTS = 2


def register(subparsers) -> None:
    p = subparsers.add_parser("vm", help="build the VM kernel; run commands inside it (virtme-ng)")
    vm_sub = p.add_subparsers(dest="vm_command", metavar="SUBCOMMAND", required=True)

    k = vm_sub.add_parser("kernel", help="build (or reuse the cached) VM kernel; print its bzImage path",
                          description="Build Debian's linux-source-6.12 + vm/patches/<ver>/ + vm/config/ "
                                      "fragments, or any kernel tree as-is with --source. Cached: a second "
                                      "call with nothing changed returns at once.")
    k.add_argument("--source", type=Path, metavar="DIR",
                   help="a kernel tree to build as-is (e.g. an mptcp_net-next checkout); not patched")
    k.add_argument("--flavour", choices=sorted(kbuild.FLAVOURS), default="default",
                   help="config flavour: debug adds lockdep, DEBUG_NET, oops=panic (default: %(default)s)")
    k.add_argument("--json", action="store_true", help="print kernel.json plus artifact paths")
    k.set_defaults(handler=handle_kernel)

    r = vm_sub.add_parser("run", help="run a command in a VM on the built kernel; exit with its status",
                          description="Exit status: the command's own; 124 timeout, 125 guest kernel panic, "
                                      "126 the guest reported no status.")
    r.add_argument("--kernel", type=Path, metavar="PATH",
                   help="bzImage or a kernels/<key> dir (default: the cached build for the current inputs)")
    r.add_argument("--flavour", choices=sorted(kbuild.FLAVOURS), default="default",
                   help="which cached build to use when --kernel is not given (default: %(default)s)")
    r.add_argument("--timeout", type=float, default=600, metavar="S", help="kill the VM after S seconds (default: 600)")
    r.add_argument("--mem", default="2G", metavar="M", help="guest memory (default: 2G)")
    r.add_argument("--cpus", type=int, default=2, metavar="N", help="guest CPUs (default: 2)")
    r.add_argument("--rwdir", action="append", default=[], type=Path, metavar="DIR",
                   help="extra host dir the guest may write (project dir and bpfkit cache always are)")
    r.add_argument("--panic-retries", type=int, default=0, metavar="N",
                   help="when the guest kernel dies while the command runs, boot again and run the whole "
                        "command again, up to N times; each death is printed with its panic line (for a "
                        "command safe to repeat; default: %(default)s)")
    r.add_argument("--json", action="store_true",
                   help="capture the guest output and print one JSON result instead of streaming")
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...", help="command to run in the guest")
    r.set_defaults(handler=handle_run)

    st = vm_sub.add_parser("selftests", help="run upstream's MPTCP selftests (of the kernel's own source) in the "
                                             "VM, once per scheduler",
                           description="Builds tools/testing/selftests/net/mptcp of the tree the kernel is built "
                                       "from, boots once, and runs each script with the scheduler selected in "
                                       "every network namespace the script creates. Exit 1 if any script fails.")
    st.add_argument("--scheduler", default="default", metavar="S[,S...]",
                    help="'default', built-in names (minrtt, ...) or scheduler files (default: %(default)s)")
    st.add_argument("--tests", metavar="NAMES", help="scripts to run, e.g. simult_flows,diag (default: all)")
    st.add_argument("--args", action="append", default=[], metavar="SCRIPT=ARGS",
                    help="arguments for one script, split like a shell would (no shell runs them), e.g. "
                         "'mptcp_connect=-f 131072': a fixed file size instead of the script's random 256 KiB-8 MiB "
                         "(repeatable)")
    st.add_argument("--kernel", type=Path, metavar="TREE",
                    help="a kernel source tree: build it as-is and run its own selftests (default: Debian's "
                         "linux-source + vm/patches)")
    st.add_argument("--image", type=Path, metavar="BZIMAGE",
                    help="boot this kernel image instead (e.g. Debian's /boot/vmlinuz-6.12.*-amd64, modules from "
                         "/lib/modules), with the selftests of Debian's linux-source: the same scripts on a kernel "
                         "without bpfkit's series, to attribute a failure (default scheduler only)")
    st.add_argument("--flavour", choices=sorted(kbuild.FLAVOURS), default="default")
    st.add_argument("--script-timeout", type=float, metavar="S",
                    help="per script (default: the directory's kselftest `settings`)")
    st.add_argument("--out", type=Path, metavar="DIR", help="where logs and results.json go "
                                                           "(default: a new dir in the bpfkit cache)")
    st.add_argument("--known", type=Path, metavar="FILE",
                    help="TOML list of subtests known to fail ([[known]] scheduler, script, subtest, reason): "
                         "reported, not counted as failures")
    st.add_argument("--retries", type=int, default=0, metavar="N",
                    help="run a script again, up to N times, while it has failures that are not known ones; "
                         "the last attempt counts, and earlier failures it passes are reported as flaky "
                         "(default: %(default)s)")
    st.add_argument("--json", action="store_true", help="print the results as JSON")
    st.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report")
    st.set_defaults(handler=handle_selftests)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def handle_selftests(args) -> int:
    import datetime
    import sys

    from bpfkit import selftests
    from bpfkit.sched import lifecycle
    from bpfkit.loader import build
    from bpfkit.paths import cache_dir

    known = selftests.load_known(args.known)
    schedulers = _names(args.scheduler)
    if not schedulers:
        raise UsageError("--scheduler: give at least one name (e.g. default,minrtt)")
    if args.image and args.kernel:
        raise UsageError("--image and --kernel exclude each other")
    if args.image and schedulers != [lifecycle.DEFAULT]:
        raise UsageError("--image boots a kernel without bpfkit's series: only --scheduler default runs there")
    if args.image and not args.image.is_file():
        raise UsageError(f"--image {args.image}: no such file")
    kernel = kbuild.build_kernel(source=args.kernel, flavour=args.flavour, progress=True)
    bzimage = args.image.resolve() if args.image else kernel.bzimage
    for spec in schedulers:  # compiled on the host: clang under TCG in the guest is slow
        if spec != lifecycle.DEFAULT:
            source = lifecycle.resolve_source(spec)
            if not lifecycle.is_object(source):
                build.compile_bpf(source, kernel=kernel.vmlinux)
    tree, build_dir = kbuild.tree_and_build_dir(args.kernel, args.flavour)
    install_dir = selftests.install(tree, build_dir)
    scripts = selftests.resolve_scripts(_names(args.tests) if args.tests else None, selftests.scripts_in(install_dir))
    script_args = selftests.parse_script_args(args.args, scripts)
    timeout = args.script_timeout or selftests.script_timeout(install_dir)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = fs.output_dir((args.out or cache_dir() / "selftests-runs" / stamp).resolve())
    if args.retries < 0:
        raise UsageError(f"--retries must be >= 0, got {args.retries}")
    accel = vm.choose_accel(bzimage)  # the run's, decided once per host (cached probe)
    known_by_run = {f"{name}/{script}": subtests for name in schedulers for script in scripts
                    if (subtests := selftests.known_subtests(known, name, script, accel))}
    planned = selftests.plan_runs(schedulers, scripts)
    plan = {"install_dir": str(install_dir), "out_dir": str(out_dir), "timeout": timeout, "retries": args.retries,
            "script_args": script_args, "known": known_by_run}
    died_in = _run_plan_in_vm(plan, planned, out_dir, bzimage)
    runs = selftests.load_results(out_dir)
    for (spec, script), r in zip(planned, runs):
        r.mark_known(known, accel)
        r.guest_died = died_in.get((spec, script), "")
    if died_in:
        selftests.save_results(runs, out_dir)
    if args.junit:
        selftests.write_junit(runs, args.junit)
    if args.json:
        print(json.dumps({"kernel": str(bzimage), "tree": str(tree), "results": str(out_dir),
                          "runs": [r.to_dict() for r in runs]}, indent=2))
    else:
        print(selftests.format_table(runs))
        print(f"logs: {out_dir}")
    expected = len(planned)
    if len(runs) < expected:
        print(f"bpfkit: only {len(runs)} of {expected} script runs reported", file=sys.stderr)
        return 1
    return 0 if all(r.status in ("pass", "skip", "known") for r in runs) else 1


def _run_plan_in_vm(plan: dict, planned: list[list[str]], out_dir: Path, bzimage: Path) -> dict[tuple[str, str], str]:
    """Boot the VM for the plan's runs that have not reported, until all have or it cannot go on.
    Returns the runs the guest kernel died in (then run again in a new boot) -> the panic line."""
    import sys

    from bpfkit import selftests

    (out_dir / "results.json").unlink(missing_ok=True)  # a reused --out: its results are not this run's
    died_in: dict[tuple[str, str], str] = {}  # (scheduler, script) -> the kernel's first panic line
    while True:
        reported = len(selftests.load_results(out_dir))  # the guest appends in plan order
        plan["runs"] = planned[reported:]
        plan_file = out_dir / "plan.json"
        fs.atomic_write(plan_file, json.dumps(plan, indent=2))
        budget = plan["timeout"] * len(plan["runs"]) * (1 + plan["retries"]) + 120
        try:
            vm.run([sys.executable, "-m", "bpfkit.selftests", str(plan_file)], kernel=bzimage, timeout=budget,
                   rwdirs=[out_dir], capture=False)
        except VmPanic as exc:
            # Under TCG the guest kernel has died now and then in scripts that pass in every other
            # run: an int3 oops in __netif_receive_skb_core just after a static-key flip (the other
            # vCPU ran the int3 the patching had removed: emulated cross-modifying code) in
            # default's mptcp_sockopt.sh, and a crash under veth_xmit -> __netif_rx in minrtt's
            # mptcp_connect.sh's first pings (two clean-clone CI runs, 2026-12-04; both scripts had
            # passed in some twenty runs before). One death should not void the other scripts: the
            # runs that did not report run in a new boot, the one it died in included, reported
            # with the panic line. A second death in the same script fails it, as a kernel bug should.
            print(f"bpfkit: the VM ended early: {exc.message}", file=sys.stderr)
            if not exc.command_started:  # died while booting, twice (vm.run boots again once): no script's doing
                break
            reported = len(selftests.load_results(out_dir))
            died = selftests.next_run_after_guest_death(planned, reported, died_in, MAX_SELFTEST_REBOOTS)
            if reported < len(planned):
                spec, script = planned[reported]
                with open(out_dir / "guest-died.console", "a") as console:
                    console.write(f"== {spec} {script}\n{exc.message}\n")
            if died is None:
                if reported < len(planned):  # the table shows the run it died in as an error
                    runs = selftests.load_results(out_dir)
                    runs.append(selftests.ScriptRun(spec, script, None, 0.0, [], "", error=(
                        f"the guest kernel died during it: {exc.panic_line}")))
                    selftests.save_results(runs, out_dir)
                    print(f"bpfkit: not booting again: the guest died in {spec}'s {script} "
                          f"{'again' if (spec, script) in died_in else 'after ' + str(len(died_in)) + ' new boots'}",
                          file=sys.stderr)
                break
            died_in[died] = exc.panic_line
            print(f"bpfkit: the guest kernel died during {died[0]}'s {died[1]}; booting again for it and the "
                  f"{len(planned) - reported - 1} run(s) after it", file=sys.stderr)
            continue
        except VmError as exc:
            print(f"bpfkit: the VM ended early: {exc.message}", file=sys.stderr)
        break
    return died_in


def handle_kernel(args) -> int:
    # Progress goes to stderr, so it never mixes with the path or JSON on stdout.
    build = kbuild.build_kernel(source=args.source, flavour=args.flavour, progress=True)
    if args.json:
        info = dict(build.meta)
        info.update({"dir": str(build.dir), "bzimage": str(build.bzimage), "vmlinux": str(build.vmlinux),
                     "config": str(build.dir / "config"), "build_log": str(build.dir / "build.log")})
        print(json.dumps(info, indent=2))
    else:
        print(build.bzimage)
    return 0


def handle_run(args) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given: bpfkit vm run [OPTIONS] -- CMD [ARGS...]")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if args.cpus < 1:
        raise UsageError(f"--cpus must be >= 1, got {args.cpus}")
    if args.panic_retries < 0:
        raise UsageError(f"--panic-retries must be >= 0, got {args.panic_retries}")
    kernel = args.kernel
    if kernel is None:
        kernel = kbuild.default_kernel(args.flavour).bzimage
    elif not kernel.exists():
        raise UsageError(f"--kernel {kernel}: no such file or directory")
    try:
        result = vm.run(command, kernel=kernel, timeout=args.timeout, mem=args.mem, cpus=args.cpus,
                        rwdirs=args.rwdir, capture=args.json, panic_retries=args.panic_retries)
    except VmError as exc:
        if args.json:  # keep stdout parseable; the CLI still prints the error on stderr
            print(json.dumps({"exit_code": exc.exit_code, "error": exc.message}, indent=2))
        raise
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    return result.exit_code
