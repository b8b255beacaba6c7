"""Error types. Every failure a user can cause or meet ends as one of these:
the CLI prints its message (and hint) once and exits with its exit_code."""


class BpfkitError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(BpfkitError):
    """Bad input from the user (arguments, files, names)."""

    exit_code = 2


class MissingDependency(BpfkitError):
    """A tool or package bpfkit needs is not installed."""

    exit_code = 3


class UnsafePath(BpfkitError):
    """A directory or file bpfkit would use as root could be controlled by another user."""

    exit_code = 2


class BuildError(BpfkitError):
    """A BPF C file did not compile; message holds `file:line: message` lines."""


class LoadError(BpfkitError):
    """libbpf could not open or load an object (not a verifier rejection)."""


class VerifierError(LoadError):
    """The kernel verifier rejected a program."""


class AttachError(BpfkitError):
    """A loaded program or struct_ops map could not be attached/registered."""


class KernelUnsupported(BpfkitError):
    """The running kernel lacks a feature the command needs."""

    exit_code = 4


class KernelBuildError(BpfkitError):
    pass


class VmError(BpfkitError):
    """The VM did not deliver the guest command's exit status."""

    exit_code = 126


class VmTimeout(VmError):
    exit_code = 124


class VmPanic(VmError):
    exit_code = 125
    command_started = True  # False: the guest died while booting, the command never ran
    panic_line = ""  # the console's first panic/oops/BUG line


def optional_import(name: str, purpose: str):
    """A module of bpfkit's `lab` extra (plots, statistics, VMs, vmlinux parsing), which a
    production install of the ops pillars leaves out (pyproject.toml): missing, it is one error."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise MissingDependency(f"{purpose} needs the Python package {name.split('.')[0]}, which is not installed",
                                hint="pip install 'bpfkit[lab]' (a checkout's `make venv` has it)") from None
