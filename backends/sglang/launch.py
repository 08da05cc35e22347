"""`python -m sparsegate.backends.sglang.launch --model-path PATH [sglang args] [--print-command]`

Checks the arguments against the Ada flag set (`flags.py`), adds the flags that are missing, refuses the ones that
cannot run on sm_89, sets the plugin environment and execs `python -m sglang.launch_server`. `--print-command`
prints the final environment and argv instead; it imports neither sglang nor torch, so it runs anywhere.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sparsegate.backends.sglang.flags import ADA_ENV, ADA_FLAGS, PLUGIN_NAME, REFUSED_ENV, AdaFlag

SERVER_MODULE = "sglang.launch_server"
PRINT_FLAG = "--print-command"


class LaunchError(ValueError):
    """The arguments or the environment ask for something an Ada DSA worker cannot run."""


@dataclass(frozen=True)
class Launch:
    argv: list[str]  # what follows `python -m sglang.launch_server`
    env: dict[str, str]  # only the variables the launcher sets or changes
    added: list[str]  # flags the launcher added, for the log


def _flag_values(args: Sequence[str], name: str) -> list[str]:
    values = []
    for i, token in enumerate(args):
        if token == name:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise LaunchError(f"{name} needs a value")
            values.append(args[i + 1])
        elif token.startswith(name + "="):
            values.append(token[len(name) + 1 :])
    return values


def _check_value(flag: AdaFlag, value: str) -> None:
    reason = flag.refused.get(value)
    if reason is None and flag.only is not None and value not in flag.only:
        reason = f"the sparsegate Ada worker needs {flag.name} {flag.value}: {flag.why}"
    if reason is not None:
        raise LaunchError(f"{flag.name} {value} cannot run on Ada (sm_89): {reason}. Use {flag.name} {flag.value}.")


def plan(args: Sequence[str], environ: Mapping[str, str]) -> Launch:
    """The sglang argv and environment for `args`; raises LaunchError with the fix when something cannot run."""
    if not _flag_values(args, "--model-path"):
        raise LaunchError("--model-path is required")
    argv = list(args)
    added = []
    for flag in ADA_FLAGS:
        values = _flag_values(args, flag.name)
        if len(set(values)) > 1:
            raise LaunchError(f"{flag.name} is given twice with different values: {values}")
        if values:
            _check_value(flag, values[0])
        else:
            argv += [flag.name, flag.value]
            added.append(flag.name)

    env = {}
    for name, refused in REFUSED_ENV.items():
        current = environ.get(name)
        if current is not None and current in refused:
            raise LaunchError(f"{name}={current} cannot run on Ada: {refused[current]}. Unset it.")
    for name, (value, _why) in ADA_ENV.items():
        if name == "SGLANG_PLUGINS":
            allowed = [p.strip() for p in environ.get(name, "").split(",") if p.strip()]
            value = ",".join(allowed if PLUGIN_NAME in allowed else [*allowed, PLUGIN_NAME])
        if environ.get(name) != value:
            env[name] = value
    return Launch(argv=argv, env=env, added=added)


def command_line(launch: Launch, python: str) -> str:
    assignments = [f"{name}={shlex.quote(value)}" for name, value in sorted(launch.env.items())]
    return " ".join([*assignments, shlex.join([python, "-m", SERVER_MODULE, *launch.argv])])


def usage() -> str:
    """The module's synopsis, then every flag and variable the launcher adds, each with its reason."""
    lines = [__doc__.strip() if __doc__ else "", "", "Ada defaults (added when absent):"]
    lines += [f"  {flag.name} {flag.value}: {flag.why}" for flag in ADA_FLAGS]
    lines += [f"  {name}={value}: {why}" for name, (value, why) in ADA_ENV.items()]
    lines += ["", f"Every other argument goes to `python -m {SERVER_MODULE}` unchanged (see its --help)."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        print(usage())
        return 0
    dry_run = PRINT_FLAG in args
    args = [a for a in args if a != PRINT_FLAG]
    try:
        launch = plan(args, os.environ)
    except LaunchError as exc:
        print(f"sparsegate.backends.sglang.launch: {exc}", file=sys.stderr)
        return 2
    if dry_run:
        print(command_line(launch, sys.executable))
        return 0
    if launch.added:
        print(f"sparsegate: added Ada defaults {' '.join(launch.added)}", file=sys.stderr)
    env = {**os.environ, **launch.env}
    os.execvpe(sys.executable, [sys.executable, "-m", SERVER_MODULE, *launch.argv], env)


if __name__ == "__main__":
    sys.exit(main())
