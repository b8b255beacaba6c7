"""`bpfkit ci virtme-docker init [DIR] [--force]`: hook bpfkit into the
mptcp/mptcp-upstream-virtme-docker CI image (see docs/ci-virtme-docker.md).
`collect` and `run-test` are what the rendered hooks call inside the guest."""

from __future__ import annotations

import sys
from pathlib import Path

from bpfkit import ci_virtme
from bpfkit.errors import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser("ci", help="CI integrations (mptcp-upstream-virtme-docker hooks)")
    sub = p.add_subparsers(dest="ci_command", metavar="SUBCOMMAND", required=True)
    vd = sub.add_parser("virtme-docker", help="hooks for the mptcp/mptcp-upstream-virtme-docker image")
    vsub = vd.add_subparsers(dest="virtme_command", metavar="ACTION", required=True)

    init = vsub.add_parser(
        "init", help="write .virtme-prepare-post and .virtme-exec-run into a kernel tree",
        description="Renders the two hook files the image sources from the kernel tree: one installs bpfkit and "
                    "builds its BPF objects in the container, the other runs bpfkit's VM-tier tests in the guest, "
                    "one TAP result per test.")
    init.add_argument("dir", nargs="?", type=Path, default=Path("."), metavar="DIR",
                      help="root of the kernel tree (default: current directory)")
    init.add_argument("--force", action="store_true", help="overwrite existing hook files")
    init.add_argument("--bpfkit-src", default=ci_virtme.DEFAULT_BPFKIT_SRC, metavar="PATH",
                      help=f"where the bpfkit checkout is mounted in the container (default {ci_virtme.DEFAULT_BPFKIT_SRC})")
    init.add_argument("--tests", default=ci_virtme.DEFAULT_TESTS, metavar="ARGS",
                      help=f"pytest paths/node ids to run in the guest, space separated (default {ci_virtme.DEFAULT_TESTS})")
    init.set_defaults(handler=handle_init)

    col = vsub.add_parser("collect", help="(used by .virtme-exec-run) list the tests to run, one runner per line")
    col.add_argument("pytest_args", nargs="+", metavar="PYTEST_ARG")
    col.set_defaults(handler=handle_collect)

    run = vsub.add_parser("run-test", help="(used by .virtme-exec-run) run pytest, exit with the image's codes",
                          description="Exit 0 if something passed, 4 if every collected test was skipped, 1 "
                                      "otherwise (including pytest's 'no tests collected' and usage errors).")
    run.add_argument("pytest_args", nargs="+", metavar="PYTEST_ARG")
    run.set_defaults(handler=handle_run_test)


def handle_init(args) -> int:
    if not args.tests.strip():
        raise UsageError("--tests must name at least one pytest path or node id")
    written = ci_virtme.render_hooks(args.dir, force=args.force, bpfkit_src=args.bpfkit_src, tests=args.tests)
    for path in written:
        print(f"wrote {path}")
    if not ci_virtme.looks_like_kernel_tree(args.dir):
        print(f"note: {args.dir} has no tools/testing/selftests/net/mptcp/config; the image only runs from the root "
              "of a kernel tree with MPTCP selftests", file=sys.stderr)
    return 0


def handle_collect(args) -> int:
    for name, pytest_args in ci_virtme.collect(args.pytest_args):
        print("\t".join([name, *pytest_args]))
    return 0


def handle_run_test(args) -> int:
    return ci_virtme.run_test(args.pytest_args)
